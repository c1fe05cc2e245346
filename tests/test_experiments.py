"Experiments end to end on the smoke profile (tiny local BERT, real corpus slices): settings, cache, resume, CLI, papermill."
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from metricner import experiments
from metricner.encoder import build_tiny_backbone
from metricner.experiments import (SETTINGS, ExperimentConfig, StageCache, config_from_parameters, run_experiment)

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def isolated(tmp_path, monkeypatch, data_dir):
    "A fresh cache for each test; the real corpora."
    monkeypatch.setenv('METRICNER_CACHE', str(tmp_path / 'cache'))
    monkeypatch.setenv('METRICNER_DATA', str(data_dir))
    return tmp_path


def smoke(tmp_path, **overrides):
    values = dict(target='bc5cdr', source='pc', setting='direct_transfer', profile='smoke', out_dir=str(tmp_path / 'run'))
    return ExperimentConfig(**{**values, **overrides})


@pytest.mark.parametrize('setting', SETTINGS)
def test_every_setting_writes_a_complete_record(isolated, setting):
    record = run_experiment(smoke(isolated, setting=setting), StageCache(isolated / 'stages'))
    written = json.loads((isolated / 'run' / 'metrics.json').read_text())
    assert written['f1'] == record['f1'] and 0 <= record['f1'] <= 1
    assert written['config']['setting'] == setting and written['config']['target'] == 'bc5cdr'
    assert written['config']['profile'] == 'smoke' and written['seeds'] == {'seed': 42}
    assert written['version'] and 'commit' in written['git'] and written['timings_s']['total'] > 0
    assert (written['stage1'] is None) == (setting in ('target_only', 'oracle'))
    assert (written['pseudo_labels'] is None) == (setting not in ('ed', 'eg_ed'))
    assert 'gold_source_like' in written['source_false_positives']  # BC5CDR diseases
    assert ('source_model' in written['source_false_positives']) == (written['stage1'] is not None)
    few_shot = written['data']['train'].get('few_shot')
    assert (few_shot is None) == (setting == 'oracle')
    if setting in ('eg', 'eg_ed'):
        assert written['stage1']['aux_similarity']['records'] > 0
        assert any(h['ms'] > 0 for h in written['stage1']['history'])


@pytest.mark.parametrize('events', ['concat', 'sentenc'])
def test_both_event_paradigms(isolated, events):
    record = run_experiment(smoke(isolated, setting='eg', events=events), StageCache(isolated / 'stages'))
    assert record['config']['events'] == events and record['stage1']['aux_similarity']['entities_with_records'] > 0


def test_same_seed_same_metrics(isolated):
    first = run_experiment(smoke(isolated, setting='ed'), StageCache(isolated / 'a'))
    second = run_experiment(smoke(isolated, setting='ed'), StageCache(isolated / 'b'))
    assert second['stage1']['cache'] == 'trained'  # really trained twice
    assert [h['dev_f1'] for h in first['stage2']['history']] == [h['dev_f1'] for h in second['stage2']['history']]
    assert first['per_type'] == second['per_type'] and first['pseudo_labels'] == second['pseudo_labels']


def test_stage_cache_reuse_and_invalidation(isolated):
    cache = StageCache(isolated / 'stages')
    first = run_experiment(smoke(isolated), cache)
    reused = run_experiment(smoke(isolated, setting='ed'), cache)  # same stage 1, another setting
    assert first['stage1']['cache'] == 'trained' and reused['stage1']['cache'] == 'reused'
    assert reused['stage1']['key'] == first['stage1']['key']
    changed = run_experiment(smoke(isolated, source_train={'lr': 1e-3}), cache)  # another stage-1 input
    assert changed['stage1']['cache'] == 'trained' and changed['stage1']['key'] != first['stage1']['key']
    other_seed = run_experiment(smoke(isolated, seed=7), cache)
    assert other_seed['stage1']['cache'] == 'trained'


def test_corpus_change_invalidates_the_cache(isolated, data_dir):
    "The key covers the source files' contents: editing one file retrains."
    import shutil
    source = isolated / 'src'
    for split in ('train', 'devel'):
        (source / split).mkdir(parents=True)
        for f in sorted((data_dir / 'bionlp-st-2013-pc' / split).glob('PMID-1*'))[:9]: shutil.copy(f, source / split)
    cache = StageCache(isolated / 'stages')
    config = dict(source=f'standoff:{source}', source_exclude_types=['Simple_chemical'])
    assert run_experiment(smoke(isolated, **config), cache)['stage1']['cache'] == 'trained'
    assert run_experiment(smoke(isolated, **config), cache)['stage1']['cache'] == 'reused'
    txt = sorted((source / 'train').glob('*.txt'))[0]
    txt.write_text(txt.read_text() + ' ')
    assert run_experiment(smoke(isolated, **config), cache)['stage1']['cache'] == 'trained'


def test_corrupt_cache_entry_is_rebuilt(isolated):
    cache = StageCache(isolated / 'stages')
    key = run_experiment(smoke(isolated), cache)['stage1']['key']
    (isolated / 'stages' / key / 'tagger' / 'tagger.safetensors').write_bytes(b'not a safetensors file')
    messages = []
    record = run_experiment(smoke(isolated), StageCache(isolated / 'stages', log=messages.append))
    assert record['stage1']['cache'] == 'trained'
    assert any('partial or corrupt' in m for m in messages)
    (isolated / 'stages' / key / 'stage.json').unlink()  # a partial entry (no stage.json) is not used either
    assert run_experiment(smoke(isolated), StageCache(isolated / 'stages'))['stage1']['cache'] == 'trained'


def test_interrupted_run_resumes_from_its_finished_stage(isolated, monkeypatch):
    cache = StageCache(isolated / 'stages')
    real = experiments.train_stage
    calls = []
    def crash_in_stage_two(*args, **kwargs):
        calls.append(kwargs.get('description', ''))
        if kwargs.get('description', '').startswith('stage 2'): raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(experiments, 'train_stage', crash_in_stage_two)
    (isolated / 'run').mkdir()
    (isolated / 'run' / 'metrics.json').write_text('{"an": "older run"}')  # replaced, never left beside new files
    with pytest.raises(KeyboardInterrupt):
        run_experiment(smoke(isolated, setting='eg_ed'), cache)
    assert not (isolated / 'run' / 'metrics.json').exists()  # no record that looks complete
    monkeypatch.setattr(experiments, 'train_stage', real)
    record = run_experiment(smoke(isolated, setting='eg_ed'), cache)
    assert record['stage1']['cache'] == 'reused' and (isolated / 'run' / 'metrics.json').exists()


def test_code_fingerprint_covers_the_modules_that_decide_results(tmp_path):
    package = tmp_path / 'metricner'
    package.mkdir()
    for path in Path(experiments.__file__).parent.glob('*.py'): (package / path.name).write_bytes(path.read_bytes())
    before = experiments.code_fingerprint(package)
    assert before == experiments.code_fingerprint()
    (package / 'report.py').write_text('# a report change\n', encoding='utf-8')
    assert experiments.code_fingerprint(package) == before
    (package / 'trainers.py').write_text((package / 'trainers.py').read_text(encoding='utf-8') + '\n# a change\n', encoding='utf-8')
    assert experiments.code_fingerprint(package) != before


def test_device_is_checked_before_training(isolated):
    with pytest.raises(ValueError, match='unknown device'):
        config_from_parameters({'target': 'bc5cdr', 'profile': 'smoke', 'device': 'gpu'})
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match='no CUDA GPU'):
            config_from_parameters({'target': 'bc5cdr', 'profile': 'smoke', 'device': 'cuda'})
    assert config_from_parameters({'target': 'bc5cdr', 'profile': 'smoke'}).device == 'auto'  # the record keeps 'auto'


def compare_devices(tmp_path, first: str, second: str) -> tuple[dict, dict]:
    "EG+ED smoke runs on two devices, with a tiny local text encoder for the event sentences."
    encoder = build_tiny_backbone(tmp_path / 'text-encoder')
    runs = [run_experiment(smoke(tmp_path, setting='eg_ed', device=device, event_encoder=str(encoder), out_dir=str(tmp_path / name)),
                           StageCache(tmp_path / f'stages-{name}')) for name, device in (('a', first), ('b', second))]
    a, b = runs
    assert a['stage1']['aux_similarity'] == b['stage1']['aux_similarity']
    assert a['stage1']['history'][0]['ce'] == pytest.approx(b['stage1']['history'][0]['ce'], rel=1e-2)  # float rounding only
    assert a['stage1']['history'][0]['ms'] == pytest.approx(b['stage1']['history'][0]['ms'], rel=1e-2)
    return a, b


def test_the_device_comparison_holds_on_one_device(isolated):
    a, b = compare_devices(isolated, 'cpu', 'cpu')
    assert a['environment']['device'] == 'cpu' and a['environment']['gpu'] is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_runs_on_the_gpu_as_on_the_cpu(isolated):
    gpu, cpu = compare_devices(isolated, 'cuda', 'cpu')
    assert gpu['environment']['device'] == 'cuda' and gpu['environment']['gpu']


def test_bad_parameters_fail_before_training():
    with pytest.raises(ValueError, match="did you mean 'setting'"):
        config_from_parameters({'settings': 'eg'})
    with pytest.raises(ValueError, match='both are'):
        config_from_parameters({'target': 'chemdner', 'source': 'chemdner', 'setting': 'ed'})
    with pytest.raises(ValueError, match="unknown profile 'gpu'"):
        config_from_parameters({'profile': 'gpu'})


def test_cli_run(isolated):
    out = isolated / 'cli'
    result = subprocess.run([str(BIN / 'metricner'), 'run', '--source', 'pc', '--target', 'bc5cdr', '--setting', 'target_only',
                             '--profile', 'smoke', '--seed', '3', '--out', str(out), '--set', 'target_train.max_epochs=1'],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads((out / 'metrics.json').read_text())
    assert record['config']['seed'] == 3 and record['config']['target_train']['max_epochs'] == 1
    assert len(record['stage2']['history']) == 1
    bad = subprocess.run([str(BIN / 'metricner'), 'run', '--setting', 'eg', '--source', 'chemdner', '--target', 'chemdner'],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and 'both are' in bad.stderr


def test_papermill_parameters_reach_the_run(isolated):
    out = isolated / 'pm'
    result = subprocess.run([str(BIN / 'papermill'), str(ROOT / 'nbs' / 'run_experiment.ipynb'), str(isolated / 'executed.ipynb'),
                             '-p', 'target', 'bc5cdr', '-p', 'source', 'pc', '-p', 'setting', 'ed', '-p', 'profile', 'smoke',
                             '-p', 'seed', '5', '-p', 'out_dir', str(out), '--cwd', str(ROOT / 'nbs')],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((out / 'metrics.json').read_text())
    assert record['config']['target'] == 'bc5cdr' and record['config']['setting'] == 'ed' and record['config']['seed'] == 5
    executed = json.loads((isolated / 'executed.ipynb').read_text())
    assert executed['metadata']['papermill']['parameters']['target'] == 'bc5cdr'
    misspelt = subprocess.run([str(BIN / 'papermill'), str(ROOT / 'nbs' / 'run_experiment.ipynb'), str(isolated / 'bad.ipynb'),
                               '-p', 'taget', 'bc5cdr', '-p', 'profile', 'smoke'], capture_output=True, text=True, timeout=900)
    assert misspelt.returncode != 0 and "did you mean 'target'" in misspelt.stderr + misspelt.stdout


def test_analysis_files(isolated):
    import math
    from safetensors.torch import load_file
    record = run_experiment(smoke(isolated, setting='direct_transfer'), StageCache(isolated / 'stages'))
    per_document = json.loads((isolated / 'run' / 'per_document.json').read_text())
    tp, fp, fn = map(sum, zip(*per_document['tp_fp_fn']))
    assert len(per_document['documents']) == record['data']['test']['documents']
    assert math.isclose(record['precision'], tp / (tp + fp) if tp + fp else 0.0)
    assert math.isclose(record['recall'], tp / (tp + fn) if tp + fn else 0.0)
    meta = json.loads((isolated / 'run' / 'features.json').read_text())
    feats = load_file(str(isolated / 'run' / 'features.safetensors'))['features']
    assert feats.shape[0] == len(meta['groups']) == record['files']['feature_entities']
    assert {'target', 'source'} == set(meta['groups']) and meta['source_entities'] == 'gold source-like annotations'
