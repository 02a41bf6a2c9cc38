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

DEMO      ?= runs/demo
# DEMO_SIZE=tiny: the 5-minute run CI makes (tests/test_demo.py); DEMO_TASKS=all: the ten SUPERB tasks
DEMO_SIZE ?= small
DEMO_TASKS ?= core
JOBS      ?= 2
SSL    := $(VENV)/bin/speechssl

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

# The embedded corpus, every upstream's tiny config pretrained on it, each benchmarked beside fbank and
# two random-init controls (the learning rate chosen on dev), and the report $(DEMO)/REPORT.md: the stages
# of configs/pipeline/demo.yaml, $(JOBS) at a time; a rerun skips the finished ones.
demo: install
	$(SSL) run pipeline=demo jobs=$(JOBS) pipeline.size=$(DEMO_SIZE) pipeline.task_set=$(DEMO_TASKS) \
	  hydra.run.dir=$(DEMO)$(if $(filter small,$(DEMO_SIZE)),,_$(DEMO_SIZE))

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
