# Two commands do everything: `make run` (demo API + Airflow on SQLite) and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.txt constraints.txt | sha1sum | cut -c1-12)
export PYTHONPATH := $(CURDIR)/plugins:$(CURDIR)/include:$(CURDIR)/tests

.PHONY: install run test lint lint-specs schema browser format bench clean

$(STAMP): requirements.txt constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt -c constraints.txt
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)  ## create .venv and install the pinned requirements

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

test: install lint browser  ## the whole suite (CI=true: missing services fail instead of skipping)
	$(BIN)/python -m pytest -p no:cacheprovider $(PYTEST_ARGS)

bench: install  ## print the benchmark tables
	$(BIN)/python tests/bench/run_bench.py $(BENCH_ARGS)
	$(BIN)/python tests/bench/run_bench_workflows.py $(BENCH_ARGS)
	$(BIN)/python tests/bench/run_bench_syncs.py $(BENCH_ARGS)

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .airflow .pytest_cache .ruff_cache
