"The report: grid driver bookkeeping, tables, bootstrap and claims from records (smoke records). The site: tests/test_site.py."
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from metricner.paths import PROJECT_ROOT
from metricner.experiments import ExperimentConfig, StageCache, config_from_parameters, run_experiment
from metricner.grid import cell_status, grid, grid_progress, run_folder
from metricner.report import (
    claims, bootstrap_table, load_records, paired_bootstrap, per_type_table, plot_feature_projection,
    precision_recall_shift, results_table)


def test_grid_matches_the_issue():
    runs = grid()
    assert all(r['profile'] == 'cpu' and r['source'] == 'all' for r in runs)
    for target in ('chemdner', 'bc5cdr', 'drugprot'):
        for setting in ('target_only', 'direct_transfer', 'eg_ed'):
            assert sorted(r['seed'] for r in runs if r['target'] == target and r['setting'] == setting
                          and r['events'] == 'sentenc' and not r.get('overrides')) == [13, 42, 87]
        for setting in ('oracle', 'eg', 'ed'):
            assert [r['seed'] for r in runs if r['target'] == target and r['setting'] == setting] == [42]
    lambdas = sorted(r.get('overrides', {}).get('lambda_tgt', 0.1) for r in runs
                     if r['target'] == 'chemdner' and r['setting'] == 'eg_ed' and r['seed'] == 42 and r['events'] == 'sentenc')
    assert lambdas == [0.05, 0.1, 0.2, 0.3]
    assert len({run_folder(r) for r in runs}) == len(runs)  # every cell has its own folder


def test_bootstrap_agrees_with_a_direct_computation():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 5, size=(40, 3)); b = rng.integers(0, 5, size=(40, 3))
    result = paired_bootstrap(a, b, samples=300, seed=3)
    f1 = lambda c: 2 * c[0] / (2 * c[0] + c[1] + c[2])
    assert np.isclose(result['delta_f1'], f1(a.sum(0)) - f1(b.sum(0)))
    assert result['ci95'][0] <= result['mean'] <= result['ci95'][1]
    with pytest.raises(ValueError):
        paired_bootstrap(a, b[:10])


@pytest.fixture(scope='module')
def smoke_results(tmp_path_factory, data_dir):
    "Six smoke runs (three settings, two seeds); the environment is set only while they run, so no later test sees it."
    root = tmp_path_factory.mktemp('results')
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv('METRICNER_DATA', str(data_dir))
        patch.setenv('METRICNER_CACHE', str(root / 'cache'))
        cache = StageCache(root / 'stages')
        for setting in ('target_only', 'direct_transfer', 'eg_ed'):
            for seed in (42, 13):
                run_experiment(ExperimentConfig(target='bc5cdr', source='pc', setting=setting, profile='smoke', seed=seed,
                                                out_dir=str(root / 'runs' / f'{setting}-{seed}')), cache)
    return root / 'runs'


@pytest.mark.slow
def test_records_and_table(smoke_results):
    records = load_records(smoke_results)
    assert len(records) == 6 and set(records.setting) == {'target_only', 'direct_transfer', 'eg_ed'}
    table = results_table(records, 'bc5cdr')
    assert list(table.index) == ['Target Only', 'Direct Transfer', 'EG+ED']
    assert list(table['seeds']) == ['2', '2', '2']
    assert sum(cell.startswith('**') for cell in table['f1']) >= 1
    per_type = per_type_table(records, 'bc5cdr')
    assert list(per_type.index) == ['Target Only', 'Direct Transfer', 'EG+ED'] and per_type.columns[0].startswith('Chemical (')
    mean_f1 = records[records.setting == 'eg_ed'].f1.mean() * 100  # one type: its F1 is the micro F1
    assert per_type.loc['EG+ED'].iloc[0] == pytest.approx(mean_f1, abs=0.01)
    boot = bootstrap_table(records, samples=200)
    assert len(boot) == 4 and set(boot.against) == {'direct_transfer', 'target_only'}  # 2 seeds × 2 baselines
    verdict = claims(records, boot)
    alone = bootstrap_table(records, against=('direct_transfer',), samples=200, setting='target_only')
    assert len(alone) == 2 and set(alone.setting) == {'target_only'} and set(alone.against) == {'direct_transfer'}
    assert claims(records, pd.concat([boot, alone])).equals(verdict)  # claims judge EG+ED's rows only
    assert len(verdict) == 4 and set(verdict.verdict) <= {'supported', 'not supported', 'inconclusive'}
    assert (verdict.seeds == 2).all() and list(verdict.measure) == ['f1', 'f1', 'recall', 'overlaps a gold source-like annotation']
    shift = precision_recall_shift(records).set_index('seed')
    for seed in (42, 13):
        run = lambda setting: records[(records.setting == setting) & (records.seed == seed)].iloc[0]
        assert shift.loc[seed, 'recall'] == pytest.approx(100 * (run('eg_ed').recall - run('direct_transfer').recall))


def test_precision_recall_shift_pairs_runs_by_seed():
    records = load_records(Path('/nonexistent'))  # the empty frame, with every column
    rows = [('chemdner', 'direct_transfer', 42, 0.30, 0.40), ('chemdner', 'eg_ed', 42, 0.35, 0.38),
            ('chemdner', 'direct_transfer', 13, 0.20, 0.50),  # its EG+ED run is missing: no shift for seed 13
            ('bc5cdr', 'eg_ed', 42, 0.70, 0.80)]  # no Direct Transfer run: no shift
    records = pd.concat([records, pd.DataFrame([dict(target=t, setting=s, seed=seed, precision=p, recall=r, events='sentenc',
                                                     lambda_tgt=ExperimentConfig.lambda_tgt) for t, s, seed, p, r in rows])])
    shift = precision_recall_shift(records)
    assert shift[['target', 'seed']].values.tolist() == [['chemdner', 42]]
    assert shift.precision.iloc[0] == pytest.approx(5.0) and shift.recall.iloc[0] == pytest.approx(-2.0)
    assert not len(precision_recall_shift(records[records.setting == 'direct_transfer']))  # no EG+ED run at all


@pytest.mark.slow
def test_grid_progress_finds_a_recorded_cell(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv('METRICNER_DATA', str(data_dir))
    monkeypatch.setenv('METRICNER_CACHE', str(tmp_path / 'cache'))
    cell = next(r for r in grid('smoke') if (r['target'], r['setting'], r['seed']) == ('bc5cdr', 'target_only', 42))
    folder = run_folder(cell, tmp_path / 'runs')
    run_experiment(config_from_parameters({**cell, 'out_dir': str(folder)}))
    progress = grid_progress(tmp_path / 'runs', 'smoke')
    assert len(progress) == len(grid()) and list(progress[progress.status == 'done'].folder) == [str(folder)]


def test_report_works_from_an_installed_package(tmp_path):
    """Without a checkout (no settings.ini and nbs/ above the package) the module imports and knows its grid and default
    folders; the grid driver and the site say that they need a checkout."""
    import shutil
    import subprocess
    import metricner
    site = tmp_path / 'site-packages'
    shutil.copytree(Path(metricner.__file__).parent, site / 'metricner', ignore=shutil.ignore_patterns('__pycache__'))
    work = tmp_path / 'work'
    work.mkdir()
    code = """
import metricner, metricner.paths, metricner.report, metricner.grid as grid, metricner.site as site
assert metricner.paths.PROJECT_ROOT is None and metricner.__file__.startswith(sys.argv[1]), metricner.__file__
print(grid.default_runs_dir(), len(grid.grid()))
for call in (site.build_site, lambda: site.stage_api_pages('api'), lambda: grid.run_grid(grid.grid('smoke')[:1], log=lambda *_: None)):
    try: call()
    except RuntimeError as error: print(error)
"""
    done = subprocess.run([sys.executable, '-c', 'import sys' + code, str(site)], cwd=work, capture_output=True, text=True,
                          env={**os.environ, 'PYTHONPATH': str(site)})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f'{work / "results" / "runs"} 40'
    assert [line.split(' needs')[0] for line in lines[1:]] == ['building the site', 'staging the API pages', 'running the grid']
    assert all('needs a project checkout' in line for line in lines[1:])


def test_cell_status(tmp_path, monkeypatch):
    import metricner.grid as grid_module
    run = grid()[0]
    monkeypatch.setattr(grid_module, 'run_folder', lambda parameters, root=None: tmp_path / 'cell')
    assert cell_status(run) == 'missing'
    (tmp_path / 'cell').mkdir()
    (tmp_path / 'cell' / 'metrics.json').write_text('{"truncated": ')
    assert cell_status(run) == 'missing'  # a broken record is not a finished run


def test_run_grid_goes_on_after_a_failed_run(tmp_path, monkeypatch):
    import nbformat
    import papermill
    import metricner.grid as grid_module
    monkeypatch.setattr(grid_module, 'run_folder', lambda parameters, root=None: tmp_path / f"{parameters['target']}-{parameters['setting']}")
    ran = []
    def execute(template, output, parameters, **options):
        ran.append(parameters['setting'])
        nbformat.write(nbformat.v4.new_notebook(), output)
        if len(ran) == 1: raise papermill.PapermillExecutionError(3, 3, 'run()', 'ValueError', 'bad corpus', [])
    monkeypatch.setattr(papermill, 'execute_notebook', execute)
    with pytest.raises(RuntimeError, match='1 grid run'):
        grid_module.run_grid(grid()[:2], log=lambda *_: None)
    assert ran == ['direct_transfer', 'ed']  # the second run still ran


def code_fingerprint_at(root: Path, commit: str) -> set[str]:
    "The digests `code_fingerprint` gives the package as it was at `commit`: by today's scheme, and by the whole-file scheme of the records made before it."
    import hashlib
    import subprocess
    import tempfile
    from metricner.experiments import _digest, code_fingerprint
    def blob(path): return subprocess.run(['git', '-C', str(root), 'show', f'{commit}:{path}'], capture_output=True)
    digests = set()
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(['git', '-C', str(root), 'archive', commit, 'metricner'], capture_output=True, check=True).stdout
        subprocess.run(['tar', '-x', '-C', tmp], input=archive, check=True)
        if (Path(tmp) / 'metricner' / 'resources' / 'event_templates.json').exists(): digests.add(code_fingerprint(Path(tmp) / 'metricner'))
    legacy = [f'metricner/{name}.py' for name in ('data', 'encoder', 'events', 'losses', 'trainers', 'experiments')] + ['data/event_templates.json']
    blobs = [blob(path) for path in legacy]
    if all(b.returncode == 0 for b in blobs):
        digests.add(_digest({Path(path).name: hashlib.sha256(b.stdout).hexdigest() for path, b in zip(legacy, blobs)}))
    return digests


@pytest.mark.slow
def test_committed_records_are_complete_and_ran_the_code_of_their_commit():
    root = Path(__file__).resolve().parent.parent
    if not (root / '.git').exists(): pytest.skip('not a git checkout')
    import subprocess
    for metrics in sorted((root / 'results' / 'runs').rglob('metrics.json')):
        record = json.loads(metrics.read_text(encoding='utf-8'))
        commit = record['git']['commit']
        found = subprocess.run(['git', '-C', str(root), 'cat-file', '-e', f'{commit}^{{commit}}'], capture_output=True)
        assert commit and found.returncode == 0, f'{metrics}: its commit {commit} is not in this repository'
        # the record's code digest is that of its commit's files: it ran committed code, whatever else was uncommitted
        assert record['code'] in code_fingerprint_at(root, commit), f'{metrics}: its code is not the code of {commit}'
        assert (metrics.parent / 'per_document.json').exists(), f'{metrics}: no per_document.json beside it'
        # the cpu grid went through the papermill template (`metricner results`), which keeps the executed notebook;
        # study runs may be made with `metricner run` (as `metricner results --commands` prints them), which writes none
        if record['config']['profile'] == 'cpu': assert (metrics.parent / 'run.ipynb').exists(), f'{metrics}: no run.ipynb beside it'


def test_feature_projection_titles_each_run_with_the_separation_of_its_groups(tmp_path):
    import torch
    from safetensors.torch import save_file
    rng = np.random.default_rng(0)
    groups = ['target'] * 30 + ['source'] * 30
    centres = {'apart': (np.r_[np.ones(8), np.zeros(8)], np.r_[np.zeros(8), np.ones(8)]), 'mixed': (np.ones(16), np.ones(16))}
    folders = {}
    for name, (target_centre, source_centre) in centres.items():
        feats = np.vstack([target_centre + 0.1 * rng.standard_normal((30, 16)), source_centre + 0.1 * rng.standard_normal((30, 16))])
        folder = tmp_path / name; folder.mkdir()
        save_file({'features': torch.tensor(feats, dtype=torch.float32)}, str(folder / 'features.safetensors'))
        (folder / 'features.json').write_text(json.dumps({'groups': groups, 'source_entities': 'pseudo labels'}))
        folders[name] = folder
    figure = plot_feature_projection(folders)
    silhouettes = [float(ax.get_title().rsplit(': ', 1)[1]) for ax in figure.axes]
    assert silhouettes[0] > 0.8 and abs(silhouettes[1]) < 0.2  # separated clusters against one mixed cloud
