# Two commands do everything: `make run` (demo API + Airflow on SQLite) and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.txt constraints.txt | sha1sum | cut -c1-12)
export PYTHONPATH := $(CURDIR)/plugins:$(CURDIR)/include:$(CURDIR)/tests

.PHONY: install dev-metadata run test lint lint-specs schema browser format bench dist docs clean

$(STAMP): requirements.txt constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt -c constraints.txt
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP) dev-metadata  ## create .venv and install the pinned requirements

dev-metadata: $(STAMP)  # the checkout as a provider: plugins/<dist>.dist-info (entry points, git-ignored)
	@$(BIN)/python include/devtools/dev_metadata.py >/dev/null

run: install  ## start the demo API and Airflow (UI on :8080, admin/admin); Ctrl-C stops everything
	$(BIN)/python include/devtools/run_local.py

lint: install lint-specs  ## ruff and the workflow specs, as CI runs them
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	PYTHONPATH=plugins $(BIN)/lint-imports

lint-specs: install  ## validate every workflow spec in include/workflows (exit 1 if any is bad)
	AIRFLOW_HOME=$${AIRFLOW_HOME:-$(CURDIR)/.airflow} $(BIN)/python -m api_orchestration validate include/workflows

schema: install  ## write the JSON Schema of workflow specs (for editors) to include/workflows/schema.json
	AIRFLOW_HOME=$${AIRFLOW_HOME:-$(CURDIR)/.airflow} $(BIN)/python -m api_orchestration schema --output include/workflows/schema.json

browser:  ## headless Chromium for the UI test (Debian package; needs root or sudo, skipped if present)
	@command -v chromium >/dev/null || { if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; }

test: install lint docs browser  ## the whole suite (CI=true: missing services fail instead of skipping)
	$(BIN)/python -m pytest -p no:cacheprovider $(PYTEST_ARGS)

bench: install  ## print the benchmark tables
	$(BIN)/python tests/bench/run_bench.py $(BENCH_ARGS)
	$(BIN)/python tests/bench/run_bench_workflows.py $(BENCH_ARGS)
	$(BIN)/python tests/bench/run_bench_syncs.py $(BENCH_ARGS)

dist: install  ## build the wheel and sdist into dist/ (python -m build) and check them (twine check)
	rm -rf dist
	$(BIN)/python include/devtools/build_dist.py --outdir dist
	$(BIN)/twine check --strict dist/*

docs: install  ## the documentation site (Sphinx, autodoc) into docs/_build/html; warnings are errors
	$(BIN)/sphinx-build -W --keep-going -q -b html docs docs/_build/html

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .airflow .pytest_cache .ruff_cache dist build docs/_build plugins/*.dist-info plugins/*.egg-info
