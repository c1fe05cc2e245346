"The byte dropout kernel: exact rates, uniform bytes, gradients, torch's semantics, and that a tagger uses it everywhere."
import json
import math

import pytest
import torch
import torch.nn.functional as F

from metricner.backbone import build_tiny_backbone
from metricner.tagger import (ByteDropoutMode, Tagger, TaggerConfig, bernoulli_positions, byte_attention, byte_dropout,
                              drop_mask, load_tagger, random_bytes, tagging_loss)
from metricner.units import TaggedUnit

N = 10_000_000


def within_5_se(mask: torch.Tensor, p: float) -> bool:
    return abs(mask.double().mean().item() - p) <= 5 * math.sqrt(p * (1 - p) / mask.numel())


def chi_square_p_value(b: torch.Tensor) -> float:
    "p-value of the chi-square test that the bytes are uniform over 0..255 (255 degrees of freedom)."
    counts = torch.bincount(b.reshape(-1).long(), minlength=256).double()
    expected = b.numel() / 256
    statistic = ((counts - expected) ** 2 / expected).sum()
    return float(torch.special.gammaincc(torch.tensor(127.5, dtype=torch.float64), statistic / 2))


@pytest.mark.parametrize('p', [0.1, 0.37, 0.5, 0.9, 1 / 3])
def test_drop_rate_is_p(p):
    torch.manual_seed(0)
    assert within_5_se(drop_mask((N,), p), p)


@pytest.mark.parametrize('biased', [25 / 256, 26 / 256])
def test_rate_check_catches_a_kernel_that_rounds_256p(biased):
    torch.manual_seed(0)
    assert not within_5_se(random_bytes(N) < round(256 * biased), 0.1)


def test_geometric_remainder_has_its_rate_and_stays_inside():
    torch.manual_seed(0)
    hits = bernoulli_positions(N, 0.002)
    assert within_5_se(torch.zeros(N, dtype=torch.bool).index_fill_(0, hits, True), 0.002)
    assert (hits[1:] > hits[:-1]).all() and hits[0] >= 0 and hits[-1] < N
    assert len(bernoulli_positions(10, 0.0)) == 0


def test_bytes_are_uniform_at_every_position_of_a_draw():
    torch.manual_seed(0)
    b = random_bytes(8 * 2_000_000).view(-1, 8)
    assert all(chi_square_p_value(b[:, i]) > 1e-5 for i in range(8))
    assert chi_square_p_value(torch.empty(2_000_000, dtype=torch.int32).random_().view(torch.uint8)) < 1e-100  # 31-bit draws fail


def test_drops_are_independent_of_neighbours():
    torch.manual_seed(0)
    m = drop_mask((N,), 0.37)
    both = (m[1:] & m[:-1]).double().mean().item()
    assert abs(both - 0.37 ** 2) <= 5 * math.sqrt(0.37 ** 2 * (1 - 0.37 ** 2) / (N - 1))


def test_gradient_is_mask_over_keep_probability():
    x = torch.randn(300, 200, requires_grad=True)
    g = torch.randn(300, 200)
    torch.manual_seed(3)
    y = byte_dropout(x, 0.37)
    y.backward(g)
    kept = y != 0
    assert torch.equal(y, torch.where(kept, x * (1 / 0.63), 0.0))
    assert torch.equal(x.grad, torch.where(kept, g * (1 / 0.63), 0.0))
    assert 0.3 < 1 - kept.float().mean().item() < 0.44


def test_same_semantics_as_torch_dropout():
    x = torch.randn(5, 7, 11)
    assert byte_dropout(x, 0.2, training=False) is x
    assert torch.equal(byte_dropout(x, 0.0), x)
    assert torch.equal(byte_dropout(x, 1.0), torch.zeros_like(x))
    with pytest.raises(ValueError, match='between 0 and 1'): byte_dropout(x, -0.1)
    for dtype in (torch.float64, torch.bfloat16, torch.float16):
        assert byte_dropout(x.to(dtype), 0.5).dtype == dtype
    torch.manual_seed(9); a = byte_dropout(x, 0.5)
    torch.manual_seed(9); b = byte_dropout(x, 0.5)
    assert torch.equal(a, b) and not torch.equal(a, byte_dropout(x, 0.5))


def test_byte_attention_is_sdpa_math_with_the_byte_mask():
    q, k, v = (torch.randn(2, 4, 9, 8, dtype=torch.float64) for _ in range(3))
    mask = torch.zeros(2, 1, 9, 9, dtype=torch.float64); mask[0, ..., 6:] = torch.finfo(torch.float64).min
    torch.manual_seed(4); out = byte_attention(q, k, v, mask, dropout_p=0.25)
    torch.manual_seed(4); dropped = drop_mask((2, 4, 9, 9), 0.25)
    probs = (q @ k.transpose(-2, -1) / math.sqrt(8) + mask).softmax(-1)
    assert torch.allclose(out, probs.masked_fill(dropped, 0) / 0.75 @ v)
    causal = byte_attention(q, k, v, None, 0.0, True)
    assert torch.equal(causal, F.scaled_dot_product_attention(q, k, v, is_causal=True))


def _tiny_tagger(tmp_path, kernel):
    torch.manual_seed(0)
    return Tagger.build(build_tiny_backbone(tmp_path / 'tiny'), ['O', 'B-X', 'I-X'], mode='adapter', dropout_kernel=kernel)


def _batch(tagger):
    units = [TaggedUnit(str(k), ['the', 'protein', 'kinase'] * (k + 2), [], ['O', 'B-X', 'I-X'] * (k + 2), []) for k in range(4)]
    return next(tagger.batches(tagger.encode(units)[0], 4))


def _profiled_step_ops(tagger, batch) -> set[str]:
    from torch.profiler import profile
    tagger.train()
    with profile() as prof:
        logits, _ = tagger(batch.input_ids, batch.attention_mask)
        tagging_loss(logits, batch.labels).backward()
    return {e.key for e in prof.key_averages()}


def test_the_byte_kernel_replaces_every_dropout_of_a_training_step(tmp_path):
    fast, slow = _tiny_tagger(tmp_path, 'bytes'), _tiny_tagger(tmp_path, 'torch')
    assert fast.config.dropout_kernel == 'bytes' and TaggerConfig('x', ['O']).dropout_kernel == 'bytes'  # the default
    batch = _batch(fast)
    assert 'aten::bernoulli_' not in _profiled_step_ops(fast, batch)  # the attention probabilities' dropout included
    assert 'aten::bernoulli_' in _profiled_step_ops(slow, batch)
    with ByteDropoutMode() as mode: fast.encoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    assert mode.drawn == 1 + 3 * fast.encoder.config.num_hidden_layers  # embeddings; per layer attention and two hidden


def test_eval_outputs_are_the_same_under_both_kernels_and_training_is_reproducible(tmp_path):
    fast, slow = _tiny_tagger(tmp_path, 'bytes'), _tiny_tagger(tmp_path, 'torch')
    batch = _batch(fast)
    fast.eval(); slow.eval()
    with torch.no_grad():
        assert torch.equal(fast(batch.input_ids, batch.attention_mask)[0], slow(batch.input_ids, batch.attention_mask)[0])
    fast.train()
    torch.manual_seed(5); a = fast(batch.input_ids, batch.attention_mask)[0]
    torch.manual_seed(5); b = fast(batch.input_ids, batch.attention_mask)[0]
    assert torch.equal(a, b) and not torch.equal(a, fast(batch.input_ids, batch.attention_mask)[0])


def test_saved_taggers_record_the_kernel_and_older_ones_load_as_torch(tmp_path):
    tagger = _tiny_tagger(tmp_path, 'bytes')
    folder = tagger.save(tmp_path / 'saved', include_backbone=True)
    assert load_tagger(folder).config.dropout_kernel == 'bytes'
    meta = json.loads((folder / 'config.json').read_text())
    del meta['config']['dropout_kernel']  # as saved before the field existed
    (folder / 'config.json').write_text(json.dumps(meta))
    assert load_tagger(folder).config.dropout_kernel == 'torch'
    assert tagger.retarget(['O', 'B-Y', 'I-Y']).config.dropout_kernel == 'bytes'
