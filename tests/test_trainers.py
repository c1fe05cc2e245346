"""The training loop's pieces: exact loss weighting under gradient accumulation, the MS term against the reference loss,
MS entity counts (windows included), scores, pseudo labels."""
import copy
import random

import pytest
import torch

from metricner.units import TaggedUnit
from metricner.backbone import build_tiny_backbone
from metricner.windows import IGNORE, collate
from metricner.tagger import Tagger
from metricner.events import AuxSimilarity
from metricner.losses import PAPER_SOURCE_MS, MultiSimilarityLoss, multi_similarity_loss_reference
from metricner.trainers import (PseudoDiscrimination, TrainConfig, TypeGrouping, _step, document_counts, optimizer_for,
                                pseudo_labels, score, train_stage)

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


def grads_after_step(units, backbone, micro, entities=None, loss=None, ms_weight=0.0):
    tagger = Tagger.build(backbone, labels=LABELS, mode='full').eval()  # eval: no dropout, so passes are comparable
    windows, _ = tagger.encode(units)
    config = TrainConfig(lr=0.0, batch_size=len(windows), micro_batch_size=micro, ms_weight=ms_weight, progress=False)
    parts = [collate(windows[i:i + micro], tagger.tokenizer.pad_token_id) for i in range(0, len(windows), micro)]
    _step(tagger, parts, units, config, optimizer_for(tagger, config), entities, loss)
    return {n: p.grad.clone() for n, p in tagger.named_parameters() if p.grad is not None}


def test_accumulated_cross_entropy_equals_the_whole_batch(setup):
    units, backbone = setup
    whole, accumulated = grads_after_step(units, backbone, 12), grads_after_step(units, backbone, 3)
    for name in whole: torch.testing.assert_close(accumulated[name], whole[name], atol=1e-6, rtol=1e-4)


def _grouping():
    records = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    return TypeGrouping(AuxSimilarity(['aspirin', 'ibuprofen', 'gene', 'aspirin'], records))


def _passes(tagger, units, micro):
    windows, _ = tagger.encode(units)
    return [collate(windows[i:i + micro], tagger.tokenizer.pad_token_id) for i in range(0, len(windows), micro)]


def _reference_step(reference, parts, units, entities, config):
    """The step's objective written out with the loop reference loss, every pass's graph kept: cross-entropy over the
    step's labelled words + lambda * the MS loss over all the step's entities (the paper's: one batch, one MS term)."""
    labelled = sum(int((b.labels != IGNORE).sum()) for b in parts)
    ce, feats, labels, keys = 0.0, [], [], []
    for b in parts:
        logits, hidden = reference(b.input_ids, b.attention_mask)
        ce = ce + torch.nn.functional.cross_entropy(logits.flatten(0, 1), b.labels.flatten(), ignore_index=IGNORE, reduction='sum')
        f, l, k = entities.entities(hidden, b, reference, units)
        feats.append(f); labels.append(l); keys += k
    feats = torch.cat(feats)
    ms = multi_similarity_loss_reference(feats, torch.cat(labels), entities.aux_of(keys, feats), **PAPER_SOURCE_MS)
    (ce / labelled + config.ms_weight * ms).backward()
    return len(feats)


def test_one_step_with_the_ms_term_matches_the_reference_loss(setup):
    "One optimizer step in micro-batches of 3 windows against the whole step's objective with the loop reference loss."
    units, backbone = setup
    tagger = Tagger.build(backbone, labels=LABELS, mode='full').eval()  # eval: no dropout, so both paths see the same
    reference = copy.deepcopy(tagger)
    entities = _grouping()
    config = TrainConfig(lr=1e-3, batch_size=12, micro_batch_size=3, ms_weight=1.2, progress=False)
    parts = _passes(tagger, units, 3)
    _step(tagger, parts, units, config, optimizer_for(tagger, config), entities, MultiSimilarityLoss(**PAPER_SOURCE_MS))

    optimizer = optimizer_for(reference, config)
    n_entities = _reference_step(reference, parts, units, entities, config)
    optimizer.step()
    assert n_entities == sum(t.startswith('B-') for u in units for t in u.tags)  # every unit fits one window

    grads = {n: p.grad for n, p in tagger.named_parameters()}
    for name, p in reference.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-7)
    # Adam's first step is lr * g / (|g| + eps), about lr * sign(g). Where |g| is near eps, the gradients' own float
    # rounding (the atol above) can move it by up to lr, so the steps are compared where |g| is far above eps
    compared = 0
    for a, b in zip(tagger.parameters(), reference.parameters()):
        if b.grad is None: continue
        firm = b.grad.abs() > 1e-5
        torch.testing.assert_close(a[firm], b[firm], rtol=0, atol=config.lr / 100)
        compared += int(firm.sum())
    assert compared > sum(p.numel() for p in reference.parameters()) / 2
    without_ms = grads_after_step(units, backbone, 3)  # the MS term moves the gradient: the comparison is not vacuous
    assert not torch.allclose(without_ms['encoder.embeddings.word_embeddings.weight'],
                              grads['encoder.embeddings.word_embeddings.weight'], rtol=1e-2, atol=1e-6)


def test_the_ms_term_sees_the_whole_step_however_it_is_cut(setup):
    "The same step in one pass (the term in the pass's graph) and in four (the term computed ahead): the same gradient."
    units, backbone = setup
    loss = MultiSimilarityLoss(**PAPER_SOURCE_MS)
    one, four = (grads_after_step(units, backbone, micro, _grouping(), loss, ms_weight=1.2) for micro in (12, 3))
    for name in one: torch.testing.assert_close(four[name], one[name], rtol=1e-4, atol=1e-7)


def test_micro_batches_replay_their_dropout(setup):
    """With dropout on, the step cut into passes equals the written-out objective whose passes drew their dropout in the
    same order: the second sweep replays the first sweep's draws (without the replay the gradients differ)."""
    units, backbone = setup
    tagger = Tagger.build(backbone, labels=LABELS, mode='full').train()
    reference = copy.deepcopy(tagger)
    config = TrainConfig(lr=1e-3, batch_size=12, micro_batch_size=3, ms_weight=1.2, progress=False)
    parts = _passes(tagger, units, 3)
    torch.manual_seed(5)
    _step(tagger, parts, units, config, optimizer_for(tagger, config), _grouping(), MultiSimilarityLoss(**PAPER_SOURCE_MS))
    torch.manual_seed(5)
    _reference_step(reference, parts, units, _grouping(), config)
    grads = {n: p.grad for n, p in tagger.named_parameters()}
    for name, p in reference.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-6)


def test_metric_term_needs_entities_and_loss_together(setup):
    units, backbone = setup
    tagger = Tagger.build(backbone, labels=LABELS, mode='full')
    with pytest.raises(ValueError, match='pass entities= and loss='):
        train_stage(tagger, units, [], TrainConfig(max_epochs=1, ms_weight=0.1, progress=False))
    with pytest.raises(ValueError, match='got only loss'):
        train_stage(tagger, units, [], TrainConfig(max_epochs=1, progress=False), loss=MultiSimilarityLoss(alpha=2, beta=5))


def test_pseudo_entities_of_a_split_unit_enter_once(setup):
    "Two or more windows of one unit in a batch: each pseudo entity is mapped once, to the window owning its first word."
    _, backbone = setup
    words = ['protein', 'lowers', 'pain', 'in', 'patients', 'and'] * 8
    long_unit = TaggedUnit('long', words, [], ['B-Drug' if w == 'pain' else 'O' for w in words], ['O'] * len(words))
    pseudo = pseudo_labels([long_unit], [['B-Gene' if w == 'protein' else 'O' for w in words]])
    tagger = Tagger.build(backbone, labels=LABELS, mode='full', max_length=16, stride=4).eval()
    batch = collate(tagger.encode([long_unit])[0], tagger.tokenizer.pad_token_id)
    assert len(batch.windows) > 2
    discrimination = PseudoDiscrimination(pseudo)
    _, hidden = tagger(batch.input_ids, batch.attention_mask)
    feats, labels, _ = discrimination(hidden, batch, tagger, [long_unit])
    assert int(labels.sum()) == pseudo.counts['entities'] == 8
    assert int((labels == 0).sum()) == 8  # the gold entities, once each too
    assert discrimination.count(batch, tagger) == len(feats) == 16


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
