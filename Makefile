# graphc: `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip

DEMO_MODEL := models/resnet_digits.onnx
DEMO_DATA  := models/digits_calib.npz
DEMO_OUT   := out

.PHONY: demo test bench fuzz clean venv

$(VENV)/.base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	touch $@

$(VENV)/.test: $(VENV)/.base pyproject.toml
	$(PIP) install -q -e '.[test]'
	touch $@

$(VENV)/.bench: $(VENV)/.base pyproject.toml
	$(PIP) install -q -e '.[test,bench]'
	touch $@

venv: $(VENV)/.base

demo: $(VENV)/.base
	mkdir -p $(DEMO_OUT)
	$(VENV)/bin/graphc inspect $(DEMO_MODEL)
	$(VENV)/bin/graphc opt $(DEMO_MODEL) -p 'fold-bn,cleanup,fold-constants' \
	    --data $(DEMO_DATA) --verify --report $(DEMO_OUT)/report.md -o $(DEMO_OUT)/resnet_digits.opt.onnx
	cat $(DEMO_OUT)/report.md

test: $(VENV)/.test
	$(PY) -m pytest -q

bench: $(VENV)/.bench
	$(PY) benchmarks/run.py

fuzz: $(VENV)/.test
	GRAPHC_FUZZ_EXAMPLES=2000 $(PY) -m pytest -q tests/property -k fuzz

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
