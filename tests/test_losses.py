"""Tests of metricner.losses against an independent pair-by-pair loop written from the formula.

The loss (nbs/03_losses.ipynb; the paper, arXiv 2401.10472, after Wang et al., CVPR 2019): for anchor i, with S the cosine similarities and w the auxiliary similarities,
    L_i = 1/alpha log(1 + sum_{j in P_i} exp(-alpha (S_ij - t) + alpha_w w_ij))
        + 1/beta  log(1 + sum_{j in N_i} exp( beta  (S_ij - t) - beta_w  w_ij)),
total = sum_i L_i / n. Mining: candidate positives are the same-label entities, the anchor itself included;
negatives are kept when S_ij + margin > min positive, positives when S_ij - margin < max negative; with no
negatives every positive is kept. The reference below deliberately shares no code with the module.
"""
import functools
import math

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses

from metricner.losses import (
    PAPER_SOURCE_MS,
    PAPER_TARGET_MS,
    MultiSimilarityLoss,
    SelfPairMultiSimilarityMiner,
    benchmark_ms_loss,
)

DTYPES = [torch.float32, torch.float64]


# ---------------------------------------------------------------- the independent reference
def cosine(a, b):
    return torch.dot(a, b) / (torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b))


def mined_pairs(sims, labels, i, margin):
    "Indices (P_i, N_i) for anchor i, from a list of similarities of i to every entity."
    n = len(labels)
    candidate_pos = [j for j in range(n) if labels[j] == labels[i]]
    candidate_neg = [j for j in range(n) if labels[j] != labels[i]]
    min_pos = min(float(sims[j].detach()) for j in candidate_pos)
    max_neg = max((float(sims[j].detach()) for j in candidate_neg), default=math.inf)
    positives = [j for j in candidate_pos if float(sims[j].detach()) - margin < max_neg]
    negatives = [j for j in candidate_neg if float(sims[j].detach()) + margin > min_pos]
    return positives, negatives


def log_one_plus_sum_exp(terms, like):
    return torch.logsumexp(torch.stack([like.new_zeros(())] + terms), dim=0)


def loop_ms_loss(feats, labels, aux, alpha, beta, alpha_w=0.0, beta_w=0.0, base=0.5, margin=0.1):
    n = feats.shape[0]
    labels = [int(y) for y in labels]
    total = feats.new_zeros(())
    for i in range(n):
        sims = [cosine(feats[i], feats[j]) for j in range(n)]
        weight = (lambda j: 0.0) if aux is None else (lambda j: aux[i, j])
        positives, negatives = mined_pairs(sims, labels, i, margin)
        pos_terms = [-alpha * (sims[j] - base) + alpha_w * weight(j) for j in positives]
        neg_terms = [beta * (sims[j] - base) - beta_w * weight(j) for j in negatives]
        total = total + log_one_plus_sum_exp(pos_terms, feats) / alpha
        total = total + log_one_plus_sum_exp(neg_terms, feats) / beta
    return total / n


def loop_masks(feats, labels, margin):
    n = feats.shape[0]
    labels = [int(y) for y in labels]
    pos, neg = torch.zeros(n, n, dtype=torch.bool), torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        positives, negatives = mined_pairs([cosine(feats[i], feats[j]) for j in range(n)], labels, i, margin)
        pos[i, positives], neg[i, negatives] = True, True
    return pos, neg


# ---------------------------------------------------------------- cases
def symmetric_aux(n, generator, dtype):
    aux = torch.rand(n, n, generator=generator, dtype=dtype)
    aux = (aux + aux.T) / 2
    return aux.fill_diagonal_(1.0)


def make_case(name, dtype):
    "(feats, labels, aux) for a named situation; seeded, small."
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    if name == "several_classes":
        n, labels = 16, torch.randint(4, (16,), generator=g)
        return torch.randn(n, 8, generator=g, dtype=dtype), labels, symmetric_aux(n, g, dtype)
    if name == "several_classes_no_aux":
        return torch.randn(16, 8, generator=g, dtype=dtype), torch.randint(4, (16,), generator=g), None
    if name == "correlated_features":  # similarities spread over [-1, 1], so mining really selects
        centres = torch.randn(3, 4, generator=g, dtype=dtype)
        labels = torch.randint(3, (18,), generator=g)
        feats = centres[torch.randint(3, (18,), generator=g)] + 0.7 * torch.randn(18, 4, generator=g, dtype=dtype)
        return feats, labels, symmetric_aux(18, g, dtype)
    if name == "no_positives":  # every label distinct; pairs of near-duplicates so that something is mined
        base = torch.randn(4, 8, generator=g, dtype=dtype).repeat_interleave(2, dim=0)
        feats = base + 0.05 * torch.randn(8, 8, generator=g, dtype=dtype)
        return feats, torch.arange(8), symmetric_aux(8, g, dtype)
    if name == "one_class":  # no negatives anywhere
        return torch.randn(10, 8, generator=g, dtype=dtype), torch.full((10,), 3), symmetric_aux(10, g, dtype)
    if name == "many_classes":
        return torch.randn(24, 6, generator=g, dtype=dtype), torch.randint(15, (24,), generator=g), symmetric_aux(
            24, g, dtype)
    if name == "one_entity":
        return torch.randn(1, 8, generator=g, dtype=dtype), torch.tensor([2]), torch.tensor([[0.7]], dtype=dtype)
    if name == "identical_features":
        feats = torch.randn(1, 8, generator=g, dtype=dtype).repeat(6, 1)
        return feats, torch.tensor([0, 0, 1, 1, 2, 2]), symmetric_aux(6, g, dtype)
    raise KeyError(name)


CASES = ["several_classes", "several_classes_no_aux", "correlated_features", "no_positives", "one_class",
         "many_classes", "one_entity", "identical_features"]
PARAMS = {"source": PAPER_SOURCE_MS, "target": PAPER_TARGET_MS,
          "other": dict(alpha=2.0, beta=50.0, alpha_w=1.5, beta_w=0.5, base=0.3, margin=0.2)}


def value_and_grad(loss_fn, feats, labels, aux):
    feats = feats.clone().requires_grad_()
    loss = loss_fn(feats, labels, aux)
    loss.backward()
    return loss.detach(), feats.grad


def tolerances(dtype):
    return dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-11)


# ---------------------------------------------------------------- agreement with the reference
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("stage", list(PARAMS))
def test_loss_and_gradient_match_loop_reference(case, stage, dtype):
    feats, labels, aux = make_case(case, dtype)
    loss, grad = value_and_grad(MultiSimilarityLoss(**PARAMS[stage]), feats, labels, aux)
    expected_loss, expected_grad = value_and_grad(functools.partial(loop_ms_loss, **PARAMS[stage]), feats, labels, aux)
    assert loss.dtype == dtype and loss.shape == ()
    assert torch.isclose(loss, expected_loss, **tolerances(dtype))
    torch.testing.assert_close(grad, expected_grad, **tolerances(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_miner_matches_reference_masks(case, dtype):
    feats, labels, _ = make_case(case, dtype)
    a1, p, a2, n = SelfPairMultiSimilarityMiner(epsilon=0.1)(feats, labels)
    pos, neg = torch.zeros(len(feats), len(feats), dtype=torch.bool), torch.zeros(len(feats), len(feats),
                                                                                  dtype=torch.bool)
    pos[a1, p], neg[a2, n] = True, True
    expected_pos, expected_neg = loop_masks(feats, labels, margin=0.1)
    assert torch.equal(pos, expected_pos)
    assert torch.equal(neg, expected_neg)


def test_cases_exercise_mining():
    "The cases are not vacuous: some pairs are dropped by mining and some kept, self pairs included."
    feats, labels, _ = make_case("correlated_features", torch.float64)
    pos, neg = loop_masks(feats, labels, margin=0.1)
    same = labels[:, None] == labels[None, :]
    assert 0 < pos.sum() < same.sum() and 0 < neg.sum() < (~same).sum()
    feats, labels, _ = make_case("no_positives", torch.float64)
    pos, neg = loop_masks(feats, labels, margin=0.1)
    assert pos.diagonal().all() and neg.sum() == 8


# ---------------------------------------------------------------- special cases
@pytest.mark.parametrize("dtype", DTYPES)
def test_nothing_mined_gives_exactly_zero(dtype):
    feats = torch.eye(4, dtype=dtype, requires_grad=True)  # orthogonal, every label distinct
    loss = MultiSimilarityLoss(**PAPER_SOURCE_MS)(feats, torch.arange(4), torch.ones(4, 4, dtype=dtype))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(feats.grad, torch.zeros_like(feats))


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_entity_is_its_self_pair_constant(dtype):
    feats = torch.randn(1, 5, dtype=dtype, requires_grad=True)
    loss = MultiSimilarityLoss(alpha=4, beta=3, alpha_w=8)(feats, torch.tensor([0]), torch.tensor([[0.5]]))
    loss.backward()
    expected = math.log1p(math.exp(-4 * (1 - 0.5) + 8 * 0.5)) / 4
    assert math.isclose(loss.item(), expected, rel_tol=1e-6)
    assert feats.grad.abs().max() < 1e-6


def test_empty_batch_gives_zero():
    feats = torch.zeros(0, 8, requires_grad=True)
    loss = MultiSimilarityLoss(alpha=2, beta=5)(feats, torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0


def test_large_exponents_stay_finite():
    feats, labels, aux = make_case("several_classes", torch.float32)
    params = dict(alpha=2.0, beta=80.0, alpha_w=60.0, beta_w=60.0, base=0.5, margin=0.5)
    loss, grad = value_and_grad(MultiSimilarityLoss(**params), feats, labels, 2 * aux - 1)
    expected_loss, expected_grad = value_and_grad(functools.partial(loop_ms_loss, **params), feats.double(), labels,
                                                  (2 * aux - 1).double())
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert torch.isclose(loss.double(), expected_loss, rtol=1e-4)
    torch.testing.assert_close(grad.double(), expected_grad, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("label_dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64])
def test_labels_of_any_integer_dtype(label_dtype):
    feats, labels, aux = make_case("several_classes", torch.float64)
    loss = MultiSimilarityLoss(**PAPER_SOURCE_MS)
    expected = loss(feats, labels, aux)
    assert torch.equal(loss(feats, labels.to(label_dtype), aux), expected)
    assert torch.equal(loss(feats, labels.tolist(), aux), expected)


def test_aux_of_other_dtype_is_converted():
    feats, labels, aux = make_case("several_classes", torch.float32)
    ms = MultiSimilarityLoss(**PAPER_SOURCE_MS)
    loss = ms(feats, labels, aux.double())
    assert loss.dtype == torch.float32
    assert torch.isclose(loss, ms(feats, labels, aux))


# ---------------------------------------------------------------- input checks
def test_aux_shape_is_checked():
    feats, labels, _ = make_case("several_classes", torch.float32)
    for bad in (torch.zeros(16, 15), torch.zeros(16), torch.zeros(1, 16, 16)):
        with pytest.raises(ValueError, match=r"aux must be an \[n, n\] tensor .* n=16 .* got shape"):
            MultiSimilarityLoss(**PAPER_SOURCE_MS)(feats, labels, bad)


def test_labels_and_feats_are_checked():
    feats, loss = torch.randn(5, 3), MultiSimilarityLoss(alpha=2, beta=5)
    with pytest.raises(TypeError, match="integer class ids"):
        loss(feats, torch.zeros(5))
    with pytest.raises(ValueError, match=r"shape \[n\] = \[5\]"):
        loss(feats, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[n, d\]"):
        loss(torch.randn(5), torch.zeros(5, dtype=torch.long))


# ---------------------------------------------------------------- the module and the library
def test_module_holds_hyperparameters_and_is_reusable():
    "Built once and called on batch after batch (as the trainer does), it gives what a fresh loss gives on each."
    module = MultiSimilarityLoss(**PAPER_SOURCE_MS)
    assert (module.alpha, module.beta, module.alpha_w, module.beta_w, module.base, module.margin) == (4, 3, 8, 6, 0.5,
                                                                                                      0.1)
    assert isinstance(module, pml_losses.GenericPairLoss)
    for case in ("correlated_features", "one_entity", "several_classes_no_aux", "correlated_features"):
        feats, labels, aux = make_case(case, torch.float64)
        assert torch.equal(module(feats, labels, aux), MultiSimilarityLoss(**PAPER_SOURCE_MS)(feats, labels, aux))


def test_without_aux_equals_library_loss_on_the_same_pairs():
    "With zero weights the extension is the library's MS loss, given our mined pairs (self pairs included)."
    feats, labels, _ = make_case("correlated_features", torch.float64)
    pairs = SelfPairMultiSimilarityMiner(epsilon=0.1)(feats, labels)
    assert min(len(x) for x in pairs) > 1  # avoid the library's "at most one pair" shortcut
    library = pml_losses.MultiSimilarityLoss(alpha=2, beta=5, base=0.5)(feats, labels, indices_tuple=pairs)
    ours = MultiSimilarityLoss(alpha=2, beta=5, base=0.5, margin=0.1)(feats, labels)
    assert torch.isclose(ours, library, rtol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    feats, labels, aux = make_case("several_classes", torch.float32)
    loss = MultiSimilarityLoss(**PAPER_SOURCE_MS)
    cpu = loss(feats, labels, aux)
    gpu = loss(feats.cuda(), labels.cuda(), aux.cuda())
    assert gpu.device.type == "cuda"
    assert torch.isclose(gpu.cpu(), cpu, rtol=1e-4)


def test_benchmark_reports_both_timings():
    "Shape of the result only: speed is measured by `metricner bench`, never asserted in tests."
    result = benchmark_ms_loss(n=24, dim=8, n_classes=3, repeats=1)
    assert set(result) == {"vectorised_s", "loop_s", "speedup"}
    assert all(value > 0 for value in result.values())
