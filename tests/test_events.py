"Event records, both paradigms and the auxiliary similarity, on the real sources and on small hand-made cases."
import pytest
import torch

from metricner.corpora import load_corpus
from metricner.events import (AuxSimilarity, EventTemplates, entity_key, event_records, record_sentences)


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
