# Set-up and the main entry points; `make` alone lists them. Every target that runs Python creates
# .venv on first use (Python >= 3.10). CPU-only machine: `make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu`.
PY          ?= python3
VENV        ?= .venv
MODEL       ?= cnn
RECIPE      ?=
DATA        ?=
EPOCHS      ?=
ARGS        ?=
TORCH_INDEX ?=
BIN          = $(VENV)/bin

.DEFAULT_GOAL := help
.PHONY: help setup install train test test-slow test-all notebook-setup notebook notebooks results bench

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'
	@echo "  variables: MODEL=$(MODEL) RECIPE=<recipes/*.yaml> DATA=<ESC-50 dir> EPOCHS=<n> ARGS='<train.py options>' TORCH_INDEX=<pip index for torch>"

$(BIN)/.installed: requirements.txt
	@$(PY) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "Python >= 3.10 is required, found " + sys.version.split()[0] + " (set PY=python3.1x)")'
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(if $(TORCH_INDEX),$(BIN)/pip install -q --index-url $(TORCH_INDEX) $$(grep -E '^torch(audio|vision)?==' requirements.txt))
	$(BIN)/pip install -q -r requirements.txt
	touch $@

setup: $(BIN)/.installed  ## create .venv and install requirements.txt
	@echo "ready: activate with 'source $(VENV)/bin/activate' (or call $(BIN)/python)"

install: setup  ## also install the toolkit itself in development mode (pip install -e .; audio-train, audio-classify)
	$(BIN)/pip install -q --no-deps -e .

train: setup  ## train MODEL (default cnn) or a RECIPE on ESC-50: make train RECIPE=recipes/liquid_s4_esc50.yaml DATA=../shared/data/ESC-50
	$(BIN)/python train.py $(if $(RECIPE),--recipe $(RECIPE),--model $(MODEL)) $(if $(DATA),--data-dir $(DATA)) $(if $(EPOCHS),--epochs $(EPOCHS)) $(ARGS)

test: setup  ## fast tests (seconds to a few minutes; skips tests marked slow)
	$(BIN)/python -m pytest -m "not slow"

test-slow: setup  ## only the slow tests (notebooks executed end to end, DDP)
	$(BIN)/python -m pytest -m slow

test-all: setup  ## every test, slow ones included
	$(BIN)/python -m pytest

notebook-setup: setup
	$(BIN)/pip install -q -r requirements-notebooks.txt

notebook: notebook-setup  ## open the notebooks in JupyterLab (they write to runs/, never to checkpoints/ or results/ unless told)
	$(BIN)/jupyter lab --notebook-dir=notebooks

notebooks: setup  ## regenerate notebooks/*.ipynb from notebooks/make_notebooks.py
	$(BIN)/python notebooks/make_notebooks.py

results: setup  ## rebuild results/summary.json, results/results.md, the figures and the README tables from committed files
	$(BIN)/python benchmarks/collect_results.py --update-readme

bench: setup  ## the data-pipeline benchmark (others: benchmarks/*.py)
	$(BIN)/pip install -q -r requirements-bench.txt
	$(BIN)/python benchmarks/bench_data.py
