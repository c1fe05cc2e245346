"""A whole training stage (epochs, dev evaluation, early stopping, best-dev weights) with CE + λ·MS, on however many
ranks it is started with (plain `python`: one process; torchrun: its ranks). Rank 0 writes the history and the test
scores to OUT/stage-RANKS.json. The backbone and the head have no dropout, so one process and N ranks compute the same
function and the histories can be compared number for number."""
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from ddp_step_worker import LABELS, toy_units
from metricner.distributed import current_world, launched_by_torchrun
from metricner.events import AuxSimilarity
from metricner.losses import PAPER_SOURCE_MS, MultiSimilarityLoss
from metricner.tagger import Tagger
from metricner.trainers import TrainConfig, TypeGrouping, evaluate, train_stage


def main(tiny, out):
    if launched_by_torchrun(): dist.init_process_group('gloo')
    torch.set_num_threads(1)
    world = current_world()
    units = toy_units(40)
    train, dev, test = units[:24], units[24:32], units[32:]
    records = AuxSimilarity(['aspirin', 'ibuprofen', 'gene', 'protein', 'aspirin'], torch.randn(5, 8, generator=torch.Generator().manual_seed(1)))
    tagger = Tagger.build(tiny, labels=LABELS, mode='full', seed=0, dropout=0.0)
    config = TrainConfig(lr=3e-3, batch_size=8, micro_batch_size=4, max_epochs=6, patience=6, ms_weight=1.2, progress=False)
    tagger, history, _ = train_stage(tagger, train, dev, config, entities=TypeGrouping(records), loss=MultiSimilarityLoss(**PAPER_SOURCE_MS))
    scores, _ = evaluate(tagger, test)
    if world.main: Path(out, f'stage-{world.size}.json').write_text(json.dumps({'history': history, 'test': scores}))
    if launched_by_torchrun(): dist.destroy_process_group()


if __name__ == '__main__': main(sys.argv[1], sys.argv[2])
