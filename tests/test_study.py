"The converged study's report on fake records: none, a partial study, old records without the new fields, Oracle's cap, pooled bootstraps that hold and that fail, and the study page itself."
import json
import os
import re
from pathlib import Path

import pandas as pd
import pytest

from metricner.experiments import code_fingerprint, config_from_parameters, SETTINGS, source_stage_key
from metricner.grid import study_grid
from metricner.paths import PROJECT_ROOT
from metricner.report import bootstrap_table, claims, load_records, source_runs, stage_stop
from metricner.study import (
    calibration_choice, calibration_table, event_ablation, grid_differences, grid_outcomes, grid_shift_markdown,
    load_calibration, premise_table, pseudo_label_quality, run_convergence, stopping_table, study_progress)

DOCUMENTS = [f'd{i}' for i in range(40)]


def write_run(root: Path, setting: str, target: str = 'bc5cdr', seed: int = 42, f1: float = 0.6, events: str = 'sentenc',
              source: str = 'all', profile: str = 'converged', stops=(('patience', 30, 10), ('patience', 40, 20)),
              fp: float | None = 0.05, counts=None, new_fields: bool = True, code: str | None = None, folder: Path | None = None,
              **record) -> Path:
    """A complete record as `run_experiment` writes it, with what the report reads; `new_fields` False drops what older
    records lack (`stopped`, `converged`); `counts` writes per_document.json."""
    two_stage = SETTINGS[setting].source_stage
    def stage(stop):
        reason, last, best = stop
        history = [dict(epoch=e, ce=1 / e, ms=2.6 / e, dev_precision=0.5, dev_recall=0.5, dev_f1=0.5, best=e <= best, seconds=1.0)
                   for e in range(1, last + 1)]
        part = dict(key=f'{setting}-{seed}-{profile}', history=history)
        if new_fields: part['stopped'] = dict(epoch=last, best_epoch=best, reason=reason, converged=reason == 'patience')
        return part
    config = dict(target=target, source=source, setting=setting, events=events, seed=seed, lambda_tgt=0.1, profile=profile,
                  mode='adapter' if profile == 'converged' else 'full', max_length=512 if profile == 'converged' else 256,
                  source_train=dict(lr=1e-4, max_epochs=1000, patience=20), target_train=dict(lr=1e-4, max_epochs=1000, patience=20))
    stage1 = stage(stops[0]) if two_stage else None
    stage2 = stage(stops[1])
    full = dict(config=config, precision=f1 - 0.02, recall=f1 + 0.02, f1=f1, strict={'f1': f1}, code=code or code_fingerprint(),
                git={'commit': 'abcdef1234'}, timings_s={'total': 60.0}, environment={'device': 'cpu'},
                source_false_positives={} if fp is None else {'gold_source_like': {'share': fp}}, per_type={},
                stage1=stage1, stage2=stage2, **record)
    if new_fields: full['converged'] = all(s is None or s['stopped']['converged'] for s in (stage1, stage2))
    name = f'{target}-{setting}' + (f'-{events}' if SETTINGS[setting].grouping else '') + f'-seed{seed}'
    folder = folder or Path(root) / profile / (source if two_stage else 'none') / name
    folder.mkdir(parents=True)
    (folder / 'metrics.json').write_text(json.dumps(full))
    if counts is not None: (folder / 'per_document.json').write_text(json.dumps({'documents': DOCUMENTS, 'tp_fp_fn': counts}))
    return folder


GOOD = [[3, 0, 0]] * 20 + [[1, 1, 1]] * 20  # F1 over the documents: 0.8
BAD = [[2, 1, 1]] * 20 + [[1, 1, 1]] * 20  # 0.6
LATE_GOOD, LATE_BAD = GOOD[20:] + GOOD[:20], BAD[20:] + BAD[:20]  # the same, on the other half of the documents


@pytest.fixture
def partial_study(tmp_path) -> Path:
    """A study under way: BC5CDR at two seeds (EG+ED ahead at both), CHEMDNER at seed 42 only with an EG+ED run capped in
    stage 2, Oracle capped (allowed), the event ablation on BC5CDR, one single-source run, and the cpu grid's old records."""
    runs = tmp_path / 'runs'
    for seed in (42, 13):
        write_run(runs, 'target_only', seed=seed, f1=0.60, fp=0.04, counts=BAD)
        write_run(runs, 'direct_transfer', seed=seed, f1=0.62, fp=0.08, counts=BAD)
        write_run(runs, 'eg_ed', seed=seed, f1=0.66, fp=0.05, counts=GOOD,
                  pseudo_labels=dict(entities=50, against_gold=dict(precision=0.3, recall=0.6, f1=0.4, tp=15, fp=35, fn=10)))
    write_run(runs, 'eg', f1=0.64, counts=GOOD)
    write_run(runs, 'eg', events='none', f1=0.63, counts=BAD)
    write_run(runs, 'oracle', f1=0.85, stops=(None, ('max_epochs', 200, 190)))
    write_run(runs, 'target_only', target='chemdner', f1=0.55, fp=None)
    write_run(runs, 'direct_transfer', target='chemdner', f1=0.54, fp=None)
    write_run(runs, 'eg_ed', target='chemdner', f1=0.56, fp=None, stops=(('patience', 40, 20), ('max_epochs', 1000, 998)))
    write_run(runs, 'direct_transfer', source='pc', f1=0.58)
    for setting, f1 in (('target_only', 0.70), ('direct_transfer', 0.69), ('eg_ed', 0.68)):  # the cpu grid: older code, older records
        write_run(runs, setting, profile='cpu', f1=f1, stops=(('max_epochs', 4, 4), ('max_steps', 10, 9)), new_fields=False,
                  code='older code')
    return runs


def test_no_records_at_all(tmp_path):
    records = load_records(tmp_path / 'runs')
    progress = study_progress(records)
    assert len(progress) == len(study_grid()) and set(progress.status) == {'missing'}
    assert not len(stopping_table(records)) and not len(premise_table(records)) and not len(bootstrap_table(records, pool_seeds=True))
    assert calibration_choice(calibration_table(load_calibration(tmp_path / 'calibration'))).startswith('No calibration run is recorded yet')


def test_a_partial_study(partial_study):
    records = load_records(partial_study)
    study = records[records.profile == 'converged']
    progress = study_progress(records).set_index(['target', 'run', 'source'])
    assert (progress.status == 'done').sum() == len(study)  # every study record is a run of the plan
    assert progress.loc[('bc5cdr', 'Direct Transfer seed 42', 'pc'), 'status'] == 'done'
    assert progress.loc[('bc5cdr', 'EG without events seed 42', 'all'), 'status'] == 'done'
    assert progress.loc[('chemdner', 'EG+ED seed 42', 'all'), 'stopped'] == 'not converged: stage 2 stopped by max_epochs at epoch 1000'
    assert progress.loc[('bc5cdr', 'Oracle seed 42', '–'), 'stopped'] == 'reference, capped at 200 epochs'
    assert progress.loc[('drugprot', 'Target Only seed 42', '–'), 'status'] == 'missing'
    # the cpu grid's records never enter the study's progress
    assert not progress.stopped.str.contains('unknown').any()


def test_old_records_without_the_new_fields(partial_study):
    records = load_records(partial_study)
    cpu = records[records.profile == 'cpu']
    table = stopping_table(cpu)
    assert list(table.stopped) == ['unknown (older record)'] * 3
    assert table.set_index('run').loc['EG+ED seed 42', 'stage 1'] == '4 (best 4), unknown'  # epochs from the history, reason unknown
    record = json.loads((Path(cpu.folder.iloc[0]) / 'metrics.json').read_text())
    assert stage_stop(record, 'stage1') is None or stage_stop(record, 'stage1')['converged'] is None
    assert pseudo_label_quality(cpu).empty  # no against_gold in older records: nothing, not zeros


def test_oracle_is_a_reference_but_nothing_else_may_hit_a_cap(tmp_path):
    oracle = write_run(tmp_path, 'oracle', stops=(None, ('max_epochs', 150, 140)))
    capped_by_steps = write_run(tmp_path, 'oracle', seed=13, stops=(None, ('max_steps', 9, 9)))
    target_only = write_run(tmp_path, 'target_only', stops=(None, ('max_epochs', 150, 140)))
    source_capped = write_run(tmp_path, 'eg_ed', stops=(('max_seconds', 3, 3), ('patience', 40, 20)))
    read = lambda folder: json.loads((folder / 'metrics.json').read_text())
    assert run_convergence(read(oracle)) == 'reference, capped at 150 epochs'
    assert run_convergence(read(capped_by_steps)) == 'reference, capped by max_steps at epoch 9'
    assert run_convergence(read(target_only)) == 'not converged: stage 2 stopped by max_epochs at epoch 150'
    assert run_convergence(read(source_capped)) == 'not converged: stage 1 stopped by max_seconds at epoch 3'


def test_bootstrap_per_seed_and_pooled_and_the_verdicts(partial_study):
    runs = load_records(partial_study)
    runs = source_runs(runs[runs.profile == 'converged'])  # the pooled source (the single-source run stays out)
    per_seed = bootstrap_table(runs, against=('direct_transfer',), samples=300)
    pooled = bootstrap_table(runs, against=('direct_transfer',), samples=300, pool_seeds=True)
    assert list(per_seed.seed) == [13, 42] and (per_seed.ci_low > 0).all()
    assert list(pooled.seed) == ['pooled: 13, 42']  # CHEMDNER's runs kept no per-document counts
    assert pooled.delta_f1.iloc[0] == pytest.approx(100 * (0.8 - 0.6)) and pooled.ci_low.iloc[0] > 0
    verdict = claims(runs, pd.concat([per_seed, pooled])).set_index(['target', 'claim'])
    f1 = verdict.loc[('bc5cdr', 'higher F1 than Direct Transfer')]
    assert f1.verdict == 'supported' and 'pooled: 13, 42: +20.00' in f1.evidence
    assert verdict.loc[('bc5cdr', 'fewer source-entity false positives than Direct Transfer'), 'verdict'] == 'supported'
    assert verdict.loc[('bc5cdr', 'higher recall of target entities than Direct Transfer'), 'verdict'] == 'supported'


def test_a_pooled_bootstrap_that_fails(tmp_path):
    "Seed 42 gains where seed 13 loses: each seed's interval is clear of 0, the pooled one is not, and the claim stays open."
    runs = tmp_path / 'runs'
    write_run(runs, 'eg_ed', seed=42, f1=0.66, counts=GOOD)
    write_run(runs, 'direct_transfer', seed=42, f1=0.62, counts=BAD)
    write_run(runs, 'eg_ed', seed=13, f1=0.63, counts=LATE_BAD)
    write_run(runs, 'direct_transfer', seed=13, f1=0.62, counts=LATE_GOOD)
    records = load_records(runs)
    per_seed = bootstrap_table(records, against=('direct_transfer',), samples=500)
    pooled = bootstrap_table(records, against=('direct_transfer',), samples=500, pool_seeds=True)
    assert per_seed.set_index('seed').ci_low[42] > 0 and per_seed.set_index('seed').ci_high[13] < 0
    assert pooled.ci_low.iloc[0] < 0 < pooled.ci_high.iloc[0] and pooled.p_not_better.iloc[0] > 0.05
    f1 = claims(records, pd.concat([per_seed, pooled])).set_index('claim').loc['higher F1 than Direct Transfer']
    assert f1.verdict == 'inconclusive'  # the mean F1 rises (records), but neither the pool nor seed 13 supports it


def test_pooling_needs_the_same_documents(tmp_path):
    runs = tmp_path / 'runs'
    write_run(runs, 'eg_ed', seed=42, counts=GOOD)
    write_run(runs, 'direct_transfer', seed=42, counts=BAD)
    write_run(runs, 'eg_ed', seed=13, counts=GOOD)
    moved = write_run(runs, 'direct_transfer', seed=13, counts=BAD)
    (moved / 'per_document.json').write_text(json.dumps({'documents': DOCUMENTS[::-1], 'tp_fp_fn': BAD}))
    with pytest.raises(ValueError, match='bc5cdr seeds 13, 42: the seeds were scored on different documents'):
        bootstrap_table(load_records(runs), against=('direct_transfer',), samples=10, pool_seeds=True)


def test_mechanism_checks(partial_study):
    runs = load_records(partial_study)
    study = source_runs(runs[runs.profile == 'converged'])
    premise = premise_table(study).set_index('target')
    assert premise.loc['bc5cdr', 'DT − TO'] == pytest.approx(2.0) and premise.loc['bc5cdr', 'seeds'] == 2
    assert premise.loc['bc5cdr', ['DT > TO', 'DT more on source spans']].tolist() == ['yes', 'yes']
    assert premise.loc['chemdner', ['DT > TO', 'DT more on source spans']].tolist() == ['no', 'n/a (no gold spans)']
    quality = pseudo_label_quality(study)
    assert list(quality.run) == ['EG+ED seed 13', 'EG+ED seed 42'] and list(quality.precision) == [30.0, 30.0]  # CHEMDNER's has none
    ablation = event_ablation(study, samples=200).set_index('comparison')
    assert ablation.loc['events: EG − EG without events', 'ΔF1'] == pytest.approx(1.0)
    assert ablation.loc['events: EG − EG without events', '95% interval'].startswith('[+')
    assert ablation.loc['ED on the EG stage 1: EG+ED − EG', 'ΔF1'] == pytest.approx(2.0)
    assert ablation.loc['EG stage 1, plain stage 2: EG − Direct Transfer', 'ΔF1'] == pytest.approx(2.0)
    assert ablation.loc['EG stage 1, plain stage 2: EG − Direct Transfer', '95% interval'].startswith('[+')
    assert len(ablation) == 3  # no ED run yet: its two comparisons wait for it


def test_calibration_is_kept_apart_and_chooses_a_regime(tmp_path):
    runs, calibration = tmp_path / 'runs', tmp_path / 'calibration'
    write_run(runs, 'target_only', f1=0.6)
    for regime, (to, dt), (fp_to, fp_dt) in (('adapter-lr1e-3', (0.60, 0.62), (0.04, 0.06)), ('full-lr1e-4', (0.70, 0.69), (0.05, 0.05))):
        write_run(calibration, 'target_only', f1=to, fp=fp_to, folder=calibration / regime / 'none' / 'bc5cdr-target_only-seed42')
        write_run(calibration, 'direct_transfer', f1=dt, fp=fp_dt, folder=calibration / regime / 'all' / 'bc5cdr-direct_transfer-seed42')
    assert len(load_records(runs)) == 1  # the study's and the cpu grid's tables never see the calibration runs
    table = calibration_table(load_calibration(calibration))
    assert list(table.regime) == ['adapter-lr1e-3', 'full-lr1e-4'] and list(table.converged) == ['yes', 'yes']
    assert calibration_choice(table).startswith('**The premise selects adapter-lr1e-3**')
    assert calibration_choice(table[table.regime == 'full-lr1e-4']).startswith('**No regime shows the premise.**')


def test_the_profile_regime_is_read_from_the_study(tmp_path):
    "The converged profile's own regime is the study's BC5CDR Target Only and Direct Transfer at seed 42, not a second copy."
    runs, calibration = tmp_path / 'runs', tmp_path / 'calibration'
    write_run(runs, 'target_only', f1=0.60, fp=0.04)
    write_run(runs, 'direct_transfer', f1=0.63, fp=0.07)
    write_run(runs, 'direct_transfer', f1=0.50, seed=13)  # another seed: not calibration
    write_run(runs, 'direct_transfer', f1=0.50, source='pc')  # another source: not calibration
    write_run(calibration, 'target_only', f1=0.70, folder=calibration / 'full-lr1e-4' / 'none' / 'bc5cdr-target_only-seed42')
    both = load_calibration(calibration, load_records(runs))
    assert sorted(both.regime) == ['converged profile', 'converged profile', 'full-lr1e-4']
    table = calibration_table(both).set_index('regime')
    assert table.loc['converged profile', 'mode'] == 'adapter'
    choice = calibration_choice(table.reset_index())  # the only complete regime: it holds there, and nothing was chosen
    assert choice.startswith('**The premise holds in converged profile**, the only regime with both runs so far')
    assert choice.endswith('Not yet comparable (a run missing): full-lr1e-4.')


def test_grid_differences_from_the_records(partial_study):
    records = load_records(partial_study)
    differences = grid_differences({'cpu grid': records[records.profile == 'cpu'], 'study': records[records.profile == 'converged']})
    differences = differences.set_index('what')
    assert differences.loc['mode', ['cpu grid', 'study', 'differs']].tolist() == ['full', 'adapter', 'yes']
    assert differences.loc['max_length', 'differs'] == 'yes' and differences.loc['stage-1 lr', 'differs'] == 'no'
    assert differences.loc['stage-2 epochs trained', 'cpu grid'] == '10'


def test_grid_outcomes_and_why_they_moved(partial_study):
    "BC5CDR only (the cpu grid has no CHEMDNER record); the study's seeds 13 and 42 against the cpu grid's 42."
    records = source_runs(load_records(partial_study))
    outcomes = grid_outcomes({'cpu grid': records[records.profile == 'cpu'], 'study': records[records.profile == 'converged']})
    assert outcomes[['target', 'grid', 'seeds']].values.tolist() == [['bc5cdr', 'cpu grid', '42'], ['bc5cdr', 'study', '13, 42']]
    assert outcomes['DT − TO'].round(6).tolist() == [-1.0, 2.0] and outcomes['EG+ED − DT'].round(6).tolist() == [-1.0, 4.0]
    assert outcomes['TO on source spans %'].round(6).tolist()[1] == 4.0
    text = grid_shift_markdown(outcomes, 'cpu grid', 'study')
    assert text.startswith('**bc5cdr** (cpu grid: seed 42; study: seeds 13, 42)')
    assert 'Target Only 70.00 → 60.00 (-10.00)' in text and 'its fall is most likely the regime' in text
    assert 'EG+ED − DT changed sign' in text


@pytest.mark.slow
def test_the_study_page_on_a_partial_study(partial_study, tmp_path, data_dir):
    "The page, executed as the site executes it, on the partial study: tables where there are records, plain words where not."
    from metricner.site import execute_page, page_copy
    page = page_copy(PROJECT_ROOT / 'nbs' / 'study.ipynb', tmp_path / 'page' / 'study.ipynb', hide_input=True)
    plan = config_from_parameters(next(run for run in study_grid() if run['setting'] == 'direct_transfer'))
    in_training = tmp_path / 'stages' / f'{source_stage_key(plan, plan.backbone)}.progress'  # the pooled CE stage 1, 2 epochs in
    in_training.mkdir(parents=True)
    history = [dict(epoch=e, ce=1.0, ms=0.0, dev_precision=f, dev_recall=f, dev_f1=f, seconds=600.0) for e, f in ((1, 0.0), (2, 0.2))]
    (in_training / 'progress.json').write_text(json.dumps({'history': history}))
    execute_page(page, {**os.environ, 'METRICNER_RESULTS': str(partial_study), 'METRICNER_CALIBRATION': str(tmp_path / 'calibration'),
                        'METRICNER_STAGES': str(tmp_path / 'stages'), 'OMP_NUM_THREADS': '1'})
    outputs = [o for cell in json.loads(page.read_text())['cells'] for o in cell.get('outputs', [])]
    assert not [o for o in outputs if o['output_type'] == 'error']
    text = '\n'.join(''.join(o.get('data', {}).get('text/markdown', '')) for o in outputs)
    assert f'of the {len(study_grid())} planned runs are recorded' in text
    assert 'No study record of drugprot yet.' in text and 'No study record of bc5cdr' not in text
    assert 'pooled: 13, 42' in text and 'not converged: stage 2 stopped by max_epochs at epoch 1000' in text
    assert 'reference, capped at 200 epochs' in text and 'By claim, over the targets' in text
    assert 'converged profile' in text and 'events: EG − EG without events' in text  # its BC5CDR baselines are the profile's regime
    assert '| mode ' in text and 'DT − TO went' in text  # the grid differences and outcomes: the cpu grid against the study
    assert re.search(r'\| stages in training +\| +1 \| +0\.33 \|', text)  # its two epochs of 600 s
    assert '| stage 1: source all, CE only | 9 runs: Direct Transfer (seeds 13, 42, 87), ED (seed 42) on bc5cdr, drugprot, chemdner' in text
    assert sum('image/png' in o.get('data', {}) for o in outputs) >= 5  # stages in training, scores, shift, false positives, ED term


def test_the_converged_grid_is_the_study_and_calibration_runs_apart(tmp_path):
    from metricner.experiments import config_from_parameters, resolve
    from metricner.grid import calibration_grid, grid, grid_commands, run_folder
    assert grid('converged') == study_grid()
    first = grid('converged')[:2]
    assert [(r['target'], r['setting'], r['seed']) for r in first] == [('bc5cdr', 'direct_transfer', 42), ('bc5cdr', 'direct_transfer', 13)]
    runs = calibration_grid(tmp_path)
    assert {r['setting'] for r in runs} == {'direct_transfer', 'target_only'}
    for run in runs:
        assert run_folder(run) == Path(run['out_dir']) and run_folder(run).is_relative_to(tmp_path / 'full-lr1e-4')
        config = resolve(config_from_parameters(run))
        assert (config.mode, config.source_train['lr'], config.target_train['lr']) == ('full', 1e-4, 1e-4)
        assert config.source_train['batch_size'] == 64  # the profile's other values stay
    for command in grid_commands(runs, root=tmp_path): assert command.count('--out') == 1
