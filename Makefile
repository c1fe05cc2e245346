# The project's commands. A fresh machine needs only `make experiment` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export METRICNER_DATA ?= $(CURDIR)/data/corpora

.PHONY: install test test-fast check-sync readme nbtest pytest pytest-fast experiment results report browser-check stats bench clean-venv

install: $(STAMP)

# Re-runs only when the dependency list changes; torch comes pinned from settings.ini (2.13.0, CPU wheel).
$(STAMP): settings.ini setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,site]'
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

# The CI contract: notebooks clean and in sync with the library, notebook tests, then pytest.
test: install check-sync nbtest pytest

# For everyday work: the same without the tests marked `slow` (experiments end to end, subprocesses, the wheel).
test-fast: install check-sync nbtest pytest-fast

check-sync: install
	$(BIN)/nbdev_clean
	@git diff --exit-code -- nbs || { echo "nbdev_clean changed notebooks: run 'make install && .venv/bin/nbdev_clean' and commit"; exit 1; }
	$(BIN)/nbdev_export
	@git diff --exit-code -- metricner || { echo "metricner/ is out of sync with nbs/: run '.venv/bin/nbdev_export' and commit"; exit 1; }
	@test -z "$$(git status --porcelain --untracked-files=all -- metricner nbs)" || { git status --short -- metricner nbs; echo "untracked files appeared in nbs/ or metricner/: commit them"; exit 1; }
	$(MAKE) --no-print-directory readme
	@git diff --exit-code -- README.md || { echo "README.md is out of sync with nbs/index.ipynb: run 'make readme' and commit"; exit 1; }

# README.md is generated from nbs/index.ipynb (nbdev_readme needs Quarto, which this project cannot assume).
readme: install
	$(BIN)/jupyter nbconvert --log-level ERROR --to markdown --stdout nbs/index.ipynb > README.md

nbtest: install
	@if [ -d "$(METRICNER_DATA)" ]; then flags=corpora; else flags=; echo "note: corpora not found at $(METRICNER_DATA); notebook cells flagged #|corpora are skipped"; fi; \
	$(BIN)/nbdev_test --n_workers 1 --do_print --flags "$$flags"

pytest: install
	$(BIN)/pytest -q tests

pytest-fast: install
	$(BIN)/pytest -q -m 'not slow' tests

# The main job: the default experiment (EG+ED, pooled source → CHEMDNER, cpu profile), also as an executed notebook.
experiment: install
	@$(BIN)/metricner stats chemdner all > /dev/null || { echo "The corpora are missing: run '$(BIN)/metricner download' (or set METRICNER_DATA to a folder that has them), then 'make experiment' again."; exit 1; }
	mkdir -p results/runs/cpu/all/chemdner-eg_ed-sentenc-seed42
	$(BIN)/papermill nbs/run_experiment.ipynb results/runs/cpu/all/chemdner-eg_ed-sentenc-seed42/run.ipynb --cwd nbs \
		-p target chemdner -p source all -p setting eg_ed -p events sentenc -p profile cpu -p seed 42

# Runs the missing cells of the published grid (cpu profile); resumable, skips what is recorded for this code.
results: install
	$(BIN)/python -c "from metricner.grid import run_grid; run_grid()"

# The report site from the committed records alone (Quarto where installed, else Sphinx with myst-nb) into _site/,
# then checked: every link and image resolves, every page has the navigation, nothing names this machine.
report: install
	@start=$$(date +%s); $(BIN)/python -c "from metricner.site import build_site; print(build_site())" && \
	echo "site built in $$(( $$(date +%s) - start )) s"
	$(BIN)/python -c "from metricner.site import check_site; problems = check_site('_site'); print(*problems, sep='\n'); raise SystemExit(bool(problems))"

# The built site in headless Chromium (Debian: apt-get install chromium): front page, results page, one run page;
# screenshots in _site_shots/. Fails on a JavaScript error, a failed load, an image that does not load, or a request
# to the internet.
browser-check: install
	$(BIN)/pytest -q tests/test_site.py -k browser

stats: install
	$(BIN)/metricner stats

# Speed and efficiency on this machine (a few minutes; run it on an otherwise idle machine).
bench: install
	$(BIN)/metricner bench --quick

clean-venv:
	rm -rf $(VENV)
