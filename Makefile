# speechssl: `make test` and (later) `make demo` do every set-up step themselves.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch 2.14.1 is the build served on this project's machines (a local wheel here,
# CUDA-enabled, so the same venv runs on a GPU machine). Never pin a +cpu build:
# torchaudio does not load with it.
TORCH  ?= torch==2.14.1
S3PRL  ?= s3prl==0.4.18

.PHONY: install test demo clean bench-deps bench

DEMO   ?= runs/demo
CORPUS ?= data/superb_lite
# ASR's BiLSTM head takes about 5 minutes a run on a CPU core: TASKS="pr ks ic sid er asr" adds it
TASKS  ?= pr ks ic sid er
SSL    := $(VENV)/bin/speechssl
# the tiny APC of benchmarks/RESULTS.md: 1200 steps on SUPERB-lite small's hour of pretraining speech
APC_STEPS ?= 1200
BENCH   = $(SSL) benchmark data.root=$(CORPUS) cache.dir=$(DEMO)/cache

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)" torchaudio
	$(PY) -m pip install --quiet -e ".[test]"
	# the peer the parity tests compare against: only its per-model files are imported,
	# and its pinned dependencies (old torchaudio among them) must not replace ours
	$(PY) -m pip install --quiet --no-deps "$(S3PRL)"
	touch $@

test: install
	$(PY) -m pytest -q

# every peer the benchmarks compare against (benchmarks/README.md), then every benchmark
bench-deps: install
	$(PY) -m pip install --quiet -e ".[bench]"

bench: bench-deps
	for script in masking pretrain_step benchmark_epoch downstream_threads; do \
	  PYTHONPATH=$(CURDIR) $(PY) benchmarks/$$script.py || exit 1; \
	done

# The embedded corpus, a tiny APC pretrained on it, then per task fbank, the APC and the
# APC's random-init control (same architecture, weights from the seed), each with the
# task's learning-rate grid chosen on dev; the report with intervals:
# $(DEMO)/benchmark/report/README.md
demo: install
	$(SSL) synth out=$(CORPUS) size=small
	$(SSL) pretrain upstream=apc_tiny data.root=$(CORPUS) trainer=tiny trainer.max_steps=$(APC_STEPS) \
	  trainer.save_every=400 data.max_seconds=4 hydra.run.dir=$(DEMO)/pretrain/apc
	for task in $(TASKS); do \
	  $(BENCH) upstream=fbank task=$$task hydra.run.dir=$(DEMO)/benchmark/fbank/$$task || exit 1; \
	  $(BENCH) upstream=apc_tiny upstream.ckpt=$(DEMO)/pretrain/apc/last task=$$task \
	    hydra.run.dir=$(DEMO)/benchmark/apc/$$task || exit 1; \
	  $(BENCH) upstream=apc_tiny upstream.ckpt=$(DEMO)/pretrain/apc/last init=random task=$$task \
	    hydra.run.dir=$(DEMO)/benchmark/apc_random_init/$$task || exit 1; \
	done
	$(SSL) report runs=$(DEMO)/benchmark

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
