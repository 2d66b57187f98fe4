# Set-up and the main entry points. `make train` and `make test` create .venv on first use.
PY      ?= python3
VENV    ?= .venv
MODEL   ?= cnn
DATA    ?=
EPOCHS  ?=
ARGS    ?=
BIN      = $(VENV)/bin

$(BIN)/.installed: requirements.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	touch $@

.PHONY: setup train test bench
setup: $(BIN)/.installed

train: setup
	$(BIN)/python train.py --model $(MODEL) $(if $(DATA),--data-dir $(DATA)) $(if $(EPOCHS),--epochs $(EPOCHS)) --out runs/$(MODEL) $(ARGS)

test: setup
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/pip install -q -r requirements-bench.txt
	$(BIN)/python benchmarks/bench_data.py
