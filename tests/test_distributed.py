"""DDP on the CPU: two gloo processes on the loopback, started (and cleaned up) by the tests themselves."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from metricner.backbone import build_tiny_backbone
from metricner.distributed import torchrun_command

HERE = Path(__file__).parent
SMOKE = ['--source', 'pc', '--target', 'bc5cdr', '--setting', 'eg_ed', '--profile', 'smoke',
         '--set', 'source_train.progress=false', '--set', 'target_train.progress=false']


def run_processes(command: list[str], env: dict | None = None, timeout: int = 400) -> subprocess.CompletedProcess:
    "Run `command` in its own process group; on timeout the whole group (torchrun and its ranks) is killed."
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                               env={**os.environ, **(env or {})})
    try: out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def torchrun(script_or_module: list[str], *arguments, env=None, timeout=400) -> subprocess.CompletedProcess:
    command = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc-per-node=2', *script_or_module, *arguments]
    return run_processes(command, env, timeout)


@pytest.mark.slow
def test_one_step_over_two_ranks_equals_one_process(tmp_path):
    "CE + λ·MS with auxiliary weights: the same gradients and parameters as one process on the same global batch."
    tiny = build_tiny_backbone(tmp_path / 'tiny', words='aspirin ibuprofen gene protein lowers raises in patients'.split())
    result = torchrun([str(HERE / 'ddp_step_worker.py')], str(tiny), str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads((tmp_path / 'result.json').read_text())
    for case in ('whole batch of 8', 'passes of 4', 'passes of 3 (odd shares, an empty one)'):
        m = measured[case]
        assert m['ms_grad_effect'] > 0.05 * m['grad_scale'], case  # the MS term moves the gradient: the check is not vacuous
        assert m['grad_diff'] < 1e-5 * max(1.0, m['grad_scale']), (case, m)
        assert m['param_diff'] < 1e-6, (case, m)
        assert m['ce'][0] == pytest.approx(m['ce'][1], rel=1e-6) and m['ms'][0] == pytest.approx(m['ms'][1], rel=1e-6), (case, m)
    assert measured['evaluation'] == {'same_tags': True, 'same_scores': True}


def no_dropout_backbone(folder):
    "The tiny BERT with its dropout off: one process and N ranks then compute the same function, number for number."
    tiny = build_tiny_backbone(folder, words='aspirin ibuprofen gene protein lowers raises in patients'.split())
    config = json.loads((tiny / 'config.json').read_text())
    (tiny / 'config.json').write_text(json.dumps({**config, 'hidden_dropout_prob': 0.0, 'attention_probs_dropout_prob': 0.0}))
    return tiny


@pytest.mark.slow
def test_a_whole_stage_on_two_ranks_follows_one_process(tmp_path):
    "Six epochs of CE + λ·MS with dev evaluation and best-dev weights: the same history and test scores on 2 ranks as in one process."
    tiny = no_dropout_backbone(tmp_path / 'tiny')
    single = run_processes([sys.executable, str(HERE / 'ddp_stage_worker.py'), str(tiny), str(tmp_path)], {'OMP_NUM_THREADS': '1'})
    assert single.returncode == 0, single.stderr[-3000:]
    double = torchrun([str(HERE / 'ddp_stage_worker.py')], str(tiny), str(tmp_path))
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = (json.loads((tmp_path / f'stage-{n}.json').read_text()) for n in (1, 2))
    assert len(one['history']) == len(two['history']) == 6
    for a, b in zip(one['history'], two['history']):
        assert (a['ce'], a['ms']) == (pytest.approx(b['ce'], rel=1e-5, abs=1e-7), pytest.approx(b['ms'], rel=1e-5, abs=1e-7))
        assert (a['dev_f1'], a['best']) == (b['dev_f1'], b['best'])
    assert one['history'][0]['ms'] > 0.1  # the MS term is on
    assert one['test'] == two['test']


def test_torchrun_command_runs_metricner():
    assert torchrun_command(3, ['--seed', '1'])[-5:] == ['-m', 'metricner.cli', 'run', '--seed', '1']


@pytest.mark.slow
def test_smoke_run_on_two_ranks(data_dir, tmp_path):
    """A whole smoke run under torchrun: one record, by rank 0, with the single-process test F1; no partial files.

    The global batches and data order are the single-process ones; the one source of difference is dropout: rank r
    draws its masks from seed + r, and its windows are not the windows one process draws masks for, so the losses
    differ slightly (a few per cent here; without dropout they agree to float precision, as the test above shows).
    The smoke model is too small to tag anything (F1 0 in both), so this run checks the plumbing, not the scores."""
    env = {'METRICNER_CACHE': str(tmp_path / 'cache')}
    single = run_processes([sys.executable, '-m', 'metricner.cli', 'run', *SMOKE, '--out', str(tmp_path / 'one')], env)
    assert single.returncode == 0, single.stderr[-3000:]
    double = run_processes([sys.executable, '-m', 'metricner.cli', 'run', '--nproc', '2', *SMOKE, '--out', str(tmp_path / 'two')],
                           {'METRICNER_CACHE': str(tmp_path / 'cache2')})
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = (json.loads((tmp_path / name / 'metrics.json').read_text()) for name in ('one', 'two'))
    assert (one['environment']['ranks'], two['environment']['ranks']) == (1, 2)
    assert two['stage1']['cache'] == 'trained' and two['config'] == {**one['config'], 'out_dir': two['config']['out_dir']}
    # Same global batches, same data order; the losses differ only through the ranks' dropout masks (seed + rank)
    for stage in ('stage1', 'stage2'):
        for a, b in zip(one[stage]['history'], two[stage]['history']):
            assert a['ce'] == pytest.approx(b['ce'], rel=0.05), (stage, a, b)
    assert two['f1'] == one['f1']
    assert sorted(p.name for p in (tmp_path / 'two').iterdir() if p.name.startswith('.')) == []  # no partial files
    assert len(list((tmp_path / 'cache2' / 'stages').glob('*/stage.json'))) == 1  # one cache entry, written once


@pytest.mark.slow
def test_a_failing_rank_stops_the_run_without_a_record(data_dir, tmp_path):
    result = torchrun([str(HERE / 'ddp_crash_worker.py')], 'run', *SMOKE, '--out', str(tmp_path / 'run'),
                      env={'METRICNER_CACHE': str(tmp_path / 'cache')})
    assert result.returncode != 0
    assert 'rank 1 fails on purpose' in result.stderr
    assert not (tmp_path / 'run' / 'metrics.json').exists()
    assert not list((tmp_path / 'cache' / 'stages').glob('*/stage.json')) if (tmp_path / 'cache' / 'stages').exists() else True
