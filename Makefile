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

.PHONY: setup repro test test-fast browser-deps bench bench-base-model replicate lab front-page plots plots-diff plots-template \
	wandb-sync wandb-report lock params-check clean-venv help

# The browser test (tests/e2e/test_browser.py) drives Debian's headless Chromium.
BROWSER_PACKAGES := chromium chromium-driver

help:
	@echo "make repro       set up .venv and run the whole pipeline (dvc repro)"
	@echo "make test        set up .venv and run the whole test suite"
	@echo "make bench       benchmark the tiny GPT (training, generation, attention paths)"
	@echo "make bench-base-model  base-model training: 1 thread vs 2 threads vs 2 DDP processes"
	@echo "make replicate   rerun everything with base_model.seed 1 and mark fragile verdicts (as long as repro)"
	@echo "make lab         start JupyterLab with the project kernel and Jupytext"
	@echo "make front-page  (re)render reports/index.html from whatever reports exist"
	@echo "make plots       dvc plots show, rendered offline (vendored vega) -> dvc_plots/index.html"
	@echo "make plots-diff  dvc plots diff against HEAD (or REV=<rev>), rendered offline"
	@echo "make wandb-sync  upload every offline W&B run"
	@echo "make wandb-report  build a W&B Report of the claims (W&B online only)"
	@echo "make lock        re-resolve and rewrite requirements.lock"

$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -c requirements.lock -e ".[hf,dev,wandb-report]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (trustlab)" >/dev/null
	$(BIN)/dvc config --local core.analytics false >/dev/null 2>&1 || true
	@touch $(STAMP)

setup: $(STAMP)

repro: setup
	$(BIN)/dvc repro

test: setup browser-deps
	$(BIN)/python -m pytest -q -n 2 --dist worksteal

test-fast: setup
	$(BIN)/python -m pytest -q -m "not e2e and not browser"

# Installs Chromium + ChromeDriver for the browser test when they are missing and we are root
# (CI, containers); otherwise the test skips and names the command. Fast when present.
# In CI (CI=true) a Chromium that cannot be installed is an error, not a skip.
browser-deps:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing $(BROWSER_PACKAGES) for the browser test (apt-get)"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q $(BROWSER_PACKAGES) >/dev/null 2>&1 \
	  || { apt-get update -q >/dev/null && apt-get install -y -q $(BROWSER_PACKAGES) >/dev/null; } \
	  || { if [ -n "$$CI" ]; then echo "error: could not install $(BROWSER_PACKAGES), which CI needs for the browser test" >&2; exit 1; fi; \
	       echo "warning: could not install $(BROWSER_PACKAGES); the browser test will skip"; }; \
	elif [ -n "$$CI" ]; then \
	  echo "error: CI needs headless Chromium for the browser test: apt-get install -y $(BROWSER_PACKAGES)" >&2; exit 1; \
	else \
	  echo "note: no headless Chromium; the browser test will skip (install: sudo apt-get install -y $(BROWSER_PACKAGES))"; \
	fi

bench: setup
	$(BIN)/python pipelines/bench.py

# 1 thread vs 2 threads vs 2 DDP processes for the base model's training (needs data/generated)
bench-base-model: setup
	$(BIN)/dvc repro data
	$(BIN)/python pipelines/bench_base_model.py --out reports/bench/base_model.json

# The whole pipeline again with base_model.seed 1 in a clone of HEAD: marks fragile verdicts
replicate: setup
	$(BIN)/python pipelines/replicate_base_seed.py --seed 1
	$(BIN)/dvc repro front_page

# JUPYTER_PATH first: the venv's "python3" kernelspec (the project interpreter) wins over any
# user-level one; jupytext's server extension (installed in the venv) pairs .ipynb and .py.
# (Jupyter refuses to run as root without --allow-root: containers and CI run as root.)
lab: setup
	JUPYTER_PATH=$(CURDIR)/$(VENV)/share/jupyter $(BIN)/jupyter lab --ServerApp.root_dir=$(CURDIR) \
	  $$( [ "$$(id -u)" = 0 ] && echo --allow-root )

front-page: setup
	$(BIN)/python pipelines/render_front_page.py

# The HTML template comes from .dvc/config (plots.html_template = plots/offline.html).
plots: setup
	$(BIN)/dvc plots show -o dvc_plots
	@echo "open dvc_plots/index.html (renders offline)"

REV ?= HEAD
plots-diff: setup
	$(BIN)/dvc plots diff $(REV) -o dvc_plots
	@echo "open dvc_plots/index.html (renders offline)"

# Re-vendor vega/vega-lite/vega-embed from the npm registry into .dvc/plots/offline.html.
plots-template:
	$(PYTHON) .dvc/plots/build_offline_template.py

# `wandb sync` with no path uploads every run under ./wandb not yet synced; --yes: no prompt.
wandb-sync: setup
	@ls -d wandb/offline-run-* >/dev/null 2>&1 || { echo "no offline runs under wandb/"; exit 0; }
	$(BIN)/wandb sync --yes

wandb-report: setup
	$(BIN)/python -m trustlab.tracking.wandb_report

params-check: setup
	@$(BIN)/python pipelines/check_params.py

lock:
	$(BIN)/python -m pip freeze --exclude-editable | sed -E 's/^torch==([0-9.]+)\+cpu$$/torch==\1/' > requirements.lock

clean-venv:
	rm -rf $(VENV)
