# graphc: `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip

DEMO_MODEL := models/resnet_digits.onnx
DEMO_DATA  := models/digits_calib.npz
DEMO_OUT   := out

.PHONY: demo test test-ray test-each bench fuzz clean venv docs browser

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

# Ray is an optional extra for users (graphc[ray]) and part of the test extra, so `make test` runs
# the executor tests on a real local Ray runtime (install ~75 s, runtime start ~8-20 s).

venv: $(VENV)/.base

DEMO_PIPELINE := fold-bn,canonicalize,cleanup,quant

# The main job: fold, canonicalize and quantize a trained model, gate it on accuracy against the
# original (SQNR and top-1 drop on held-out digits) and speed, and write the report.
demo: $(VENV)/.base
	mkdir -p $(DEMO_OUT)
	$(VENV)/bin/graphc inspect $(DEMO_MODEL)
	$(VENV)/bin/graphc opt $(DEMO_MODEL) -p '$(DEMO_PIPELINE)' \
	    --data $(DEMO_DATA) --eval-data models/digits_test.npz --samples 64 \
	    --min-sqnr 25 --max-top1-drop 0.01 --bench \
	    --report $(DEMO_OUT)/report.html -o $(DEMO_OUT)/resnet_digits.opt.onnx
	$(VENV)/bin/graphc opt $(DEMO_MODEL) -p '$(DEMO_PIPELINE)' --data $(DEMO_DATA) \
	    --eval-data models/digits_test.npz --samples 64 -q \
	    --report $(DEMO_OUT)/report.md -o $(DEMO_OUT)/resnet_digits.opt.onnx
	cat $(DEMO_OUT)/report.md

docs: $(VENV)/.base
	$(VENV)/bin/graphc passes --markdown > docs/passes.md

# The report's browser test (tests/report/test_html.py) needs headless Chromium: Debian's package,
# installed once when missing (about 1 minute: ~100 MB from the Debian mirror). Without root or
# apt-get this prints one line and the browser test fails (it does not skip).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	        echo "installing headless Chromium (Debian package 'chromium') for the report's browser test"; \
	        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 || { \
	            apt-get update -q >/dev/null && \
	            DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null; } \
	        || echo "make: could not install chromium with apt-get; the browser test will fail"; \
	    else echo "make: chromium is missing and cannot be installed here (needs root and apt-get); the browser test will fail"; fi; }

test: $(VENV)/.test browser
	$(PY) -m pytest -q

# The executor tests with a real Ray runtime (local, 2 CPUs): same results as local processes.
test-ray: $(VENV)/.test
	$(PY) -m pytest -q tests/executor

# Every tests/ folder and top-level test file alone, in its own process: a verdict that depends
# on what ran before shows up as a difference from `make test`.
test-each: $(VENV)/.test browser
	@failed=""; for t in tests/*/ tests/test_*.py; do \
	    $(PY) -m pytest -q -p no:cacheprovider $$t > /dev/null 2>&1; rc=$$?; \
	    if [ $$rc -eq 0 ] || [ $$rc -eq 5 ]; then echo "pass  $$t"; else echo "FAIL  $$t"; failed="$$failed $$t"; fi; \
	done; test -z "$$failed" || { echo "failed alone:$$failed"; exit 1; }

bench: $(VENV)/.bench
	$(PY) benchmarks/run.py

fuzz: $(VENV)/.test
	GRAPHC_FUZZ_EXAMPLES=2000 $(PY) -m pytest -q tests/property -k fuzz

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
