# The two commands: `make demo` and `make test`. Both set up .venv first (scripts/setup.sh).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-all bench clean

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

clean:
	rm -rf runs .pytest_cache
