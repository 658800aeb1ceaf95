# Two entry points: `make repro` (environment + full pipeline) and `make test` (environment + tests).
PYTHON ?= python3
VENV   := .venv
BIN    := $(abspath $(VENV)/bin)
# DVC runs each stage's `python ...` through the shell: the venv must come first on PATH.
RUN    := PATH="$(BIN):$$PATH"

.PHONY: env repro test test-all bench bench-train bench-queue bench-layouts bench-alloc clean-env

env: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	# the library itself, editable: stages, tests and benchmarks import vaepipe from this checkout
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

repro: env
	$(RUN) dvc repro

test: env
	$(RUN) python -m pytest -m "not slow"

test-all: env
	$(RUN) python -m pytest

# the whole pipeline in a temporary clone (`dvc repro -f`), per stage, against the reference
bench: env
	$(RUN) dvc repro download
	$(RUN) python bench/pipeline.py

bench-train: env
	$(RUN) dvc repro split
	$(RUN) python bench/train_throughput.py

bench-queue: env
	$(RUN) python bench/exp_queue.py

# channels-last against contiguous conv models, one process, alternating blocks of steps
bench-layouts: env
	$(RUN) python bench/layouts.py

# glibc's malloc against the tcmalloc the stages preload, alternating child processes
bench-alloc: env
	$(RUN) python bench/allocator.py

clean-env:
	rm -rf $(VENV)
