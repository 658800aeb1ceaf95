# Entry points: `make repro` (environment + full pipeline), `make test` (environment + the fast
# tests), `make test-all` (every test; what CI runs).
PYTHON ?= python3
VENV   := .venv
BIN    := $(abspath $(VENV)/bin)
# DVC runs each stage's `python ...` through the shell: the venv must come first on PATH.
RUN    := PATH="$(BIN):$$PATH"
# gperftools' tcmalloc where it is installed (Debian: libtcmalloc-minimal4), preloaded for the
# pipeline's runs: PyTorch's CPU kernels allocate and free large buffers every training step,
# which glibc's malloc hands back to the kernel and faults in again (`make bench-alloc`).
TCMALLOC := $(firstword $(wildcard /usr/lib/*/libtcmalloc_minimal.so.4 /usr/lib/libtcmalloc_minimal.so.4))
FAST   := $(RUN) $(if $(TCMALLOC),LD_PRELOAD=$(TCMALLOC))

.PHONY: env test-env repro quick replicates compare grid published test test-all bench bench-train bench-queue bench-grid bench-layouts bench-alloc clean-env

env: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# setuptools >= 77 reads pyproject.toml's SPDX license string (the editable install below)
	$(BIN)/python -m pip install --quiet --upgrade pip "setuptools>=77"
	$(BIN)/python -m pip install --quiet -r requirements.txt
	# the library itself, editable: stages, tests and benchmarks import vaepipe from this checkout
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# the runtime environment plus what the tests and benchmarks need (requirements-test.txt)
test-env: $(VENV)/.installed-test

$(VENV)/.installed-test: $(VENV)/.installed requirements-test.txt
	$(BIN)/python -m pip install --quiet -r requirements-test.txt
	touch $@

repro: env
	$(FAST) dvc repro

# A first look: the whole pipeline with a few epochs, as a temporary DVC experiment named
# "quick" (`dvc exp run --temp`): the workspace and its outputs stay as they are. Its reports/
# (git-tracked in the experiment) and report.html (in the DVC cache) are then copied into quick/
# (git-ignored); `dvc exp show` lists its metrics beside the workspace's, `dvc exp remove quick`
# drops it.
QUICK_PARAMS := -S mlp.epochs=2 -S mlp.warmup_epochs=1 -S conv.epochs=2 -S sweep.epochs=1 \
	-S classifier.epochs=1 -S evaluate.samples=500 -S evaluate.iwae_images=50 \
	-S visualize.scatter_points=500 -S visualize.tsne_iterations=250

quick: env
	$(RUN) dvc exp remove quick >/dev/null 2>&1 || true
	$(FAST) dvc exp run --temp --name quick $(QUICK_PARAMS)
	rm -rf quick && mkdir quick
	ref=$$(git for-each-ref --format='%(refname)' refs/exps | grep '/quick$$' | head -n 1) && \
		git archive "$$ref" reports | tar -x -C quick && \
		$(RUN) dvc get . reports/report.html --rev "$$ref" -o quick/reports/report.html
	@echo "quick: open quick/reports/report.html (or report.md); its metrics: dvc exp show"

# Seed replicates of the workspace's params (the VAEs and their evaluation; the classifier and
# the sweep have seeds of their own), run one at a time with a fixed thread count
SEEDS ?= 1,2
replicates: env
	$(RUN) dvc exp run --queue -S seed=$(SEEDS)
	VAEPIPE_THREADS=$(or $(VAEPIPE_THREADS),2) $(FAST) dvc queue start -j 1
	@echo "replicates: queued; \`dvc queue status\` shows them, then \`make compare\`"

# Groups the finished experiments by their params other than seed and says which differences
# beat the seeds' noise; reads `dvc exp show --json` only
compare: env
	$(RUN) python -m vaepipe.compare --png reports/compare.png

# A grid of experiments on a Dask cluster, one point per task (docs/cluster.md): GRID holds the
# `-S` settings, SCHEDULER a running scheduler's address (default: a local cluster here)
GRID ?= -S seed=1,2
grid: env
	$(FAST) python -m vaepipe.grid $(GRID) $(if $(SCHEDULER),--scheduler $(SCHEDULER))

# The published Fashion-MNIST table (docs/published.md), one experiment per row:
# `make published ROW=vae-gaussian` runs `dvc exp run -n fmnist-<row>` with the row's settings.
# The literature's protocol: file-order split 50,000 / 10,000, dynamic binarization with the
# validation and test images drawn once by numpy's seed 777, gated layers, z 40 per level,
# hidden 300, AdamNormGrad lr 5e-4, batch 100, single-sample KL, warm-up 100 epochs, early
# stopping after 50 epochs without a better validation loss (at most 2000), and the test NLL
# with 5000 importance samples on the best checkpoint.
PROTOCOL_DATA := -S data.split_order=file -S data.val_fraction=0.16667 \
	-S data.binarize=dynamic -S data.binarize_seed=777
protocol = -S $(1).gated=true -S $(1).latent_dim=40 -S $(1).kl_estimate=single_sample \
	-S $(1).optimizer=adamnormgrad -S $(1).lr=0.0005 -S $(1).batch_size=100 \
	-S $(1).kl_schedule=linear -S $(1).warmup_epochs=100 -S $(1).epochs=2000 \
	-S $(1).patience=50 -S $(1).pseudo_inputs=500 -S evaluate.nll_samples.$(1)=5000
MLP_ROW  := $(PROTOCOL_DATA) $(call protocol,mlp) -S 'mlp.hidden=[300,300]'
CONV_ROW := $(PROTOCOL_DATA) $(call protocol,conv) -S 'conv.channels=[32,64]' -S conv.levels=2
ROW_vae-gaussian        := $(MLP_ROW)
ROW_vae-vampprior       := $(MLP_ROW) -S mlp.prior=vampprior
ROW_hvae-gaussian       := $(MLP_ROW) -S mlp.levels=2
ROW_hvae-vampprior      := $(MLP_ROW) -S mlp.levels=2 -S mlp.prior=vampprior
ROW_convhvae-gaussian   := $(CONV_ROW)
ROW_convhvae-vampprior  := $(CONV_ROW) -S conv.prior=vampprior
ROWS := vae-gaussian vae-vampprior hvae-gaussian hvae-vampprior convhvae-gaussian convhvae-vampprior
ROW ?= vae-gaussian
published: env
	$(if $(ROW_$(ROW)),,$(error ROW must be one of: $(ROWS); got '$(ROW)'))
	$(FAST) dvc exp run -n fmnist-$(ROW) $(ROW_$(ROW)) $(EXTRA)

test: test-env
	$(RUN) python -m pytest -m "not slow"

test-all: test-env
	$(RUN) python -m pytest

# the whole pipeline in a temporary clone (`dvc repro -f`), per stage, against the reference
bench: test-env
	$(RUN) dvc repro download
	$(RUN) python bench/pipeline.py $(if $(TCMALLOC),--preload $(TCMALLOC))

bench-train: test-env
	$(RUN) dvc repro split
	$(RUN) python bench/train_throughput.py

bench-queue: test-env
	$(FAST) python bench/exp_queue.py

# a 4-point seed grid one after another, with `dvc queue start -j 2` and through
# `python -m vaepipe.grid` (2 local workers), at a reduced budget on the real data
bench-grid: test-env
	$(FAST) python bench/grid.py

# channels-last against contiguous conv models, one process, alternating blocks of steps
bench-layouts: test-env
	$(RUN) python bench/layouts.py

# glibc's malloc against tcmalloc, alternating child processes
bench-alloc: test-env
	$(RUN) python bench/allocator.py $(TCMALLOC)

clean-env:
	rm -rf $(VENV)
