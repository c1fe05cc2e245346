"The console script and `python -m metricner.cli`, as a user runs them."
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_files

pytestmark = pytest.mark.slow  # every test starts the command in a subprocess

BIN = Path(sys.executable).parent


def run(*args, module=False):
    command = [sys.executable, '-m', 'metricner.cli', *args] if module else [str(BIN / 'metricner'), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_stats_json_on_real_corpora(data_dir):
    result = run('stats', 'pc', 'bc5cdr', '--json', '--data-dir', str(data_dir))
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert list(stats) == ['pc', 'bc5cdr']
    assert stats['pc']['train'] == {'documents': 260, 'events': 5992, 'mentions': {
        'Cellular_component': 478, 'Complex': 729, 'Gene_or_gene_product': 5468, 'Simple_chemical': 1180}}
    assert stats['bc5cdr']['test']['mentions'] == {'Chemical': 5385, 'Disease': 4424}


def test_stats_table_and_module_form(tmp_path):
    write_files(tmp_path, {'train/a.txt': 'MDM2 binds.', 'train/a.a1': 'T1\tProtein 0 4\tMDM2\n'})
    result = run('stats', f'standoff:{tmp_path}', module=True)
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()[:2]
    assert header.split()[:5] == ['corpus', 'split', 'documents', 'mentions', 'events']
    assert row.split()[1:5] == ['train', '1', '1', '0'] and 'Protein 1' in row


def test_errors_are_one_line(tmp_path):
    write_files(tmp_path, {'train/a.txt': 'MDM2 binds.', 'train/a.a1': 'T1\tProtein 0 4\tMDM9\n'})
    result = run('stats', f'standoff:{tmp_path}')
    assert result.returncode == 2
    assert result.stderr.strip().count('\n') == 0 and 'a.a1:1: T1: text' in result.stderr
    missing = run('stats', 'chemdner', '--data-dir', str(tmp_path))
    assert missing.returncode == 2 and 'metricner download chemdner' in missing.stderr


def test_results_status_and_dry_run():
    from metricner.grid import grid
    status = run('results', '--status')
    assert status.returncode == 0, status.stderr
    lines = status.stdout.strip().splitlines()
    assert len(lines) == 1 + len(grid()) + 1  # header, one line per run, the counts
    assert all(word in lines[0] for word in ('target', 'setting', 'seed', 'status'))
    dry = run('results', '--dry-run')
    assert dry.returncode == 0 and 'grid runs to do' in dry.stdout


def test_results_takes_one_part_of_the_study():
    from metricner.grid import study_grid
    singles = run('results', '--profile', 'converged', '--priority', '2', '--status')
    assert singles.returncode == 0, singles.stderr
    lines = singles.stdout.strip().splitlines()
    assert len(lines) == 1 + len(study_grid(2)) + 1 and lines[0].split()[0] == 'source'
    assert {line.split()[0] for line in lines[1:-1]} == {'pc', 'cg', 'id'}
    commands = run('results', '--profile', 'converged', '--priority', '2', '--commands').stdout.splitlines()
    assert len(commands) == len(study_grid(2)) and all('--source all' not in c for c in commands)
    for wrong in (['--priority', '1'], ['--profile', 'converged', '--priority', '4']):  # the cpu grid has no parts; no part 4
        result = run('results', *wrong, '--status')
        assert result.returncode == 2 and result.stderr.count('\n') == 1, result.stderr


def test_run_checks_its_configuration_before_reading_data(tmp_path):
    "The data folder is empty: a check made after reading data would fail with another message."
    result = run('run', '--profile', 'smoke', '--set', 'ms_source.alpah=3', '--data-dir', str(tmp_path))
    assert result.returncode == 2 and result.stderr.strip().count('\n') == 0, result.stderr
    assert "unknown ms_source key 'alpah' (did you mean 'alpha'?)" in result.stderr


def test_run_options_are_the_parameter_list():
    from metricner.experiments import PARAMETERS, SETTINGS
    result = run('run', '--help')
    assert result.returncode == 0, result.stderr
    for p in PARAMETERS: assert p.option in result.stdout, p.option
    assert '{' + ','.join(SETTINGS) + '}' in result.stdout and 'EG+ED' in result.stdout  # choices and labels from the registry
