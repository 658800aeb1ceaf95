# Two entry points: `make repro` (environment + full pipeline) and `make test` (environment + tests).
PYTHON ?= python3
VENV   := .venv
BIN    := $(abspath $(VENV)/bin)
# DVC runs each stage's `python ...` through the shell: the venv must come first on PATH.
RUN    := PATH="$(BIN):$$PATH"

.PHONY: env repro test test-all bench clean-env

env: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

repro: env
	$(RUN) dvc repro

test: env
	$(RUN) python -m pytest -m "not slow"

test-all: env
	$(RUN) python -m pytest

bench: env
	$(RUN) dvc repro split
	$(RUN) python bench/train_throughput.py

clean-env:
	rm -rf $(VENV)
