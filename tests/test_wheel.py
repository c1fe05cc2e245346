"""The wheel works outside the checkout: built from the package files alone, installed in a fresh environment, run from
a folder elsewhere, it finds its event templates and corpus manifest and keeps its data and cache in user folders."""
import json
import os
import shutil
import site
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import write_files

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_FILES = ('setup.py', 'settings.ini', 'pyproject.toml', 'README.md', 'metricner')  # what a source distribution holds

pytestmark = pytest.mark.slow


def sh(*args, **kwargs) -> subprocess.CompletedProcess:
    "Run a command; a failure shows its output."
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f'{args} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}'
    return result


def build_wheel(tmp: Path) -> Path:
    "Build the wheel offline from a copy of the package files, so that the build writes nothing into the checkout."
    source = tmp / 'source'
    source.mkdir()
    for name in PACKAGE_FILES:
        if (ROOT / name).is_dir(): shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns('__pycache__'))
        else: shutil.copy(ROOT / name, source / name)
    sh(sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '--no-index', '--quiet', '-w', tmp / 'dist', source)
    wheel, = (tmp / 'dist').glob('metricner-*.whl')
    return wheel


def fresh_environment(tmp: Path, wheel: Path) -> Path:
    """A new virtual environment with the wheel installed, that reuses this environment's dependencies (torch, ...).

    The wheel goes in while the new environment sees nothing else. Only then does a `.pth` file add this environment's
    site-packages folders, after the new one's own: a `.pth` line only extends `sys.path`, so the `.pth` files in
    those folders, among them the editable install's finder that maps `metricner` to the checkout, are not run."""
    env = tmp / 'env'
    sh(sys.executable, '-m', 'venv', '--without-pip', env)
    python = env / 'bin' / 'python'
    sh(sys.executable, '-m', 'pip', '--python', python, 'install', '--no-deps', '--no-index', '--quiet', wheel)
    purelib = Path(sh(python, '-c', "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    parents = site.getsitepackages() + ([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])
    (purelib / 'reuse_dependencies.pth').write_text(''.join(f'{p}\n' for p in parents), encoding='utf-8')
    return env


def standoff_document(text: str, entities: list, events: list) -> dict:
    "The `.txt`, `.a1` and `.a2` of a document: entities as (type, word), events as (type, trigger, [(role, word or E#)])."
    ids, a1, a2 = {}, [], []
    for n, (type_, word) in enumerate(entities, 1):
        start, ids[word] = text.index(word), f'T{n}'
        a1.append(f'T{n}\t{type_} {start} {start + len(word)}\t{word}\n')
    for n, (type_, trigger, arguments) in enumerate(events, 1):
        t, start = f'T{len(entities) + n}', text.index(trigger)
        a2.append(f'{t}\t{type_} {start} {start + len(trigger)}\t{trigger}\n')
        a2.append(f'E{n}\t{type_}:{t} ' + ' '.join(f'{role}:{ids.get(ref, ref)}' for role, ref in arguments) + '\n')
    return {'txt': text, 'a1': ''.join(a1), 'a2': ''.join(a2)}


GENE, CHEMICAL = 'Gene_or_gene_product', 'Simple_chemical'
SOURCE = [  # small sentences written for this test; every event type here has a template of its own
    ('MDM2 binds p53 in the nucleus.', [(GENE, 'MDM2'), (GENE, 'p53'), ('Cellular_component', 'nucleus')],
     [('Binding', 'binds', [('Theme', 'MDM2'), ('Theme2', 'p53')])]),
    ('AKT1 phosphorylates GSK3B after insulin treatment.', [(GENE, 'AKT1'), (GENE, 'GSK3B'), (CHEMICAL, 'insulin')],
     [('Phosphorylation', 'phosphorylates', [('Theme', 'GSK3B'), ('Cause', 'AKT1')])]),
    ('Glucose raises the expression of SLC2A4 in muscle.', [(CHEMICAL, 'Glucose'), (GENE, 'SLC2A4')],
     [('Gene_expression', 'expression', [('Theme', 'SLC2A4')]), ('Positive_regulation', 'raises', [('Theme', 'E1'), ('Cause', 'Glucose')])]),
    ('RAF1 binds ATP and activates MEK1.', [(GENE, 'RAF1'), (CHEMICAL, 'ATP'), (GENE, 'MEK1')],
     [('Binding', 'binds', [('Theme', 'RAF1'), ('Theme2', 'ATP')]), ('Positive_regulation', 'activates', [('Theme', 'MEK1'), ('Cause', 'RAF1')])]),
]
SPLITS = {'train': SOURCE, 'devel': SOURCE[:2], 'test': SOURCE[2:]}


def write_source(folder: Path) -> Path:
    return write_files(folder, {f'{split}/doc{i}.{ext}': content for split, docs in SPLITS.items()
                                for i, doc in enumerate(docs) for ext, content in standoff_document(*doc).items()})


TARGET = [  # (title, abstract, [(type, word)]): every occurrence of each word is a mention
    ('Aspirin and headache.', 'Aspirin relieved the headache but caused nausea.', [('Chemical', 'Aspirin'), ('Disease', 'headache'), ('Disease', 'nausea')]),
    ('Lithium in mania.', 'Lithium calmed the mania; tremor followed.', [('Chemical', 'Lithium'), ('Disease', 'mania'), ('Disease', 'tremor')]),
    ('Cisplatin toxicity.', 'Cisplatin damaged the kidney in rats given saline.', [('Chemical', 'Cisplatin'), ('Chemical', 'saline')]),
    ('Caffeine and sleep.', 'Caffeine delayed sleep; insomnia followed.', [('Chemical', 'Caffeine'), ('Disease', 'insomnia')]),
]


def pubtator_block(pmid: int, title: str, abstract: str, mentions: list) -> str:
    text, lines = f'{title}\n{abstract}', [f'{pmid}|t|{title}', f'{pmid}|a|{abstract}']
    for type_, word in mentions:
        start = text.find(word)
        while start >= 0:
            lines.append(f'{pmid}\t{start}\t{start + len(word)}\t{word}\t{type_}\tMESH:{word.upper()}')
            start = text.find(word, start + 1)
    lines.append(f'{pmid}\tAssociation\tMESH:{mentions[0][1].upper()}\tMESH:{mentions[-1][1].upper()}\tNovel')  # another release's arity
    return '\n'.join(lines) + '\n\n'


def write_target(folder: Path) -> Path:
    blocks = [pubtator_block(100 + i, *doc) for i, doc in enumerate(TARGET)]
    return write_files(folder, {'toy_train.PubTator.txt': ''.join(blocks), 'toy_dev.PubTator.txt': ''.join(blocks[:2]),
                                'toy_test.PubTator.txt': ''.join(blocks[2:])})


def checkout_files_changed_since(started: float) -> list[str]:
    "Files of the checkout (outside .git and the virtual environment) written after `started`."
    changed = []
    for folder, subfolders, files in os.walk(ROOT):
        subfolders[:] = [d for d in subfolders if d not in ('.git', '.venv', '__pycache__', '.pytest_cache')]
        changed += [os.path.join(folder, f) for f in files if os.stat(os.path.join(folder, f)).st_mtime > started]
    return changed


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
    "The installed wheel, a working folder outside the checkout and the environment to run it with (user folders in tmp)."
    tmp = tmp_path_factory.mktemp('wheel')
    env = fresh_environment(tmp, build_wheel(tmp))
    work, home = tmp / 'work', tmp / 'home'
    work.mkdir()
    home.mkdir()
    variables = {k: v for k, v in os.environ.items()
                 if not k.startswith('METRICNER_') and k not in ('PYTHONPATH', 'PYTHONHOME', 'VIRTUAL_ENV')}
    variables.update(HOME=str(home), XDG_DATA_HOME=str(home / 'data'), XDG_CACHE_HOME=str(home / 'cache'),
                     PATH=f"{env / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}", HF_HUB_OFFLINE='1', TRANSFORMERS_OFFLINE='1')
    return {'env': env, 'work': work, 'home': home, 'variables': variables}


def run_installed(installed, *args, timeout=600) -> subprocess.CompletedProcess:
    return sh(*args, cwd=installed['work'], env=installed['variables'], timeout=timeout)


PROBE = '''import json, metricner
from metricner import paths, download, events
print(json.dumps({'package': metricner.__file__, 'templates': str(events.default_templates_path()),
                  'template_types': sorted(events.EventTemplates().templates), 'manifest': str(download.default_manifest()),
                  'manifest_corpora': sorted(download.load_manifest()['corpora']), 'project_root': paths.project_root(),
                  'data_dir': str(paths.default_data_dir()), 'cache_dir': str(paths.default_cache_dir())}))'''


def test_the_wheel_ships_its_data_and_uses_user_folders(installed):
    probe = json.loads(run_installed(installed, installed['env'] / 'bin' / 'python', '-c', PROBE).stdout)
    env, home = installed['env'], installed['home']
    assert Path(probe['package']).is_relative_to(env), probe['package']  # the wheel's copy, not the checkout's
    assert Path(probe['templates']).is_relative_to(env) and Path(probe['templates']).name == 'event_templates.json'
    assert {'Binding', 'Phosphorylation', 'Gene_expression', 'Positive_regulation'} <= set(probe['template_types'])
    assert Path(probe['manifest']).is_relative_to(env)
    assert probe['manifest_corpora'] == ['bc5cdr', 'cg', 'chemdner', 'drugprot', 'id', 'pc']
    assert probe['project_root'] is None
    assert probe['data_dir'] == str(home / 'data' / 'metricner' / 'corpora')
    assert probe['cache_dir'] == str(home / 'cache' / 'metricner')


def test_stats_on_a_small_corpus_from_outside_the_checkout(installed, tmp_path):
    source = write_source(tmp_path / 'source')
    stats = json.loads(run_installed(installed, 'metricner', 'stats', f'standoff:{source}', '--json').stdout)
    expected = {}
    for split, name in (('train', 'train'), ('devel', 'dev'), ('test', 'test')):
        docs = SPLITS[split]
        expected[name] = {'documents': len(docs), 'events': sum(len(events) for _, _, events in docs),
                          'mentions': dict(sorted(Counter(t for _, entities, _ in docs for t, _ in entities).items()))}
    assert stats == {f'standoff:{source}': expected}


def test_an_eg_ed_smoke_run_from_the_wheel_uses_the_event_templates(installed, tmp_path):
    source, target, out = write_source(tmp_path / 'source'), write_target(tmp_path / 'target'), tmp_path / 'run'
    started = time.time()
    result = run_installed(installed, 'metricner', 'run', '--profile', 'smoke', '--setting', 'eg_ed', '--events', 'sentenc',
                           '--source', f'standoff:{source}', '--target', f'pubtator:{target}', '--target-types', 'Chemical',
                           '--seed', '1', '--device', 'cpu', '--out', out)
    assert 'no template for event type' not in result.stdout + result.stderr  # every event type found its own template
    record = json.loads((out / 'metrics.json').read_text(encoding='utf-8'))
    assert record['config']['setting'] == 'eg_ed' and record['config']['events'] == 'sentenc'
    aux = record['stage1']['aux_similarity']
    assert aux['records'] > 0 and aux['entities_with_records'] > 0  # event sentences were written from the templates
    assert record['pseudo_labels'] is not None and 0 <= record['f1'] <= 1
    assert record['git']['commit'] is None  # an installed package claims no commit
    cache = installed['home'] / 'cache' / 'metricner'
    assert any((cache / 'stages').iterdir()) and any((cache / 'backbones').iterdir())  # the cache went to the user folder
    assert not (installed['work'] / 'results').exists()  # --out was honoured
    assert checkout_files_changed_since(started) == []
