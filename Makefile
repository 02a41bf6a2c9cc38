# speechssl: `make test` and (later) `make demo` do every set-up step themselves.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch 2.14.1 is the build served on this project's machines (a local wheel here,
# CUDA-enabled, so the same venv runs on a GPU machine). Never pin a +cpu build:
# torchaudio does not load with it.
TORCH  ?= torch==2.14.1

.PHONY: install test clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)" torchaudio
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

test: install
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
