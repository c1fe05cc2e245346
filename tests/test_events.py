"Event records, both paradigms and the auxiliary similarity, on the real sources and on small hand-made cases."
import hashlib

import pytest
import torch

from metricner.corpora import Corpus, load_corpus
from metricner.events import (PAPER_RECORDS, AuxSimilarity, EventTemplates, build_aux_similarity, drop_arguments, entity_key,
                              event_records, record_sentences)
from metricner.readers import read_standoff_document, write_files


def brute_force_aux(keys, owners, vectors, reduce):
    "w(i, j) by looping over every pair of records, written from the definition."
    out = torch.zeros(len(keys), len(keys))
    for i, a in enumerate(keys):
        for j, b in enumerate(keys):
            sims = [float(torch.cosine_similarity(vectors[x], vectors[y], dim=0))
                    for x in range(len(owners)) if owners[x] == a for y in range(len(owners)) if owners[y] == b]
            if sims: out[i, j] = max(sims) if reduce == 'max' else sum(sims) / len(sims)
    return out


@pytest.mark.parametrize('reduce', ['max', 'mean'])
@pytest.mark.parametrize('budget', [1024, 0])  # the dense matrix, and the per-batch path
def test_aux_similarity_matches_brute_force(reduce, budget):
    generator = torch.Generator().manual_seed(0)
    owners = [f'e{int(i)}' for i in torch.randint(0, 12, (60,), generator=generator)]
    vectors = torch.randn(60, 16, generator=generator)
    keys = ['e3', 'e0', 'nobody', 'e3', 'e7', 'e11']
    aux = AuxSimilarity(owners, vectors, reduce=reduce, budget_mib=budget)
    torch.testing.assert_close(aux(keys), brute_force_aux(keys, owners, vectors, reduce), atol=1e-5, rtol=1e-5)
    assert aux.stats()['lookups_without_records'] == 1


def test_entity_identity_is_case_insensitive():
    assert entity_key('NF-kappaB') == entity_key('nf-KappaB') == 'nf-kappab'


def test_generic_template_for_unknown_event_type(capsys):
    templates = EventTemplates()
    first = templates.sentence('Teleportation', 'beamed', {'Theme': ['Spock (self)'], 'ToLoc': ['the ship']})
    templates.sentence('Teleportation', 'beamed', {'Theme': ['Kirk']})
    assert first == 'A teleportation event (beamed) of Spock (self), to the ship.'
    assert capsys.readouterr().out.count("no template for event type 'Teleportation'") == 1


def test_every_source_event_type_has_a_template(data_dir):
    templates = EventTemplates()
    for name in ('pc', 'cg', 'id'):
        corpus = load_corpus(name, data_dir)
        types = {e.type for split in ('train', 'dev') for d in corpus[split] for e in d.events}
        assert types and types <= set(templates.templates), types - set(templates.templates)


def test_records_of_the_pooled_source(data_dir):
    source = load_corpus('all', data_dir)
    records = event_records(source['train'], source.types)
    assert len(records) > 10_000
    assert {r.entity for r in records} <= {entity_key(m.text) for d in source['train'] for m in d.mentions if m.type in source.types}
    # chemicals are not labels of the source, so they get no records of their own ...
    chemicals = {entity_key(m.text) for d in source['train'] for m in d.mentions if m.type == 'Simple_chemical'}
    labelled = {entity_key(m.text) for d in source['train'] for m in d.mentions if m.type in source.types}
    assert not {r.entity for r in records} & (chemicals - labelled)
    # ... but appear inside other entities' sentences
    sentences = record_sentences(records[:2000], source['train'])
    assert all(s.endswith('.') and '{' not in s for s in sentences)
    assert sum('(self)' in s for s in sentences) == sum(r.event is not None for r in records[:2000])


# A hand-written standoff document: a phosphorylation of p53 (Theme) by ATM (Cause) with ATP (a chemical, not a
# label) as a second cause, a binding of p53 and MDM2, and an Equiv line saying that p53 and TP53 are one entity.
TEXT = 'ATM phosphorylates p53 with ATP. MDM2 binds TP53.'
A1 = ('T1\tGene_or_gene_product 0 3\tATM\nT2\tGene_or_gene_product 19 22\tp53\nT3\tSimple_chemical 28 31\tATP\n'
      'T4\tGene_or_gene_product 33 37\tMDM2\nT5\tGene_or_gene_product 44 48\tTP53\n')
A2 = ('T6\tPhosphorylation 4 18\tphosphorylates\nT7\tBinding 38 43\tbinds\n'
      'E1\tPhosphorylation:T6 Theme:T2 Cause:T1 Cause2:T3\nE2\tBinding:T7 Theme:T4 Theme2:T5\n*\tEquiv T2 T5\n')
LABELS = ('Gene_or_gene_product',)


@pytest.fixture
def standoff_doc(tmp_path):
    write_files(tmp_path, {'d1.txt': TEXT, 'd1.a1': A1, 'd1.a2': A2})
    return read_standoff_document(tmp_path / 'd1.txt')


class TrigramEncoder:
    "A tiny deterministic text encoder: hashed character trigrams."
    identity = 'trigram-32'
    def __call__(self, texts):
        out = torch.zeros(len(texts), 32)
        for i, t in enumerate(texts):
            t = f'  {t.lower()} '
            for j in range(len(t) - 2): out[i, int(hashlib.md5(t[j:j + 3].encode()).hexdigest(), 16) % 32] += 1
        return out


def test_only_event_lines_make_records_in_the_papers_way(standoff_doc):
    older = event_records([standoff_doc], LABELS)
    paper = event_records([standoff_doc], LABELS, equivalences=PAPER_RECORDS['equivalences'])
    assert [(r.entity, r.event) for r in paper] == [('p53', 'E1'), ('atm', 'E1'), ('mdm2', 'E2'), ('tp53', 'E2')]
    assert [(r.entity, r.group) for r in older if r.event is None] == [('p53', ('T2', 'T5')), ('tp53', ('T2', 'T5'))]


def test_self_slot_without_the_mention_text(standoff_doc):
    records = event_records([standoff_doc], LABELS, equivalences=False)
    assert record_sentences(records, [standoff_doc])[0].startswith('P53 (self) is phosphorylated')
    paper = record_sentences(records, [standoff_doc], self_text=False)
    assert paper[0].startswith('(self) is phosphorylated') and 'p53' not in paper[0].lower()
    assert all(s.count('(self)') == 1 for s in paper)
    assert paper[2:] == ['(self) and TP53 bind together (binds).', 'MDM2 and (self) bind together (binds).']


def test_chemical_arguments_are_dropped(standoff_doc):
    (dropped,), removed = drop_arguments([standoff_doc], ['Simple_chemical'])
    assert removed == 1
    assert dropped.events[0].arguments == (('Theme', 'T2'), ('Cause', 'T1'))
    assert 'ATP' in record_sentences(event_records([standoff_doc], LABELS, False), [standoff_doc])[0]
    assert 'ATP' not in record_sentences(event_records([dropped], LABELS, False), [dropped])[0]


@pytest.mark.parametrize('paradigm', ['sentenc', 'concat'])
def test_build_records_the_papers_way(standoff_doc, tmp_path, paradigm):
    corpus = Corpus('toy', {'train': [standoff_doc]}, LABELS)
    older = build_aux_similarity(corpus, paradigm, TrigramEncoder(), cache_dir=tmp_path / 'cache').stats()
    paper = build_aux_similarity(corpus, paradigm, TrigramEncoder(), cache_dir=tmp_path / 'cache', **PAPER_RECORDS).stats()
    assert (older['records'], paper['records']) == (6, 4)
    assert {k: paper[k] for k in ('self_text', 'equivalences', 'drop_unlabelled', 'dropped_types', 'dropped_arguments')} == {
        'self_text': False, 'equivalences': False, 'drop_unlabelled': True, 'dropped_types': ['Simple_chemical'], 'dropped_arguments': 1}
    assert older['dropped_arguments'] == 0 and older['dropped_types'] == []


def test_papers_records_of_the_pooled_source(data_dir):
    source = load_corpus('all', data_dir)
    unlabelled = sorted({m.type for d in source['train'] for m in d.mentions} - set(source.types))
    assert unlabelled == ['Chemical', 'Simple_chemical']  # what drop_unlabelled drops is exactly the chemical types
    docs, removed = drop_arguments(source['train'], unlabelled)
    chemical_ids = {(d.id, m.id) for d in docs for m in d.mentions if m.type in unlabelled}
    assert removed > 0 and not any((d.id, ref) in chemical_ids for d in docs for e in d.events for _, ref in e.arguments)
    assert sum(len(e.arguments) for d in source['train'] for e in d.events) - sum(len(e.arguments) for d in docs for e in d.events) == removed
    records = event_records(docs, source.types, equivalences=False)
    assert all(r.event is not None for r in records)
    sentences = record_sentences(records[:2000], docs, self_text=False)
    assert all(s.count('(self)') == 1 for s in sentences)


@pytest.mark.slow
def test_a_run_records_how_its_event_records_were_made(tmp_path, monkeypatch, data_dir):
    "A smoke EG+ED run with the paper's event records and MS weights: the record says both."
    from metricner.experiments import PAPER_EVENT_RECORDS, ExperimentConfig, StageCache, run_experiment
    monkeypatch.setenv('METRICNER_CACHE', str(tmp_path / 'cache'))
    monkeypatch.setenv('METRICNER_DATA', str(data_dir))
    config = ExperimentConfig(target='bc5cdr', source='pc', setting='eg_ed', profile='smoke', out_dir=str(tmp_path / 'run'),
                              ce_share={'pc': 0.5, 'bc5cdr': 0.4}, **PAPER_EVENT_RECORDS)
    record = run_experiment(config, StageCache(tmp_path / 'stages'))
    aux = record['stage1']['aux_similarity']
    assert (aux['self_text'], aux['equivalences'], aux['drop_unlabelled'], aux['dropped_types']) == (False, False, True, ['Simple_chemical'])
    assert aux['dropped_arguments'] > 0
    assert record['stage1']['ms_weight'] == pytest.approx(1.2 / 0.5) and record['stage2']['ms_weight'] == pytest.approx(0.1 / 0.4)
    assert record['config']['event_self_text'] is False and record['config']['ce_share'] == {'pc': 0.5, 'bc5cdr': 0.4}
