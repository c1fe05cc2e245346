"The generic specs read corpora that the tests write, with the same code as the built-ins; bad input is named precisely."
import pytest

from metricner.readers import CorpusFormatError, read_pubtator
from metricner.corpora import corpus_stats, load_corpus
from metricner.units import tag_documents
from conftest import write_files

TEXT = 'MDM2 binds p53 and aspirin.'
A1 = 'T1\tProtein 0 4\tMDM2\nT2\tProtein 11 14\tp53\nT3\tChemical 19 26\taspirin\n'
A2 = 'T4\tBinding 5 10\tbinds\nE1\tBinding:T4 Theme:T1 Theme2:T2\n'


@pytest.fixture
def standoff(tmp_path):
    return write_files(tmp_path / 'st', {f'{split}/{doc}.{ext}': content
                                        for split in ('train', 'development', 'eval') for doc in ('a', 'b')
                                        for ext, content in (('txt', TEXT), ('a1', A1), ('a2', A2))})


def test_standoff_spec(standoff):
    corpus = load_corpus(f'standoff:{standoff}', exclude_types=['Chemical'])
    assert corpus.types == ('Protein',)
    assert {s: len(d) for s, d in corpus.splits.items()} == {'train': 2, 'dev': 2, 'test': 2}
    units, report = tag_documents(corpus['train'], corpus.types)
    assert units[0].tags == ['B-Protein', 'O', 'B-Protein', 'O', 'O', 'O']
    assert units[0].other_tags == ['O', 'O', 'O', 'O', 'B-Chemical', 'O']
    assert corpus_stats(f'standoff:{standoff}')['dev'] == {'documents': 2, 'mentions': {'Chemical': 2, 'Protein': 4}, 'events': 2}
    assert load_corpus(f'standoff:{standoff}', types=['Chemical']).types == ('Chemical',)


def test_pubtator_spec(tmp_path):
    block = '9|t|Cocaine toxicity.\n9|a|Cocaine caused seizures.\n9\t0\t7\tCocaine\tChemical\tD1\n9\t33\t41\tseizures\tDisease\tD2\n9\tCID\tD1\tD2\n\n'
    write_files(tmp_path, {'my_train.pubtator.txt': block, 'my_test.pubtator.txt': block})
    corpus = load_corpus(f'pubtator:{tmp_path}', types=['Chemical'])
    assert len(corpus['train']) == 1 and corpus['dev'] == [] and len(corpus['test']) == 1
    assert [m.type for m in corpus['train'][0].mentions] == ['Chemical', 'Disease']


# A PubTator block of another release: a relation line with a novelty flag (5 fields) beside CDR's 4-field one.
ASSOCIATION = ('4|t|Valproate and ataxia.\n4|a|Ataxia was seen after valproate.\n'
               '4\t0\t9\tValproate\tChemical\tD014635\n4\t14\t20\tataxia\tDisease\tD002524\n'
               '4\t22\t28\tAtaxia\tDisease\tD002524\n4\t44\t53\tvalproate\tChemical\tD014635\n'
               '4\tAssociation\tD014635\tD002524\tNo\n4\tCID\tD014635\tD002524\n4\tNote\tchecked by hand\n\n')


def test_pubtator_relation_lines_of_any_arity(tmp_path):
    write_files(tmp_path, {'x_train.pubtator.txt': ASSOCIATION, 'x_test.pubtator.txt': ASSOCIATION})
    doc, = read_pubtator(tmp_path / 'x_train.pubtator.txt')
    assert [(m.type, m.text, m.start) for m in doc.mentions] == [
        ('Chemical', 'Valproate', 0), ('Disease', 'ataxia', 14), ('Disease', 'Ataxia', 22), ('Chemical', 'valproate', 44)]
    assert [(r.id, r.type, r.arguments) for r in doc.relations] == [
        ('R7', 'Association', (('Arg1', 'D014635'), ('Arg2', 'D002524'), ('Arg3', 'No'))),
        ('R8', 'CID', (('Arg1', 'D014635'), ('Arg2', 'D002524'))),  # CDR's relation line, as before
        ('R9', 'Note', (('Arg1', 'checked by hand'),))]
    stats = corpus_stats(f'pubtator:{tmp_path}')  # what `metricner stats` prints: relation lines are not mentions
    assert stats['train'] == {'documents': 1, 'mentions': {'Chemical': 2, 'Disease': 2}, 'events': 0}


@pytest.mark.parametrize('line, problem', [
    ('4\t0\t9\tValproate\tChemical', 'x.pubtator:3: expected a mention line with 6 or 7 fields (PMID, start, end, text, type, ids[, names]), found 5'),
    ('4\t0\t9\tValproate\tChemical\tD1\tvalproic acid\textra', 'x.pubtator:3: expected a mention line with 6 or 7 fields'),
    ('4\t0\tnine\tValproate\tChemical\tD1', "x.pubtator:3: offset 'nine' is not an integer"),
    ('4\t0\t90\tValproate\tChemical\tD1', 'x.pubtator:3: 0-90-Chemical: offsets 0-90 outside the text'),
    ('4\t1\t10\tValproate\tChemical\tD1', "x.pubtator:3: 1-10-Chemical: text 'Valproate' does not match"),
    ('4\tCID', 'x.pubtator:3: relation line needs "PMID<tab>TYPE<tab>ARGUMENT..."'),
    ('4\t\tD1\tD2', 'x.pubtator:3: relation line needs'),
    ('4', 'x.pubtator:3: expected a mention line'),
])
def test_pubtator_malformed_lines_name_file_and_line(tmp_path, line, problem):
    write_files(tmp_path, {'x.pubtator': f'4|t|Valproate and ataxia.\n4|a|Ataxia was seen.\n{line}\n'})
    with pytest.raises(CorpusFormatError) as error:
        read_pubtator(tmp_path / 'x.pubtator')
    assert problem in str(error.value)


def test_pubtator_crlf_line_ends(tmp_path):
    write_files(tmp_path, {'lf.pubtator': ASSOCIATION})
    (tmp_path / 'crlf.pubtator').write_bytes(ASSOCIATION.replace('\n', '\r\n').encode('utf-8'))
    lf, = read_pubtator(tmp_path / 'lf.pubtator')
    crlf, = read_pubtator(tmp_path / 'crlf.pubtator')
    assert '\r' not in crlf.text and crlf.text == 'Valproate and ataxia.\nAtaxia was seen after valproate.'
    assert crlf.mentions == lf.mentions and crlf.relations == lf.relations
    assert [crlf.text[m.start:m.end] for m in crlf.mentions] == ['Valproate', 'ataxia', 'Ataxia', 'valproate']
    assert all(not arg.endswith('\r') for r in crlf.relations for _, arg in r.arguments)


def test_chemdner_and_drugprot_specs(tmp_path):
    write_files(tmp_path / 'c', {'train.abstracts.txt': '1\tNaCl.\tWe used NaCl.\n', 'train.annotations.txt': '1\tA\t8\t12\tNaCl\tFORMULA\n'})
    assert load_corpus(f'chemdner:{tmp_path}/c').types == ('FORMULA',)
    write_files(tmp_path / 'd', {'x_training_abstracs.tsv': '5\tNaCl.\tWe used NaCl.\n',
                                 'x_training_entities.tsv': '5\tT1\tCHEMICAL\t14\t18\tNaCl\n',
                                 'x_test_abstracs.tsv': '6\tA.\tB.\n', 'x_test_entities.tsv': ''})
    corpus = load_corpus(f'drugprot:{tmp_path}/d')
    assert corpus['train'][0].mentions[0].text == 'NaCl' and len(corpus['test']) == 1


def test_conll_spec(tmp_path):
    write_files(tmp_path, {'train.conll': '-DOCSTART- O\n\nAspirin B-Drug\nhelps O\n\nIbuprofen B-Drug\ntoo I-Drug\n\n',
                           'dev.conll': 'x O\n'})
    corpus = load_corpus(f'conll:{tmp_path}')
    doc, = corpus['train']
    assert doc.text == 'Aspirin helps\nIbuprofen too'
    assert [m.text for m in doc.mentions] == ['Aspirin', 'Ibuprofen too']
    units, _ = tag_documents(corpus['train'], corpus.types, unit='sentence')
    assert [u.tags for u in units] == [['B-Drug', 'O'], ['B-Drug', 'I-Drug']]


@pytest.mark.parametrize('a1, a2, where, problem', [
    ('T1\tProtein 0 4\tMDM2\nT1\tProtein 11 14\tp53\n', None, 'a.a1:2', 'duplicate id T1'),
    ('T1\tProtein 0 5\tMDM2\n', None, 'a.a1:1', "text 'MDM2' does not match 'MDM2 '"),
    ('T1\tProtein 20 99\tx\n', None, 'a.a1:1', 'outside the text'),
    ('T1\tProtein 0 4 MDM2\n', None, 'a.a1:1', 'text-bound line needs'),
    ('T1\tProtein 0 4\tMDM2\n', 'T4\tBinding 5 10\tbinds\nE1\tBinding:T4 Theme:T7\n', 'a.a2:2', 'E1 Theme points to T7'),
    ('T1\tProtein 0 4\tMDM2\n', 'E1\tBinding:T9 Theme:T1\n', 'a.a2:1', 'E1 trigger points to T9'),
    ('T1\tProtein 0 4\tMDM2\n', 'M1\tNegation E5\n', 'a.a2:1', 'Negation modifier points to E5'),
    ('T1\tProtein 0 4\tMDM2\n', '*\tEquiv T1 T8\n', 'a.a2:1', 'equivalence points to T8'),
    ('T1\tProtein 0 4\tMDM2\n', 'E1\tBinding T1\n', 'a.a2:1', 'event line needs'),
    ('Q1\tfoo\n', None, 'a.a1:1', 'unknown annotation line'),
])
def test_standoff_bad_input(tmp_path, a1, a2, where, problem):
    files = {'train/a.txt': TEXT, 'train/a.a1': a1, **({'train/a.a2': a2} if a2 else {})}
    write_files(tmp_path, files)
    with pytest.raises(CorpusFormatError) as error:
        load_corpus(f'standoff:{tmp_path}')
    assert where in str(error.value) and problem in str(error.value)


def test_missing_a1_and_orphan_annotation(tmp_path):
    write_files(tmp_path, {'train/a.txt': TEXT})
    with pytest.raises(CorpusFormatError, match=r'a\.txt: no a\.a1 next to it'):
        load_corpus(f'standoff:{tmp_path}')
    write_files(tmp_path / 'x', {'train/b.a1': A1})
    with pytest.raises(CorpusFormatError, match='annotation file without its .txt'):
        load_corpus(f'standoff:{tmp_path}/x')


@pytest.mark.parametrize('abstracts, annotations, problem', [
    ('1\tT.\tA b.\n', '1\tA\t0\t1\tA\tTRIVIAL\n1\tA\t0\t1\tA\tTRIVIAL\n', 'annotations.txt:2: duplicate id A0-1 in document 1'),
    ('1\tT.\tA b.\n', '2\tA\t0\t1\tA\tTRIVIAL\n', 'document 2 is not in'),
    ('1\tT.\tA b.\n', '1\tA\t0\tone\tA\tTRIVIAL\n', "offset 'one' is not an integer"),
    ('1\tT.\tA b.\n', '1\tX\t0\t1\tA\tTRIVIAL\n', 'part must be T or A'),
    ('1\tT.\n', '', 'expected 3 tab-separated fields'),
    ('1\tT.\tA b.\n1\tT.\tA b.\n', '', 'duplicate document id 1'),
])
def test_chemdner_bad_input(tmp_path, abstracts, annotations, problem):
    write_files(tmp_path, {'train.abstracts.txt': abstracts, 'train.annotations.txt': annotations})
    with pytest.raises(CorpusFormatError, match=problem) as error:
        load_corpus(f'chemdner:{tmp_path}')
    assert 'train.a' in str(error.value)


def test_pubtator_and_drugprot_bad_input(tmp_path):
    write_files(tmp_path / 'p', {'train.pubtator': '1|t|Ab.\n1|a|Cd.\n2\t0\t2\tAb\tChemical\tX\n'})
    with pytest.raises(CorpusFormatError, match=r'train.pubtator:3: annotation line outside its document block'):
        load_corpus(f'pubtator:{tmp_path}/p')
    write_files(tmp_path / 'd', {'train_abstracs.tsv': '5\tAb.\tCd.\n', 'train_entities.tsv': '5\tT1\tCHEMICAL\t0\t2\tAb\n',
                                 'train_relations.tsv': '5\tINHIBITOR\tArg1:T1\tArg2:T9\n'})
    with pytest.raises(CorpusFormatError, match=r'train_relations.tsv:1: relation argument T9 of document 5 does not exist'):
        load_corpus(f'drugprot:{tmp_path}/d')


def test_split_detection_errors(tmp_path):
    write_files(tmp_path / 'two', {'train.abstracts.txt': '', 'train.annotations.txt': '',
                                   'training.abstracts.txt': '', 'training.annotations.txt': ''})
    with pytest.raises(CorpusFormatError, match='two \\*.abstracts.txt files for the train split'):
        load_corpus(f'chemdner:{tmp_path}/two')
    write_files(tmp_path / 'half', {'train.abstracts.txt': ''})
    with pytest.raises(CorpusFormatError, match='missing: the train split needs it'):
        load_corpus(f'chemdner:{tmp_path}/half')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(CorpusFormatError, match='no train/dev/test standoff data found'):
        load_corpus(f'standoff:{tmp_path}/empty')


def test_unknown_names(tmp_path):
    with pytest.raises(ValueError, match='unknown corpus'):
        load_corpus('chemdnr')
    from metricner.readers import CorpusNotFoundError
    with pytest.raises(CorpusNotFoundError, match='metricner download bc5cdr'):
        load_corpus('bc5cdr', data_dir=tmp_path)
