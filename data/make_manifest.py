"""Rebuild `metricner/resources/corpora.json`, the manifest `metricner download` works from, out of a local copy of the corpora.

    python data/make_manifest.py [CORPORA_DIR] [--out metricner/resources/corpora.json]

CORPORA_DIR (default: $METRICNER_DATA, else ../shared/corpora beside the repository) must hold the unmodified public
files in metricner's layout (`bionlp-st-2013-pc/train/...`, `chemdner/...`, ...). For every data file the readers
need, the manifest records our relative path, the path on the mirror, its size and its SHA-256; the notes on origin
and licence below are copied in as text. Everything about the corpora lives here; the library only reads the JSON.
"""
import argparse
import hashlib
import json
import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MIRROR = 'https://huggingface.co/datasets/Lhtie/Bio-Domain-Transfer/resolve/main/'

# Per corpus: our folder, the folder on the mirror, how our split folders are named there, which files to take.
CORPORA = {
    'pc': dict(
        title='BioNLP Shared Task 2013, Pathway Curation (PC)',
        folder='bionlp-st-2013-pc', source_folder='BioNLP-ST_2013_PC',
        splits={'train': 'BioNLP-ST_2013_PC_training_data', 'devel': 'BioNLP-ST_2013_PC_development_data',
                'test': 'BioNLP-ST_2013_PC_test_data'},
        patterns=['*/*.txt', '*/*.a1', '*/*.a2'],
        origin='BioNLP-ST 2013 release (2013.bionlp-st.org), mirrored by github.com/openbiocorpora/bionlp-st-2013-pc',
        licence='Annotations CC BY-SA 3.0 (LICENSE of the release); texts from PubMed'),
    'cg': dict(
        title='BioNLP Shared Task 2013, Cancer Genetics (CG)',
        folder='bionlp-st-2013-cg', source_folder='bionlp-st-2013-cg/original-data',
        splits={'train': 'train', 'devel': 'devel', 'test': 'test'},
        patterns=['*/*.txt', '*/*.a1', '*/*.a2'],
        origin='BioNLP-ST 2013 release (2013.bionlp-st.org), mirrored by github.com/openbiocorpora/bionlp-st-2013-cg',
        licence='Annotations CC BY-SA 3.0 (LICENSE of the release); texts from PubMed'),
    'id': dict(
        title='BioNLP Shared Task 2011, Infectious Diseases (ID)',
        folder='bionlp-st-2011-id', source_folder='bionlp-st-2011-id/original-data',
        splits={'train': 'train', 'devel': 'devel', 'test': 'test'},
        patterns=['*/*.txt', '*/*.a1', '*/*.a2'],
        origin='BioNLP-ST 2011 release, mirrored by github.com/openbiocorpora/bionlp-st-2011-id',
        licence='GENIA Project License for Annotated Corpora: annotations CC BY 3.0; texts from PubMed Central open access articles'),
    'chemdner': dict(
        title='BioCreative IV CHEMDNER corpus v1.0',
        folder='chemdner', source_folder='chemdner_corpus', splits={},
        patterns=['*.abstracts.txt', '*.annotations.txt'],
        origin='BioCreative IV CHEMDNER release (biocreative.bioinformatics.udel.edu)',
        licence='Terms of the BioCreative CHEMDNER release (its Readme.txt); abstracts from PubMed'),
    'bc5cdr': dict(
        title='BioCreative V CDR corpus (CDR.Corpus.v010516)',
        folder='bc5cdr', source_folder='BioCreative-V-CDR-Corpus/CDR_Data/CDR.Corpus.v010516', splits={},
        patterns=['*.PubTator.txt'],
        origin='BioCreative V CDR task release (NCBI)',
        licence='NCBI public-domain notice (README.txt of the release); abstracts from PubMed'),
    'drugprot': dict(
        title='BioCreative VII DrugProt, training and development release',
        folder='drugprot', source_folder='drugprot-gs-training-development',
        splits={'training': 'training', 'development': 'development'},
        patterns=['*/*.tsv'],
        origin='BioCreative VII DrugProt (zenodo.org/record/5119892)',
        licence='As stated on Zenodo record 5119892 (CC BY 4.0); abstracts from PubMed'),
}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''): digest.update(block)
    return digest.hexdigest()


def file_rows(root: Path, spec: dict) -> list:
    "[path, source, size, sha256] for each data file of one corpus, sorted by path."
    folder = root/spec['folder']
    if not folder.is_dir(): raise SystemExit(f'{folder} not found: pass the folder that holds the corpora')
    paths = sorted({p.relative_to(folder).as_posix() for pat in spec['patterns'] for p in folder.glob(pat)})
    rows = []
    for rel in paths:
        split, _, rest = rel.partition('/')
        source = f"{spec['splits'][split]}/{rest}" if rest else rel  # rename our split folder to the mirror's
        rows.append([rel, source, (folder/rel).stat().st_size, sha256(folder/rel)])
    return rows


def dumps(manifest: dict) -> str:
    "JSON with one line per file: small diffs, readable, still plain `json.load`."
    text = json.dumps({k: v for k, v in manifest.items() if k != 'corpora'}, indent=1)[:-2] + ',\n "corpora": {\n'
    blocks = []
    for name, corpus in manifest['corpora'].items():
        head = json.dumps({k: v for k, v in corpus.items() if k != 'files'}, indent=2)[:-2]
        rows = ',\n'.join('      ' + json.dumps(r) for r in corpus['files'])
        blocks.append(f'  {json.dumps(name)}: ' + head.replace('\n', '\n  ') + ',\n    "files": [\n' + rows + '\n    ]}')
    return text + ',\n'.join(blocks) + '\n }\n}\n'


def build(root: Path) -> dict:
    corpora = {}
    for name, spec in CORPORA.items():
        meta = {k: spec[k] for k in ('title', 'folder', 'source_folder', 'origin', 'licence')}
        corpora[name] = meta | {'files': file_rows(root, spec)}
    return {'about': 'Files fetched by `metricner download`; rebuild with data/make_manifest.py.',
            'mirror': MIRROR,
            'columns': ['path (under folder)', 'source (under mirror + source_folder)', 'size', 'sha256'],
            'corpora': corpora}


def main(argv=None):
    default_root = os.environ.get('METRICNER_DATA') or REPO.parent/'shared'/'corpora'
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('corpora_dir', nargs='?', type=Path, default=Path(default_root))
    parser.add_argument('--out', type=Path, default=REPO/'metricner'/'resources'/'corpora.json')
    args = parser.parse_args(argv)
    manifest = build(args.corpora_dir)
    text = dumps(manifest)
    assert json.loads(text) == manifest
    args.out.write_text(text, encoding='utf-8')
    counts = ', '.join(f"{n} {len(c['files'])}" for n, c in manifest['corpora'].items())
    print(f'wrote {args.out} ({len(text):,} bytes): {counts}')


if __name__ == '__main__':
    main()
