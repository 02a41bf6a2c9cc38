# speechssl: `make test` and (later) `make demo` do every set-up step themselves.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch 2.14.1 is the build served on this project's machines (a local wheel here,
# CUDA-enabled, so the same venv runs on a GPU machine). Never pin a +cpu build:
# torchaudio does not load with it.
TORCH  ?= torch==2.14.1
S3PRL  ?= s3prl==0.4.18

.PHONY: install test demo clean

DEMO   ?= runs/demo
CORPUS ?= data/superb_lite
TASKS  ?= ks ic er sid pr asr
SSL    := $(VENV)/bin/speechssl
# ASR's BiLSTM head is slow on a CPU: fewer, smaller steps keep the demo in minutes
ASR_TRAINER := trainer.max_steps=200 trainer.batch_seconds=20

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

# The embedded corpus, a tiny APC pretrained on it, fbank and APC benchmarked on
# six SUPERB tasks, and the report: $(DEMO)/benchmark/report/README.md
demo: install
	$(SSL) synth out=$(CORPUS) size=small
	$(SSL) pretrain upstream=apc_tiny data.root=$(CORPUS) trainer=tiny hydra.run.dir=$(DEMO)/pretrain/apc
	for task in $(TASKS); do \
	  extra=$$([ $$task = asr ] && echo "$(ASR_TRAINER)"); \
	  $(SSL) benchmark upstream=fbank task=$$task data.root=$(CORPUS) cache.dir=$(DEMO)/cache $$extra \
	    hydra.run.dir=$(DEMO)/benchmark/fbank/$$task || exit 1; \
	  $(SSL) benchmark upstream=apc upstream.ckpt=$(DEMO)/pretrain/apc/last task=$$task data.root=$(CORPUS) \
	    cache.dir=$(DEMO)/cache $$extra hydra.run.dir=$(DEMO)/benchmark/apc/$$task || exit 1; \
	done
	$(SSL) report runs=$(DEMO)/benchmark

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
