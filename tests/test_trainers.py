"The training loop's pieces: exact loss weighting under gradient accumulation, MS entity counts, scores, pseudo labels."
import random

import pytest
import torch

from metricner.data import TaggedUnit
from metricner.encoder import Tagger, build_tiny_backbone, collate
from metricner.trainers import (PseudoDiscrimination, TrainConfig, TypeGrouping, _step, document_counts, optimizer_for,
                                pseudo_labels, score)

LABELS = ['O', 'B-Drug', 'I-Drug', 'B-Gene', 'I-Gene']


def unit(i, rng):
    words = [rng.choice(['aspirin', 'ibuprofen', 'gene', 'protein', 'lowers', 'pain', 'in', 'patients']) for _ in range(rng.randint(3, 12))]
    tags = ['B-Drug' if w in ('aspirin', 'ibuprofen') else 'B-Gene' if w == 'gene' else 'O' for w in words]
    spans, at = [], 0
    for w in words: spans.append((at, at + len(w))); at += len(w) + 1
    return TaggedUnit(f'd{i}', words, spans, tags, ['O'] * len(words))


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    rng = random.Random(0)
    units = [unit(i, rng) for i in range(12)]
    backbone = build_tiny_backbone(tmp_path_factory.mktemp('tiny'), words=['aspirin', 'ibuprofen', 'gene', 'protein', 'lowers', 'pain'])
    return units, backbone


def grads_after_step(units, backbone, micro, metric=None, ms_weight=0.0):
    tagger = Tagger.build(backbone, labels=LABELS, mode='full').eval()  # eval: no dropout, so passes are comparable
    windows, _ = tagger.encode(units)
    config = TrainConfig(lr=0.0, batch_size=len(windows), micro_batch_size=micro, ms_weight=ms_weight, progress=False)
    parts = [collate(windows[i:i + micro], tagger.tokenizer.pad_token_id) for i in range(0, len(windows), micro)]
    _step(tagger, parts, units, config, metric, optimizer_for(tagger, config))
    return {n: p.grad.clone() for n, p in tagger.named_parameters() if p.grad is not None}


def test_accumulated_cross_entropy_equals_the_whole_batch(setup):
    units, backbone = setup
    whole, accumulated = grads_after_step(units, backbone, 12), grads_after_step(units, backbone, 3)
    for name in whole: torch.testing.assert_close(accumulated[name], whole[name], atol=1e-6, rtol=1e-4)


def test_ms_entity_counts_match_the_features(setup):
    units, backbone = setup
    tagger = Tagger.build(backbone, labels=LABELS, mode='full').eval()
    windows, _ = tagger.encode(units)
    batch = collate(windows, tagger.tokenizer.pad_token_id)
    _, hidden = tagger(batch.input_ids, batch.attention_mask)
    grouping = TypeGrouping()
    assert grouping.count(batch, tagger) == len(grouping(hidden, batch, tagger, units)[0]) == sum(
        t.startswith('B-') for u in units for t in u.tags)
    pseudo = pseudo_labels(units, [['B-Gene' if w == 'protein' else 'O' for w in u.words] for u in units])
    discrimination = PseudoDiscrimination(pseudo)
    feats, labels, _ = discrimination(hidden, batch, tagger, units)
    assert discrimination.count(batch, tagger) == len(feats) and int(labels.sum()) == pseudo.counts['entities']


def test_pseudo_entities_never_cover_gold_entities(setup):
    units, _ = setup
    pseudo = pseudo_labels(units, [['B-Gene'] * len(u) for u in units])  # the source model tags every word
    for u, tags in zip(units, pseudo.tags):
        assert all(p == 'O' for p, g in zip(tags, u.tags) if g != 'O')
        assert all(p != 'O' for p, g in zip(tags, u.tags) if g == 'O')


def test_scores_and_document_counts_agree_with_seqeval():
    from seqeval.metrics import f1_score, precision_score, recall_score
    rng = random.Random(3)
    gold = [[rng.choice(['O', 'B-A', 'I-A', 'B-B']) for _ in range(15)] for _ in range(20)]
    pred = [[rng.choice(['O', 'B-A', 'I-A', 'B-B', 'I-B']) for _ in range(15)] for _ in range(20)]
    s = score(gold, pred)
    assert s['precision'] == pytest.approx(precision_score(gold, pred))
    assert s['recall'] == pytest.approx(recall_score(gold, pred))
    assert s['f1'] == pytest.approx(f1_score(gold, pred))
    tp, fp, fn = map(sum, zip(*document_counts(gold, pred)))
    assert s['precision'] == pytest.approx(tp / (tp + fp)) and s['recall'] == pytest.approx(tp / (tp + fn))
