"Experiments end to end on the smoke profile (tiny local BERT, real corpus slices): settings, cache, resume, CLI, papermill."
import ast
import dataclasses
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import write_files
from metricner import experiments
from metricner.backbone import build_tiny_backbone
from metricner.trainers import STOP_REASONS
from metricner.experiments import (PARAMETERS, SETTINGS, STAGES, ExperimentConfig, StageCache, config_from_parameters, resolve,
                                   run_experiment, source_stage_inputs, source_stage_key)
from metricner.study import checkpoint_owners, stage_checkpoints

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


@pytest.mark.slow
@pytest.mark.parametrize('setting', SETTINGS)
def test_every_setting_writes_a_complete_record(isolated, setting):
    record = run_experiment(smoke(isolated, setting=setting), StageCache(isolated / 'stages'))
    written = json.loads((isolated / 'run' / 'metrics.json').read_text())
    assert written['f1'] == record['f1'] and 0 <= record['f1'] <= 1
    assert written['config']['setting'] == setting and written['config']['target'] == 'bc5cdr'
    assert written['config']['profile'] == 'smoke'
    assert written['seeds'] == {'seed': 42, 'source_seed': None if setting in ('target_only', 'oracle') else 42}
    for stage in ('stage1', 'stage2'):
        stopped = (written[stage] or {}).get('stopped')
        if stage == 'stage2' or written['stage1']: assert stopped['reason'] in STOP_REASONS and stopped['epoch'] == len(written[stage]['history'])
    stages = [written['stage2']] + ([written['stage1']] if written['stage1'] else [])
    assert written['converged'] == all(s['stopped']['reason'] == 'patience' for s in stages)
    assert written['version'] and 'commit' in written['git'] and written['timings_s']['total'] > 0
    assert (written['stage1'] is None) == (setting in ('target_only', 'oracle'))
    assert (written['pseudo_labels'] is None) == (setting not in ('ed', 'eg_ed'))
    assert 'gold_source_like' in written['source_false_positives']  # BC5CDR diseases
    assert ('source_model' in written['source_false_positives']) == (written['stage1'] is not None)
    few_shot = written['data']['train'].get('few_shot')
    assert (few_shot is None) == (setting == 'oracle')
    assert written['config']['few_shot'] == 'paper' and (few_shot is None or few_shot['rule'] == 'paper')
    if setting in ('eg', 'eg_ed'):
        assert written['stage1']['aux_similarity']['records'] > 0
        assert any(h['ms'] > 0 for h in written['stage1']['history'])
    if setting in ('ed', 'eg_ed'):  # BC5CDR's gold diseases tell how noisy the pseudo source entities are
        assert set(written['pseudo_labels']['against_gold']) == {'precision', 'recall', 'f1', 'tp', 'fp', 'fn'}


@pytest.mark.slow
def test_grouping_without_events(isolated):
    "EG with events 'none': grouping by type alone (no auxiliary similarity), the MS term still on."
    record = run_experiment(smoke(isolated, setting='eg', events='none'), StageCache(isolated / 'stages'))
    assert record['stage1']['aux_similarity'] is None and any(h['ms'] > 0 for h in record['stage1']['history'])
    assert (isolated / 'run' / 'metrics.json').exists()


@pytest.mark.slow
@pytest.mark.parametrize('events', ['concat', 'sentenc'])
def test_both_event_paradigms(isolated, events):
    record = run_experiment(smoke(isolated, setting='eg', events=events), StageCache(isolated / 'stages'))
    assert record['config']['events'] == events and record['stage1']['aux_similarity']['entities_with_records'] > 0


@pytest.mark.slow
def test_same_seed_same_metrics(isolated):
    first = run_experiment(smoke(isolated, setting='ed'), StageCache(isolated / 'a'))
    second = run_experiment(smoke(isolated, setting='ed'), StageCache(isolated / 'b'))
    assert second['stage1']['cache'] == 'trained'  # really trained twice
    assert [h['dev_f1'] for h in first['stage2']['history']] == [h['dev_f1'] for h in second['stage2']['history']]
    assert first['per_type'] == second['per_type'] and first['pseudo_labels'] == second['pseudo_labels']


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


def interrupt_in_second_epoch(config: ExperimentConfig, cache: StageCache, monkeypatch) -> None:
    "Run `config` until its second dev evaluation raises KeyboardInterrupt; check that one checkpoint, of epoch 1, is left in the store."
    from metricner import trainers
    real_evaluate, calls = trainers.evaluate, []
    def interrupting(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2: raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)
    with monkeypatch.context() as patched:
        patched.setattr(trainers, 'evaluate', interrupting)
        with pytest.raises(KeyboardInterrupt): run_experiment(config, cache)
    progress = list(cache.store.glob('*.progress'))
    assert len(progress) == 1 and [e['epoch'] for e in json.loads((progress[0] / 'progress.json').read_text())['history']] == [1]


@pytest.mark.slow
def test_adapter_stages_are_stored_verified_and_resumed(isolated, monkeypatch):
    """An adapter stage 1 interrupted after its first epoch leaves its checkpoint in the store and resumes from it; once
    finished it is written to the store with file digests, reused from there by a machine with an empty cache, and a
    changed file is refused."""
    config = smoke(isolated, setting='direct_transfer', mode='adapter', source_train={'max_epochs': 3, 'min_epochs': 3, 'patience': 3})
    store = isolated / 'store'
    interrupt_in_second_epoch(config, StageCache(isolated / 'a', store=store), monkeypatch)
    record = run_experiment(config, StageCache(isolated / 'a', store=store))
    stage1 = record['stage1']
    assert stage1['stopped']['resumed_after'] == 1 and stage1['stopped']['epoch'] == 3 and stage1['cache'] == 'trained'
    entry = store / stage1['key']
    assert not list(store.glob('*.progress')) and (entry / 'tagger' / 'tagger.safetensors').exists()
    assert not (entry / 'tagger' / 'backbone' / 'model.safetensors').exists()  # adapters and head only
    assert set(json.loads((entry / 'stage.json').read_text())['files']) >= {'tagger/config.json', 'tagger/tagger.safetensors'}

    messages = []
    again = run_experiment(config, StageCache(isolated / 'fresh-machine', log=messages.append, store=store))
    assert again['stage1']['cache'] == 'reused' and any('files verified' in m for m in messages)
    assert again['f1'] == record['f1']

    weights = entry / 'tagger' / 'tagger.safetensors'
    data = weights.read_bytes()
    weights.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one bit of the last byte
    with pytest.raises(ValueError, match='tagger.safetensors: missing, or its sha256'):
        run_experiment(config, StageCache(isolated / 'another-machine', store=store))


@pytest.mark.slow
def test_an_interrupted_stage_2_resumes_from_its_checkpoint(isolated, monkeypatch):
    """A run stopped in its second stage-2 epoch resumes there: the record equals that of an uninterrupted run, says
    that it resumed, and the checkpoint is gone once the record is written."""
    config = smoke(isolated, setting='target_only', mode='adapter', target_train={'max_epochs': 3, 'min_epochs': 3, 'patience': 3})
    whole = run_experiment(dataclasses.replace(config, out_dir=str(isolated / 'whole')), StageCache(isolated / 'w', store=isolated / 'w-store'))
    store = isolated / 'store'
    interrupt_in_second_epoch(config, StageCache(isolated / 'a', store=store), monkeypatch)
    planned = dict(target='bc5cdr', source='pc', setting='target_only', profile='smoke', seed=42,  # the same run, as a plan gives it
                   overrides={'mode': 'adapter', **{f'target_train.{k}': 3 for k in ('max_epochs', 'min_epochs', 'patience')}})
    owners = checkpoint_owners(set(stage_checkpoints(store).key), [planned])  # the study page's labels
    assert list(owners.values()) == [{'stage': 'stage 2', 'model': 'bc5cdr, Target Only seed 42', 'serves': '1 run: Target Only (seed 42) on bc5cdr',
                                      'stopping': {'min_epochs': 3, 'patience': 3}}]
    resumed = run_experiment(config, StageCache(isolated / 'a', store=store))
    assert resumed['stage2']['stopped']['resumed_after'] == 1 and whole['stage2']['stopped']['resumed_after'] is None
    without_time = lambda history: [{k: v for k, v in e.items() if k != 'seconds'} for e in history]  # noqa: E731
    assert without_time(resumed['stage2']['history']) == without_time(whole['stage2']['history'])
    assert (resumed['f1'], resumed['precision'], resumed['recall']) == (whole['f1'], whole['precision'], whole['recall'])
    assert not list(store.glob('*.progress'))
    other_seed = dataclasses.replace(config, seed=13)
    assert experiments.target_stage_key(resolve(other_seed), None) != experiments.target_stage_key(resolve(config), None)
    assert experiments.target_stage_key(resolve(dataclasses.replace(config, out_dir='elsewhere')), None) == \
        experiments.target_stage_key(resolve(config), None)


def copy_package(tmp_path: Path) -> Path:
    "A copy of the package's modules and packaged data files."
    import shutil
    source = Path(experiments.__file__).parent
    return Path(shutil.copytree(source, tmp_path / 'metricner', ignore=shutil.ignore_patterns('__pycache__')))


def reword_docstrings_and_comment(path: Path) -> None:
    "Replace every function and class docstring and append a comment to every one-line return, located by the syntax tree."
    source = path.read_bytes()
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    docs = [n.body[0].value for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and ast.get_docstring(n, clean=False)]
    returns = {n.lineno - 1 for n in ast.walk(tree) if isinstance(n, ast.Return) and n.lineno == n.end_lineno}
    assert docs and returns
    for node in sorted(docs, key=lambda n: (n.lineno, n.col_offset), reverse=True):  # offsets are in bytes
        first, last = node.lineno - 1, node.end_lineno - 1
        lines[first:last + 1] = [lines[first][:node.col_offset] + b'"Reworded."' + lines[last][node.end_col_offset:]]
        returns = {i if i < first else i - (last - first) for i in returns}
    for i in returns: lines[i] = lines[i].rstrip(b'\r\n') + b'  # a comment\n'
    path.write_bytes(b''.join(lines))


def test_code_fingerprint_ignores_prose_and_formatting(tmp_path):
    "Records stay done after a docstring, comment or formatting change in a result module."
    package = copy_package(tmp_path)
    before = experiments.code_fingerprint(package)
    assert before == experiments.code_fingerprint()
    reword_docstrings_and_comment(package / 'trainers.py')
    assert (package / 'trainers.py').read_bytes() != Path(experiments.__file__).with_name('trainers.py').read_bytes()
    losses = package / 'losses.py'
    losses.write_text(ast.unparse(ast.parse(losses.read_text(encoding='utf-8'))), encoding='utf-8')  # reformatted, comments gone
    (package / 'report.py').write_text('# not a result module\n', encoding='utf-8')
    assert experiments.code_fingerprint(package) == before


def test_code_fingerprint_follows_what_the_code_does(tmp_path):
    "A loss constant changed makes records stale."
    package = copy_package(tmp_path)
    before = experiments.code_fingerprint(package)
    losses = package / 'losses.py'
    text = losses.read_text(encoding='utf-8')
    assert 'PAPER_SOURCE_MS = dict(alpha=4.0,' in text
    losses.write_text(text.replace('PAPER_SOURCE_MS = dict(alpha=4.0,', 'PAPER_SOURCE_MS = dict(alpha=4.5,'), encoding='utf-8')
    assert experiments.code_fingerprint(package) != before


def test_git_commit_is_dirty_for_code_files_only(tmp_path, monkeypatch):
    write_files(tmp_path, {'metricner/trainers.py': 'x = 1\n', 'results/runs/a/metrics.json': '{}', 'nbs/06a_report.ipynb': '{}'})
    def git(*args): subprocess.run(['git', '-C', str(tmp_path), '-c', 'user.name=t', '-c', 'user.email=t@t', *args], check=True, capture_output=True)
    git('init', '-q'); git('add', '.'); git('commit', '-qm', 'first')
    code = [tmp_path / 'metricner' / 'trainers.py']
    clean = experiments.git_commit(tmp_path, code)
    assert len(clean['commit']) == 40 and clean['dirty'] is False
    write_files(tmp_path, {'results/runs/a/metrics.json': '{"f1": 1}', 'results/runs/b/metrics.json': '{}', 'nbs/06a_report.ipynb': '{"cells": []}'})
    assert experiments.git_commit(tmp_path, code)['dirty'] is False  # records and notebooks are not code
    code[0].write_text('x = 2\n', encoding='utf-8')
    assert experiments.git_commit(tmp_path, code) == {'commit': clean['commit'], 'dirty': True}
    monkeypatch.setattr(experiments, 'PROJECT_ROOT', None)  # an installed package
    assert experiments.git_commit() == {'commit': None, 'dirty': None}


def test_every_configuration_field_says_which_stage_reads_it():
    unclassified = [f.name for f in dataclasses.fields(ExperimentConfig) if f.metadata.get('stage') not in STAGES]
    assert not unclassified, f'declare these fields with config_field(default, stage): {unclassified}'
    @dataclasses.dataclass
    class Extended(ExperimentConfig):
        new_knob: int = 3
    with pytest.raises(TypeError, match='new_knob does not say which stage reads it'):
        source_stage_inputs(Extended())


def test_source_stage_key_follows_what_stage_one_reads(tmp_path):
    write_files(tmp_path, {'train/a.txt': 'MDM2 binds.', 'train/a.a1': 'T1\tProtein 0 4\tMDM2\n'})
    base = dict(target='bc5cdr', source=f'standoff:{tmp_path}', setting='direct_transfer', profile='smoke')
    def key(backbone='tiny-backbone', **change): return source_stage_key(resolve(ExperimentConfig(**{**base, **change})), backbone)
    reference = key()
    stage_two_only = [dict(setting='ed'), dict(lambda_tgt=0.3), dict(target_train={'lr': 1.0}), dict(ms_target={**experiments.PAPER_TARGET_MS, 'alpha': 1.0}),
                      dict(target_types=['X']), dict(few_shot='random'), dict(save_features=True), dict(out_dir='elsewhere'),
                      dict(device='cpu'), dict(events='concat'), dict(lambda_src=2.0)]  # the last two: no entity grouping here
    for change in stage_two_only: assert key(**change) == reference, change
    stage_one = [dict(seed=7), dict(source_seed=7), dict(setting='eg'), dict(source_train={'lr': 1.0}), dict(max_length=32), dict(mode='adapter'),
                 dict(unit='sentence'), dict(source_exclude_types=['Protein']), dict(max_documents={'train': 2}), dict(backbone='other')]
    for change in stage_one: assert key(**change) != reference, change
    grouping = key(setting='eg')
    assert key(setting='eg_ed') == grouping
    assert key(setting='eg', events='concat') != grouping and key(setting='eg', lambda_src=2.0) != grouping
    assert key(backbone='another-backbone') != reference
    (tmp_path / 'train' / 'a.txt').write_text('MDM2 binds!')
    assert key() != reference  # the corpus contents


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


@pytest.mark.slow
def test_the_device_comparison_holds_on_one_device(isolated):
    a, b = compare_devices(isolated, 'cpu', 'cpu')
    assert a['environment']['device'] == 'cpu' and a['environment']['gpu'] is None


@pytest.mark.slow
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


@pytest.mark.parametrize('change, message', [
    (dict(ms_source={**experiments.PAPER_SOURCE_MS, 'alpah': 3}), "unknown ms_source key 'alpah' (did you mean 'alpha'?)"),
    (dict(ms_target={'alpha': 2.0}), 'ms_target lacks beta'),
    (dict(target_train={'max_epoch': 3}), "unknown target_train key 'max_epoch' (did you mean 'max_epochs'?)"),
    (dict(source_train={'seed': 3}), 'source_train.seed is set by the run: give seed instead'),
    (dict(max_documents={'tain': 3}), "unknown max_documents key 'tain' (did you mean 'train'?)"),
    (dict(setting='eg-ed'), "unknown setting 'eg-ed' (did you mean 'eg_ed'?)"),
    (dict(profile='smok'), "unknown profile 'smok' (did you mean 'smoke'?)"),
    (dict(events='sentence'), "unknown events 'sentence' (did you mean 'sentenc'?)"),
    (dict(mode='adapters'), "unknown mode 'adapters' (did you mean 'adapter'?)"),
    (dict(unit='sentences'), "unknown unit 'sentences' (did you mean 'sentence'?)"),
    (dict(aux_reduce='maximum'), "unknown aux_reduce 'maximum'"),
    (dict(few_shot='randm'), "unknown few_shot 'randm' (did you mean 'random'?)"),
    (dict(device='gpu'), "unknown device 'gpu'"),
    (dict(seed='42'), "seed must be of type int, not '42'"),
    (dict(few_shot_seed=3), "give few_shot='random' with them"),
])
def test_configuration_is_checked_before_any_data_is_read(tmp_path, change, message):
    "The data folder is empty: a check made after reading data would fail with another message."
    config = ExperimentConfig(**{'target': 'bc5cdr', 'source': 'pc', 'profile': 'smoke', 'data_dir': str(tmp_path),
                                 'out_dir': str(tmp_path / 'run'), **change})
    with pytest.raises(ValueError, match=re.escape(message)):
        run_experiment(config, StageCache(tmp_path / 'stages'))
    assert not (tmp_path / 'run').exists()


def test_overrides_reach_nested_keys_and_are_checked():
    assert config_from_parameters({'overrides': {'ms_source.alpha': 3}}).ms_source == {**experiments.PAPER_SOURCE_MS, 'alpha': 3}
    with pytest.raises(ValueError, match=re.escape("unknown ms_source key 'alpah' (did you mean 'alpha'?)")):
        config_from_parameters({'overrides': {'ms_source.alpah': 3}})
    with pytest.raises(ValueError, match=re.escape("unknown configuration field 'lamda_tgt' (did you mean 'lambda_tgt'?)")):
        config_from_parameters({'overrides': {'lamda_tgt': 0.2}})


def template_parameters() -> dict:
    "The names and literal values of the papermill template's `parameters` cell, in order."
    notebook = json.loads((ROOT / 'nbs' / 'run_experiment.ipynb').read_text(encoding='utf-8'))
    [cell] = [c for c in notebook['cells'] if 'parameters' in c['metadata'].get('tags', [])]
    tree = ast.parse(''.join(cell['source']))
    assert all(isinstance(node, ast.Assign) and len(node.targets) == 1 for node in tree.body), 'one assignment per line'
    return {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body}  # papermill needs literals


def test_the_template_parameters_are_the_parameter_list():
    assert template_parameters() == {p.name: p.default for p in PARAMETERS}
    assert list(template_parameters()) == [p.name for p in PARAMETERS]


@pytest.mark.slow
def test_few_shot_sampler_is_a_configuration_value(isolated):
    slices = {'train': 40, 'dev': 10, 'test': 1}
    def chosen(**change):
        config = resolve(smoke(isolated, setting='target_only', max_documents=slices, **change))
        _, units, info = experiments.target_data(config)
        return [u.doc_id for u in units['train']], info['train']['few_shot']
    paper, paper_info = chosen()
    first, first_info = chosen(few_shot='random', few_shot_seed=1)
    assert paper_info['rule'] == 'paper' and first_info['rule'] == 'random' and first_info['seed'] == 1
    assert first_info['k'] == math.ceil(paper_info['limit'])  # the paper's quota per label, drawn at random
    assert chosen(few_shot='random', few_shot_seed=1)[0] == first  # a seeded draw
    assert chosen(few_shot='random', few_shot_seed=2)[0] != first and first != paper
    assert chosen(few_shot='random')[1]['seed'] == 42  # by default the run's seed
    record = run_experiment(smoke(isolated, setting='target_only', few_shot='random', few_shot_seed=3), StageCache(isolated / 'stages'))
    assert record['config']['few_shot'] == 'random' and record['config']['few_shot_seed'] == 3
    assert record['data']['train']['few_shot']['rule'] == 'random' and record['data']['dev']['few_shot']['seed'] == 3


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_pseudo_labels_are_previewed_from_a_stage_1_model_in_training_and_finished(isolated, monkeypatch, capsys):
    """`preview_pseudo_labels` reads a stage-1 model still in training (its checkpoint's best weights) and, once finished,
    gives exactly the pseudo labels that the run recorded; `metricner pseudo-labels` prints the same as JSON."""
    from metricner.cli import main
    from metricner.preview import preview_pseudo_labels
    backbone = build_tiny_backbone(isolated / 'tiny', words=['cancer', 'cell', 'protein', 'the', 'of'])
    stage1 = {'max_epochs': 3, 'min_epochs': 3, 'patience': 3}
    config = smoke(isolated, setting='ed', mode='adapter', backbone=str(backbone), source_train=stage1)
    cache = StageCache(store=isolated / 'store')  # its machine cache is METRICNER_CACHE's, as the command's
    interrupt_in_second_epoch(config, cache, monkeypatch)
    in_training = preview_pseudo_labels(config, cache)
    assert in_training['model']['state'] == 'in training' and in_training['model']['epochs'] == 1
    assert in_training['model']['weights_of_epoch'] == 1 and in_training['training units'] > 0
    assert set(in_training) >= {'entities', 'words', 'by_source_type', 'against_gold'}  # BC5CDR has gold source-type spans
    record = run_experiment(config, cache)
    capsys.readouterr()  # the run's log
    assert main(['pseudo-labels', '--target', 'bc5cdr', '--source', 'pc', '--setting', 'ed', '--profile', 'smoke',
                 '--backbone', str(backbone), '--set', 'mode=adapter', *(f'--set=source_train.{k}={v}' for k, v in stage1.items())]) == 0
    printed = json.loads(capsys.readouterr().out)  # JSON alone on standard output
    assert printed['model']['state'] == 'finished' and printed['model']['key'] == record['stage1']['key']
    assert {k: v for k, v in printed.items() if k not in ('model', 'training units')} == record['pseudo_labels']


@pytest.mark.slow
def test_a_finished_run_is_rescored_only_from_what_is_shown_to_be_its_own(isolated, capsys):
    """Rescored with BC5CDR's own source-like type, a run's pseudo-label score equals the recorded one, and its false
    positives on Disease spans, wrong and right, add up to the recorded overlaps; `metricner rescore` writes the same.
    A record whose counts were changed is refused, and nothing is written."""
    from metricner.cli import main
    from metricner.rescore import RESCORED, rescore_run
    backbone = build_tiny_backbone(isolated / 'tiny', words=['cancer', 'cell', 'protein', 'the', 'of'])
    config = smoke(isolated, setting='ed', mode='adapter', backbone=str(backbone), source_train={'max_epochs': 2, 'min_epochs': 2})
    cache = StageCache(store=isolated / 'store')
    record = run_experiment(config, cache)
    run = isolated / 'run'
    rescored = rescore_run(run, ('Disease',), cache)
    assert rescored['pseudo_labels']['against_gold'] == record['pseudo_labels']['against_gold']
    assert rescored['stage1'] == record['stage1']['key'] and rescored['code'] == record['code']
    fp, recorded = rescored['source_false_positives'], record['source_false_positives']['gold_source_like']
    assert fp['predicted_entities'] == recorded['predicted_entities']
    assert fp['wrong_overlapping'] + fp['right_overlapping'] == recorded['overlapping']
    assert json.loads((run / RESCORED).read_text()) == rescored
    capsys.readouterr()  # the run's log
    assert main(['rescore', str(run), '--source-like', 'Disease']) == 0
    assert json.loads(capsys.readouterr().out)['source_false_positives'] == fp
    (run / RESCORED).unlink()
    per_document = json.loads((run / 'per_document.json').read_text())
    per_document['tp_fp_fn'][0][0] += 1
    (run / 'per_document.json').write_text(json.dumps(per_document))
    with pytest.raises(ValueError, match='do not give the per-document counts'): rescore_run(run, ('Disease',), cache)
    assert not (run / RESCORED).exists()
