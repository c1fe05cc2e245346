"""The grid in parallel: two workers on one small smoke grid share the stage cache; each stage-1 model is trained once."""
import json
import shlex

import pytest

from metricner.grid import grid_commands, run_grid, run_folder, stage1_group

CELLS = [dict(source='pc', target='bc5cdr', setting=setting, seed=42, profile='smoke')
         for setting in ('direct_transfer', 'ed', 'eg', 'eg_ed')]  # two stage-1 models, each shared by two cells


@pytest.mark.slow
def test_two_workers_train_each_stage1_model_once(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv('METRICNER_CACHE', str(tmp_path / 'cache'))  # the workers inherit it
    root = tmp_path / 'runs'
    messages = []
    assert run_grid(CELLS, root=root, jobs=2, log=messages.append) == CELLS
    records = [json.loads((run_folder(cell, root) / 'metrics.json').read_text()) for cell in CELLS]
    trained = {}
    for record in records: trained.setdefault(record['stage1']['key'], []).append(record['stage1']['cache'])
    assert len(trained) == 2 and all(sorted(uses) == ['reused', 'trained'] for uses in trained.values()), trained
    assert len(list((tmp_path / 'cache' / 'stages').glob('*/stage.json'))) == 2  # two complete entries
    assert not [p for p in tmp_path.rglob('*partial*')]  # nothing left half-written, in the cache or the records
    assert [m for m in messages if m.startswith('queued')] == [f'queued {run_folder(c, root)}' for c in CELLS]  # each cell once
    assert run_grid(CELLS, root=root, jobs=2, log=messages.append) == []  # all done: nothing runs again


def test_commands_put_stage1_producers_first(tmp_path):
    commands = grid_commands(CELLS[::-1], tmp_path)  # consumers listed before their producers
    settings = [shlex.split(c)[shlex.split(c).index('--setting') + 1] for c in commands]
    assert settings == ['eg_ed', 'ed', 'eg', 'direct_transfer']  # the first cell of each model first, then the rest in order
    assert stage1_group(CELLS[0]) == stage1_group(CELLS[1]) != stage1_group(CELLS[2]) == stage1_group(CELLS[3])
    assert all(shlex.split(c)[:2] == ['metricner', 'run'] and '--out' in c for c in commands)
