"The report site as a reader meets it: built from the committed records, checked page by page and in a real browser."
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from metricner.report import load_records, published_runs, source_runs
from metricner.grid import default_runs_dir, study_grid
from metricner.paths import PROJECT_ROOT
from metricner.site import NAV_LABELS, browser_check, build_site, check_site, render_with_quarto, stage_site

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def site(tmp_path_factory) -> Path:
    "The site of the committed records: `METRICNER_SITE` where `make report` already built it (CI), else built here."
    if os.environ.get('METRICNER_SITE'): return Path(os.environ['METRICNER_SITE'])
    return build_site(tmp_path_factory.mktemp('site') / '_site', use_quarto=False).parent


def test_every_link_image_and_navigation_entry_resolves_and_nothing_names_the_machine(site):
    assert check_site(site) == []


def test_the_pages_a_reader_expects(site):
    front = (site / 'index.html').read_text(encoding='utf-8')
    assert 'The answer here:' in front and '<figcaption' in front and 'results/cpu.html#claims' in front
    results = (site / 'results' / 'cpu.html').read_text(encoding='utf-8')
    assert 'Made with older code.' in results and 'No records yet' not in results  # the committed grid is shown, labelled
    assert results.count('<figcaption') >= 5 and 'id="claims"' in results and 'id="bootstrap"' in results
    study = (site / 'results' / 'study.html').read_text(encoding='utf-8')
    recorded = len(load_records(default_runs_dir()).query("profile == 'converged' and current"))  # the page counts these as done
    if recorded:  # the committed study records are shown, and what is missing is said in words
        assert 'How far the study has got' in study and f'{recorded} of the {len(study_grid())} planned runs' in study and '<table' in study
        assert 'Still to be made' in study
    else:
        assert 'No run of the study is recorded yet.' in study and 'No calibration run is recorded yet' in study and '<table' not in study
    assert 'results/study.html' in front
    study_runs = source_runs(published_runs(load_records(default_runs_dir()), 'converged')[0])
    if {'eg_ed', 'direct_transfer'} <= set(study_runs.setting):  # the front page gives the study's answer so far
        assert 'So far, EG+ED minus Direct Transfer in test F1' in front
    runs = (site / 'runs' / 'chemdner.html').read_text(encoding='utf-8')
    assert 'EG+ED concat seed 42' in runs and 'older code' in runs and '<strong>' in runs  # runs by setting, best in bold
    shown = load_records(default_runs_dir()).query("profile in ('cpu', 'converged')")  # the cpu grid's and the study's
    assert len(list((site / 'runs').rglob('*seed*.html'))) == len(shown)  # a page for every run, with a notebook or without
    without_notebook = [folder for folder in shown.folder if not (Path(folder) / 'run.ipynb').exists()]  # made with `metricner run`
    assert without_notebook, 'the committed study records were made with `metricner run`: expected runs without a notebook'
    page = site / 'runs' / f'{Path(without_notebook[0]).relative_to(default_runs_dir()).as_posix()}.html'
    text = page.read_text(encoding='utf-8')
    assert 'without a notebook' in text and 'How it trained' in text and '<img' in text
    assert not list(site.rglob('*.ipynb')) and (site / '_static' / 'mathjax' / 'tex-chtml.js').exists()


def test_in_a_real_browser(site):
    "Headless Chromium opens the front page, the results page, a run page and a page with formulas, offline."
    chromium = shutil.which('chromium') or shutil.which('chromium-browser')
    if chromium is None:
        if os.environ.get('CI') == 'true': pytest.fail('chromium is not installed (apt-get install -y chromium)')
        pytest.skip('chromium is not installed')
    run = next((site / 'runs').rglob('*eg_ed*seed42.html')).relative_to(site).as_posix()
    pages = ['index.html', 'results/cpu.html', 'results/study.html', run, 'api/03_losses.html']
    shots = PROJECT_ROOT / '_site_shots'
    report = browser_check(site, pages, shots, chromium=chromium)
    assert report['problems'] == []
    assert all((shots / report[page]['screenshots'][0]).stat().st_size > 10_000 for page in pages)
    assert report['api/03_losses.html']['math'] > 0 and report['api/03_losses.html']['raw_math'] == 0  # formulas rendered offline
    assert report['results/cpu.html']['broken_images'] == []


def test_quarto_gets_the_same_pages_and_navigation(tmp_path, monkeypatch):
    "With Quarto, the staged `_quarto.yml` holds the page tree the Sphinx build uses; every page it names is staged."
    fake = tmp_path / 'bin' / 'quarto'
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\ncp _quarto.yml "$SEEN"\necho "$@" >> "$SEEN.args"\n')
    fake.chmod(0o755)
    monkeypatch.setenv('PATH', f'{fake.parent}{os.pathsep}{os.environ["PATH"]}')
    monkeypatch.setenv('SEEN', str(tmp_path / 'seen.yml'))
    src = tmp_path / 'staged'
    nav, computed = stage_site(src, default_runs_dir(), ['cpu'], quarto=True)
    render_with_quarto(src, tmp_path / 'out', nav)
    config = yaml.safe_load((tmp_path / 'seen.yml').read_text())
    contents = config['website']['sidebar']['contents']
    assert [entry.get('text') or entry.get('section') for entry in contents] == list(NAV_LABELS)
    def hrefs(entries):
        for entry in entries:
            yield entry['href']
            yield from hrefs(entry.get('contents', []))
    assert all((src / href).exists() for href in hrefs(contents))
    assert [page.relative_to(src).as_posix() for page, _ in computed] == ['index.ipynb', 'results/cpu.ipynb', 'results/study.ipynb']
    assert '```{toctree}' not in (src / 'runs' / 'chemdner.md').read_text()  # Sphinx's navigation stays out of Quarto's pages
    assert (tmp_path / 'seen.yml.args').read_text().split() == ['render', '--output-dir', str(tmp_path / 'out')]
