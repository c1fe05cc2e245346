"Counts of the six real corpora, checked against the figures in shared/corpora/README.md or counted from the files."
import pytest

from metricner.corpora import corpus_stats, load_corpus, parse_corpus
from metricner.units import AlignmentReport, tag_documents
from metricner.sampling import sample_paper

# (train, dev, test) counts from the corpora README
STANDOFF = {  # name: (.a1 entities per split, .a2 events in train and dev, documents per split)
    'pc': ((7855, 2734, 5312), (5992, 2129), (260, 90, 175)),
    'cg': ((10935, 3634, 6955), (8803, 2915), (300, 100, 200)),
    'id': ((6525, 1976, 4239), (2088, 691), (152, 46, 118)),
}


@pytest.mark.parametrize('name', list(STANDOFF))
def test_standoff_counts(data_dir, name):
    mentions, events, documents = STANDOFF[name]
    stats = corpus_stats(name, data_dir)
    assert [stats[s]['documents'] for s in ('train', 'dev', 'test')] == list(documents)
    assert [sum(stats[s]['mentions'].values()) for s in ('train', 'dev', 'test')] == list(mentions)
    assert [stats[s]['events'] for s in ('train', 'dev', 'test')] == [*events, 0]


def test_source_types(data_dir):
    assert set(corpus_stats('pc', data_dir)['train']['mentions']) == {
        'Gene_or_gene_product', 'Simple_chemical', 'Complex', 'Cellular_component'}
    cg = corpus_stats('cg', data_dir)['train']['mentions']
    assert len(cg) == 16 and {'Simple_chemical', 'Amino_acid'} <= set(cg)
    assert set(corpus_stats('id', data_dir)['train']['mentions']) == {
        'Protein', 'Organism', 'Chemical', 'Two-component-system', 'Regulon-operon'}


def test_pooled_source_is_the_sum(data_dir):
    pooled = corpus_stats('all', data_dir)
    assert pooled['train']['documents'] == 260 + 300 + 152
    assert sum(pooled['dev']['mentions'].values()) == 2734 + 3634 + 1976
    assert pooled['train']['events'] == 5992 + 8803 + 2088


def test_target_counts(data_dir):
    chemdner = corpus_stats('chemdner', data_dir)
    assert [chemdner[s]['documents'] for s in ('train', 'dev', 'test')] == [3500, 3500, 3000]
    assert [sum(chemdner[s]['mentions'].values()) for s in ('train', 'dev', 'test')] == [29478, 29526, 25351]
    assert set(chemdner['train']['mentions']) == {'ABBREVIATION', 'IDENTIFIER', 'FORMULA', 'SYSTEMATIC', 'MULTIPLE',
                                                  'TRIVIAL', 'FAMILY', 'NO CLASS'}
    bc5cdr = corpus_stats('bc5cdr', data_dir)
    assert [bc5cdr[s]['documents'] for s in ('train', 'dev', 'test')] == [500, 500, 500]
    assert [bc5cdr[s]['mentions']['Chemical'] for s in ('train', 'dev', 'test')] == [5203, 5347, 5385]
    assert [bc5cdr[s]['mentions']['Disease'] for s in ('train', 'dev', 'test')] == [4182, 4244, 4424]
    drugprot = corpus_stats('drugprot', data_dir)
    assert drugprot['train']['documents'] == 3500 and drugprot['dev']['documents'] == 750
    assert drugprot['train']['mentions'] == {'CHEMICAL': 46274, 'GENE-N': 14834, 'GENE-Y': 28421}


def test_label_policies(data_dir):
    assert 'Simple_chemical' not in load_corpus('pc', data_dir).types
    assert 'Chemical' not in load_corpus('id', data_dir).types
    pooled = load_corpus('all', data_dir)
    assert not {'Simple_chemical', 'Chemical'} & set(pooled.types)
    assert len(pooled['train']) == 712 and pooled['train'][0].id.startswith('pc/')
    assert load_corpus('chemdner', data_dir).types == (
        'ABBREVIATION', 'FAMILY', 'FORMULA', 'IDENTIFIER', 'MULTIPLE', 'SYSTEMATIC', 'TRIVIAL')
    assert load_corpus('bc5cdr', data_dir).types == ('Chemical',)


def _abstract_ids(folder, split):
    "PMIDs of a DrugProt abstracts file, in file order, read straight from the file."
    path = next(folder.rglob(f'*_{split}_abstracs.tsv'))
    return [line.split('\t', 1)[0] for line in path.read_text(encoding='utf-8').splitlines() if line.strip()]


def _chemicals(folder, split, pmids):
    "CHEMICAL rows of a DrugProt entities file whose PMID is in `pmids`, counted straight from the file."
    path = next(folder.rglob(f'*_{split}_entities.tsv'))
    rows = (line.split('\t') for line in path.read_text(encoding='utf-8').splitlines() if line.strip())
    return sum(row[0] in pmids and row[2] == 'CHEMICAL' for row in rows)


def test_drugprot_as_the_paper_reads_it(data_dir):
    "`drugprot`: the first 600 abstracts of the training file as train, the next 600 as dev, the first 600 of the development file as test."
    corpus = load_corpus('drugprot', data_dir)
    folder = parse_corpus('drugprot', data_dir)[1]
    training, development = _abstract_ids(folder, 'training'), _abstract_ids(folder, 'development')
    assert len(training) > 1200 and len(development) > 600  # enough for three splits of 600
    assert [d.id for d in corpus['train']] == training[:600]
    assert [d.id for d in corpus['dev']] == training[600:1200]
    assert [d.id for d in corpus['test']] == development[:600]
    assert corpus.types == ('CHEMICAL',)
    for split, file, pmids in (('train', 'training', training[:600]), ('test', 'development', development[:600])):
        assert sum(m.type == 'CHEMICAL' for d in corpus[split] for m in d.mentions) == _chemicals(folder, file, set(pmids))


def test_drugprot_full_reading(data_dir):
    corpus = load_corpus('drugprot-full', data_dir)
    folder = parse_corpus('drugprot-full', data_dir)[1]
    training, development = _abstract_ids(folder, 'training'), _abstract_ids(folder, 'development')
    assert corpus.types == ('CHEMICAL',)
    assert [len(corpus[s]) for s in ('train', 'dev', 'test')] == [len(training) - 750, 750, len(development)]
    train, dev, test = ({d.id for d in corpus[s]} for s in ('train', 'dev', 'test'))
    assert not train & dev and not (train | dev) & test and train | dev == set(training)
    again = load_corpus('drugprot-full', data_dir)  # deterministic carve
    assert [d.id for d in again['dev']] == [d.id for d in corpus['dev']]
    # non-target types stay as annotations for analysis
    assert any(m.type.startswith('GENE') for d in corpus['test'] for m in d.mentions)


@pytest.mark.parametrize('name', ['pc', 'cg', 'id', 'chemdner', 'bc5cdr', 'drugprot', 'drugprot-full'])
def test_every_mention_accounted_for(data_dir, name):
    corpus = load_corpus(name, data_dir)
    report = sum((tag_documents(docs, corpus.types)[1] for docs in corpus.splits.values()), AlignmentReport())
    expected = sum(m.type in corpus.types for docs in corpus.splits.values() for d in docs for m in d.mentions)
    assert report.mentions == expected
    assert report.tagged + report.overlapping + report.no_words == report.mentions
    assert report.tagged / report.mentions > 0.8


def test_chemdner_empty_mention_is_counted(data_dir):
    "The CHEMDNER evaluation set has empty mentions (start = end): read, then counted as covering no word."
    corpus = load_corpus('chemdner', data_dir)
    _, report = tag_documents(corpus['test'], corpus.types)
    assert report.no_words >= 1


def test_paper_sampler_on_chemdner(data_dir):
    corpus = load_corpus('chemdner', data_dir)
    units, _ = tag_documents(corpus['train'], corpus.types)
    sample = sample_paper(units, corpus.labels, *corpus.few_shot)
    n = sum(any(t != 'O' for t in u.tags) for u in units)
    limit = n * 0.05 / 15
    assert sample.settings['N'] == n
    assert all(count <= -(-limit // 1) for count in sample.per_label.values())
    # every label's first occurrences in file order are in the sample
    for label in corpus.labels:
        first = next(i for i, u in enumerate(units) if label in u.tags)
        assert first in sample.indices
    assert len(sample.indices) < len(units) * 0.05


@pytest.mark.parametrize('name, source_like', [('chemdner', set()), ('bc5cdr', {'Disease'}), ('drugprot', {'GENE'})])
def test_source_like_annotations_of_the_targets(data_dir, name, source_like):
    corpus = load_corpus(name, data_dir)
    units, _ = tag_documents(corpus['test'][:100], corpus.types, source_like=corpus.source_like)
    tagged = {t[2:] for u in units for t in u.other_tags if t != 'O'}
    assert tagged == source_like  # CHEMDNER's NO CLASS chemicals are not source entities
    pooled = load_corpus('all', data_dir)
    units, _ = tag_documents(pooled['train'][:50], pooled.types, source_like=pooled.source_like)
    assert {t[2:] for u in units for t in u.other_tags if t != 'O'} & {'Simple_chemical', 'Chemical'}


GENE_NAMES = pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "DrugProt's training file names genes GENE-Y and GENE-N, its development file (the test split) GENE, and the built-in "
    "target matches GENE only, so its train and dev units have no source-like tags. The fix (corpora.py) changes the code "
    "fingerprint: it waits for the study's next forced restart (issue #17). Remove this mark with it."))


@pytest.mark.parametrize('name', ['bc5cdr', pytest.param('drugprot', marks=GENE_NAMES)])
def test_every_split_of_a_target_has_its_source_like_annotations(data_dir, name):
    "Each split's units carry the target's source-like annotations (`other_tags`): ED's labels are scored against the train split's."
    corpus = load_corpus(name, data_dir)
    for split in ('train', 'dev', 'test'):
        units, _ = tag_documents(corpus[split][:50], corpus.types, 'document', corpus.source_like)
        assert any(t != 'O' for u in units for t in u.other_tags), f'{name} {split}: no {corpus.source_like} annotation in 50 documents'
