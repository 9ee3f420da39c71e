# trustlab: the two commands a newcomer needs are `make repro` and `make test`.
# Both create .venv when it is missing and install the pinned set (requirements.lock);
# when it is already set up they only check a stamp, so they are fast and idempotent.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1
export WANDB_ERROR_REPORTING := false
export PYTHONPATH := $(CURDIR)/lib

.PHONY: setup repro test test-fast bench lab wandb-sync lock params-check clean-venv help

help:
	@echo "make repro       set up .venv and run the whole pipeline (dvc repro)"
	@echo "make test        set up .venv and run the whole test suite"
	@echo "make bench       benchmark the tiny GPT (training, generation, attention paths)"
	@echo "make lab         start JupyterLab with the project kernel and Jupytext"
	@echo "make wandb-sync  upload every offline W&B run"
	@echo "make lock        re-resolve and rewrite requirements.lock"

$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -c requirements.lock -e ".[hf,dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (trustlab)" >/dev/null
	$(BIN)/dvc config --local core.analytics false >/dev/null 2>&1 || true
	@touch $(STAMP)

setup: $(STAMP)

repro: setup
	$(BIN)/dvc repro

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not e2e and not browser"

bench: setup
	$(BIN)/python pipelines/bench.py

lab: setup
	$(BIN)/jupyter lab --notebook-dir=$(CURDIR)

wandb-sync: setup
	@ls -d wandb/offline-run-* >/dev/null 2>&1 || { echo "no offline runs under wandb/"; exit 0; }
	$(BIN)/wandb sync --include-offline wandb/offline-run-*

params-check: setup
	$(BIN)/python -c "from trustlab.config import load_params; from trustlab.sections import validate_params; validate_params(load_params()); print('params.yaml is valid')"

lock:
	$(BIN)/python -m pip freeze --exclude-editable | sed -E 's/^torch==([0-9.]+)\+cpu$$/torch==\1/' > requirements.lock

clean-venv:
	rm -rf $(VENV)
