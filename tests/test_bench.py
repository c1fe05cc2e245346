"Behaviour of the benchmark's parts; speed and memory figures are printed by `metricner bench`, never asserted here."
import json

import numpy as np
import pytest
import torch

from metricner.bench import (BENCH_FLOORS, ModelShape, PeakRSS, attention_flops_per_token, dense_flops_per_token,
                             format_benchmark, forward_flops, meets_floors, naive_padding_efficiency, padded_to,
                             spread_sample, time_inference, time_training, training_flops, utilisation)
from metricner.units import TaggedUnit
from metricner.backbone import build_tiny_backbone
from metricner.windows import collate, length_batches, padding_efficiency, sequential_batches
from metricner.tagger import Tagger

TIMING_KEYS = {'batches', 'real_tokens', 'computed_tokens', 'seconds', 'tokens_per_s', 'lengths'}


def test_flop_counts_match_a_hand_computation():
    # N=2 layers, h=8, i=32, 3 labels, adapter reduction 4, one window of 5 tokens.
    shape = ModelShape(layers=2, hidden=8, intermediate=32, labels=3, adapter_reduction=4)
    dense, adapter, attention, head = 2 * (4 * 64 + 2 * 8 * 32), 2 * 2 * 8 * 2, 2 * 2 * 5 * 8, 2 * 8 * 3
    assert (dense, adapter, attention, head) == (1536, 64, 160, 48)
    assert dense_flops_per_token(8, 32) == dense and attention_flops_per_token(8, 5) == attention
    forward = 5 * (2 * (dense + adapter + attention) + head)
    assert forward_flops(shape, [5]) == forward == 17840
    # adapter backward: layer 2 activation gradients (dense 1x, attention 2x), adapters 2x but the first 1.5x, head 2x
    backward = 5 * (dense + 2 * attention + 3.5 * adapter + 2 * head)
    assert training_flops(shape, [5], 'adapter') == forward + backward == 17840 + 10880
    assert training_flops(shape, [5], 'full') == 3 * forward
    with pytest.raises(ValueError, match='mode'): training_flops(shape, [5], 'lora')


def test_flop_count_of_minilm_is_plausible():
    minilm = ModelShape(layers=6, hidden=384, intermediate=1536, labels=15, adapter_reduction=16)
    per_token = forward_flops(minilm, [318]) / 318
    assert 21.2e6 < per_token < 24.5e6  # 21.2 MFLOPs dense + attention at L=318 + adapters and head
    assert 1.5 < training_flops(minilm, [318]) / forward_flops(minilm, [318]) < 2.0  # frozen backbone: no weight gradients


def test_model_shape_of_a_tagger_matches_its_parameters(tmp_path):
    tagger = Tagger.build(build_tiny_backbone(tmp_path / 'tiny'), ['O', 'B-X', 'I-X'], mode='adapter')
    shape = ModelShape.of(tagger)
    assert (shape.layers, shape.hidden, shape.intermediate, shape.labels) == (2, 32, 64, 3)
    bottleneck = shape.hidden // shape.adapter_reduction
    adapter_weights = shape.layers * 2 * shape.hidden * bottleneck
    trainable_matrices = sum(p.numel() for p in tagger.parameters() if p.requires_grad and p.ndim == 2)
    assert trainable_matrices == adapter_weights + shape.hidden * shape.labels


def test_grouped_batching_pads_less_than_naive():
    lengths = np.random.default_rng(1).integers(10, 513, 1000).tolist()
    grouped = padding_efficiency(lengths, length_batches(lengths, 16, shuffle=True))
    sequential = padding_efficiency(lengths, sequential_batches(len(lengths), 16))
    assert grouped >= sequential >= naive_padding_efficiency(lengths, 512)
    assert naive_padding_efficiency([256, 512], 512) == 0.75


def test_spread_sample_spans_the_list():
    assert spread_sample(list(range(10)), 3) == [0, 4, 9]
    assert spread_sample([1, 2], 5) == [1, 2]


def _tiny_setup(tmp_path, mode):
    tagger = Tagger.build(build_tiny_backbone(tmp_path / 'tiny'), ['O', 'B-X', 'I-X'], mode=mode)
    units = [TaggedUnit(str(k), ['the', 'protein', 'kinase'] * (k + 1), [(0, 1)] * 3 * (k + 1),
                        ['O', 'B-X', 'I-X'] * (k + 1), ['O'] * 3 * (k + 1)) for k in range(10)]
    windows, _ = tagger.encode(units)
    return tagger, windows


@pytest.mark.parametrize('mode', ['adapter', 'full'])
def test_throughput_measurement_on_a_tiny_backbone(tmp_path, mode):
    tagger, windows = _tiny_setup(tmp_path, mode)
    lengths = [len(w) for w in windows]
    train = time_training(tagger, windows, length_batches(lengths, 4, shuffle=True))
    infer = time_inference(tagger, windows, length_batches(lengths, 4))
    for timing in (train, infer):
        assert set(timing) == TIMING_KEYS
        assert timing['real_tokens'] == sum(lengths) and timing['seconds'] > 0 and timing['tokens_per_s'] > 0
    figures = utilisation(train, ModelShape.of(tagger), peak_gflops=50.0, training=True, mode=mode)
    assert {'tokens_per_s', 'mflops_per_real_token', 'model_gflops', 'mfu'} <= set(figures)
    assert all(figures[k] > 0 for k in ('tokens_per_s', 'mflops_per_real_token', 'model_gflops', 'mfu'))
    assert tagger.training  # time_inference restores the mode it found


def test_naive_batches_are_padded_and_unmasked(tmp_path):
    tagger, windows = _tiny_setup(tmp_path, 'full')
    batch = collate(windows[:3], tagger.tokenizer.pad_token_id)
    naive = padded_to(batch, tagger.max_length, tagger.tokenizer.pad_token_id, mask=False)
    assert naive.input_ids.shape == (3, tagger.max_length) and bool(naive.attention_mask.all())
    assert torch.equal(naive.input_ids[:, :batch.input_ids.shape[1]], batch.input_ids)
    masked = padded_to(batch, tagger.max_length, tagger.tokenizer.pad_token_id)
    assert masked.real_tokens == batch.real_tokens
    timing = time_inference(tagger, windows, sequential_batches(len(windows), 4), tagger.max_length, mask=False)
    assert timing['real_tokens'] == sum(map(len, windows))  # real tokens, although nothing is masked
    assert timing['computed_tokens'] == len(windows) * tagger.max_length


def test_peak_rss_sees_torch_allocations():
    with PeakRSS() as peak: block = torch.ones(16 * 2 ** 20)  # 64 MiB written by torch, invisible to tracemalloc
    del block
    if peak.peak_mib is None: pytest.skip('no /proc/self/statm on this platform')
    assert peak.peak_mib > 50


def _fake_result():
    result = {'matmul_gflops': 100.0, 'padding_efficiency': 0.98, 'train_tokens_per_s': 500.0, 'train_mfu': 0.2,
              'infer_tokens_per_s': 2500.0, 'infer_mfu': 0.6, 'ms_loss_speedup_vs_loop': 20.0,
              'aux_similarity_seconds': 4.0, 'aux_similarity_peak_mib': 120.0,
              'naive': {'padding_efficiency': 0.62, 'train_tokens_per_s': 300.0, 'train_mfu': 0.12,
                        'infer_tokens_per_s': 1500.0, 'infer_mfu': 0.36},
              'floors': {k: list(v) for k, v in BENCH_FLOORS.items()},
              'config': {'quick': True, 'torch': '2.x', 'threads': 2, 'backbone': 'minilm', 'naive_padded_length': 512}}
    result['meets_floors'] = meets_floors(result)
    return result


def test_meets_floors():
    met = meets_floors(_fake_result())
    assert met == {'padding_efficiency': True, 'train_mfu': False, 'infer_mfu': True, 'aux_similarity_seconds': True}
    assert meets_floors({})['train_mfu'] is None


def test_format_benchmark_on_a_fake_result():
    table = format_benchmark(_fake_result())
    lines = table.splitlines()
    assert lines[0].startswith('metricner bench --quick')
    train_mfu = next(l for l in lines if l.startswith('train_mfu'))
    assert '0.2' in train_mfu and '>= 0.35' in train_mfu and train_mfu.rstrip().endswith('NO')
    assert 'naive setting' in table and 'padded to 512' in table
    ratio_row = next(l for l in lines if l.startswith('train_tokens_per_s') and l.rstrip().endswith('1.67'))
    assert '300' in ratio_row
    assert format_benchmark({'matmul_gflops': 1.0})  # a partial result still prints


@pytest.mark.parametrize('mode', ['adapter', 'full'])
def test_real_training_timing_counts_steps_and_tokens_of_train_stage(tmp_path, mode):
    from types import SimpleNamespace
    from metricner.bench import time_real_training
    config = SimpleNamespace(backbone=str(build_tiny_backbone(tmp_path / 'tiny')), mode=mode, max_length=None, seed=1,
                             source_train=dict(batch_size=4, micro_batch_size=2))
    corpus = SimpleNamespace(labels=['O', 'B-X', 'I-X'])
    units = [TaggedUnit(str(k), ['the', 'protein', 'kinase'] * (k + 1), [], ['O', 'B-X', 'I-X'] * (k + 1), []) for k in range(12)]
    lengths = [len(w) for w in Tagger.build(config.backbone, corpus.labels).encode(units)[0]]
    first = time_real_training('bytes', config, corpus, units, steps=1)
    assert (first['steps'], first['windows']) == (1, 4) and 0 < first['real_tokens'] <= 4 * max(lengths)
    assert first['operators']['top_ops'] and 'aten::bernoulli_' not in first['operators']['top_ops']
    epoch = time_real_training('torch', config, corpus, units)
    assert (epoch['steps'], epoch['windows'], epoch['real_tokens']) == (3, 12, sum(lengths)) and epoch['seconds'] > 0
    with pytest.raises(ValueError, match='only 3 steps'): time_real_training('bytes', config, corpus, units, steps=2)


def test_epoch_benchmark_times_the_mode_asked_for(monkeypatch):
    "`--mode full` reaches the real epoch's configuration and the synthetic rate beside it; no mode keeps the profile's."
    from types import SimpleNamespace
    import metricner.bench as bench
    asked = {}
    def setup(data_dir, profile, source, mode=None):
        asked['setup'] = mode
        return SimpleNamespace(mode=mode or 'adapter', backbone=None, max_length=512, seed=42,
                               source_train=dict(batch_size=64, micro_batch_size=16)), None, []
    def synthetic(data_dir, batches, mode='adapter'):
        asked['synthetic'] = mode
        return {'torch': 1.0, 'bytes': 1.0}
    monkeypatch.setattr(bench, 'real_training_setup', setup)
    monkeypatch.setattr(bench, 'synthetic_training_rates', synthetic)
    monkeypatch.setattr(bench, 'time_real_training', lambda kernel, config, corpus, units, steps: {'kernel': kernel})
    monkeypatch.setattr(bench, 'time_dropout_variants', lambda repeats: {})
    result = bench.run_epoch_benchmark(steps=1, progress=False, mode='full')
    assert asked == {'setup': 'full', 'synthetic': 'full'} and result['config']['mode'] == 'full'
    assert bench.run_epoch_benchmark(steps=1, progress=False)['config']['mode'] == 'adapter' and asked['setup'] is None


def test_bench_command_passes_the_mode_to_the_epoch_benchmark(monkeypatch, capsys):
    import metricner.bench as bench
    from metricner.cli import build_parser
    seen = {}
    monkeypatch.setattr(bench, 'run_epoch_benchmark', lambda **options: seen.update(options) or {'config': {}})
    args = build_parser().parse_args(['bench', '--epoch', '--steps', '2', '--mode', 'full', '--json'])
    assert args.run(args) == 0 and (seen['mode'], seen['steps']) == ('full', 2)
    assert json.loads(capsys.readouterr().out) == {'config': {}}
    with pytest.raises(SystemExit): build_parser().parse_args(['bench', '--epoch', '--mode', 'half'])
