# The two commands: `make demo` and `make test`. Both set up .venv first (scripts/setup.sh).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-all bench bench-gpu clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.lock pyproject.toml scripts/setup.sh
	VENV=$(VENV) bash scripts/setup.sh

demo: setup
	$(PY) -m surrogate_kd demo --out runs/demo

test: setup
	$(PY) -m pytest -q

# Also the slow end-to-end tests (minutes).
test-all: setup
	$(PY) -m pytest -q --runslow

bench: setup
	$(PY) benchmarks/bench_sources.py
	$(PY) benchmarks/bench_augment.py

# The GPU training path in one run (at most 5 minutes on one H100/H200); exits 1 without CUDA.
# `$(PY) benchmarks/bench_gpu.py --dry-run` runs the same pipeline on a CPU with tiny sizes.
bench-gpu: setup
	$(PY) benchmarks/bench_gpu.py

clean:
	rm -rf runs .pytest_cache
