"""One rank of the two-process equivalence check (started by tests/test_distributed.py through torchrun).

Each case runs one optimizer step of CE + λ·MS (entity grouping, with auxiliary similarities) on a global batch split
over the ranks, and rank 0 repeats it in one process on the same windows; then the sharded evaluation is compared with
the single-process one. Rank 0 writes what it measured to OUT/result.json."""
import json
import random
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from metricner.distributed import World, current_world, data_parallel, pass_shares
from metricner.events import AuxSimilarity
from metricner.losses import PAPER_SOURCE_MS, MultiSimilarityLoss
from metricner.tagger import Tagger
from metricner.trainers import TrainConfig, TypeGrouping, _step, evaluate, optimizer_for
from metricner.units import TaggedUnit
from metricner.windows import collate

LABELS = ['O', 'B-Drug', 'I-Drug', 'B-Gene', 'I-Gene']
SUBJECTS = {'aspirin': 'Drug', 'ibuprofen': 'Drug', 'gene': 'Gene', 'protein': 'Gene'}


def toy_units(n, seed=0):
    "Sentences with two entity mentions each (a drug or gene subject and object), so that every pass holds entities of both types."
    rng, units = random.Random(seed), []
    for i in range(n):
        words = [rng.choice(list(SUBJECTS)), rng.choice(['lowers', 'raises']), rng.choice(list(SUBJECTS)), 'in', 'patients']
        tags = ['B-' + SUBJECTS[w] if w in SUBJECTS else 'O' for w in words]
        spans, at = [], 0
        for w in words: spans.append((at, at + len(w))); at += len(w) + 1
        units.append(TaggedUnit(f'd{i}', words, spans, tags, ['O'] * len(words)))
    return units


def step_gradients(tiny, units, windows_idx, micro, world, ms_weight):
    "Gradients and parameters after one `_step` on the windows `windows_idx`, split over `world` (one process: World())."
    tagger = Tagger.build(tiny, labels=LABELS, mode='full', seed=0).eval()  # eval: no dropout, so the check is exact arithmetic
    config = TrainConfig(lr=1e-3, batch_size=len(windows_idx), micro_batch_size=micro, ms_weight=ms_weight, progress=False)
    windows, _ = tagger.encode(units)
    step = [windows[i] for i in windows_idx]
    batch = lambda share: collate(share, tagger.tokenizer.pad_token_id)
    parts = [batch(s) if s else None for s in pass_shares(step, micro, world)]
    stand_in = batch(step[:1]) if None in parts else None
    records = AuxSimilarity(['aspirin', 'ibuprofen', 'gene', 'protein', 'aspirin'], torch.randn(5, 8, generator=torch.Generator().manual_seed(1)))
    model = data_parallel(tagger, world)
    ce, ms = _step(tagger, parts, units, config, optimizer_for(tagger, config), TypeGrouping(records),
                   MultiSimilarityLoss(**PAPER_SOURCE_MS), world, model, stand_in)
    grads = {n: p.grad.detach().clone() for n, p in tagger.named_parameters() if p.grad is not None}
    params = {n: p.detach().clone() for n, p in tagger.named_parameters()}
    return ce, ms, grads, params, tagger


def largest_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys(), (sorted(a.keys() ^ b.keys()))
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def main(tiny, out):
    dist.init_process_group('gloo')
    world = current_world()
    units = toy_units(12)
    cases = {'whole batch of 8': (list(range(8)), None), 'passes of 4': (list(range(8)), 4),
             'passes of 3 (odd shares, an empty one)': (list(range(7)), 3)}
    results = {}
    for name, (idx, micro) in cases.items():
        ce, ms, grads, params, tagger = step_gradients(tiny, units, idx, micro or len(idx), world, 1.2)
        if world.main:
            ce1, ms1, grads1, params1, _ = step_gradients(tiny, units, idx, micro or len(idx), World(), 1.2)
            _, _, grads_ce, _, _ = step_gradients(tiny, units, idx, micro or len(idx), World(), 0.0)
            results[name] = {'ce': [ce, ce1], 'ms': [ms, ms1], 'grad_diff': largest_difference(grads, grads1),
                             'param_diff': largest_difference(params, params1),
                             'ms_grad_effect': largest_difference(grads1, grads_ce),
                             'grad_scale': max(float(g.abs().max()) for g in grads1.values())}
    sharded, predicted = evaluate(tagger, units, batch_size=3, world=world)
    if world.main:
        single, predicted1 = evaluate(tagger, units, batch_size=3, world=World())
        results['evaluation'] = {'same_tags': predicted == predicted1, 'same_scores': sharded == single}
        Path(out, 'result.json').write_text(json.dumps(results, indent=1))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == '__main__': main(sys.argv[1], sys.argv[2])
