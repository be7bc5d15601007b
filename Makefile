# Quick start:  make demo   (sets up .venv, runs the whole pipeline on synthetic CelebA)
#               make test   (sets up .venv, runs the test suite)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test bench clean

$(BIN)/.installed: setup.py setup.cfg
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "error: Python >= 3.10 is needed (found " + sys.version.split()[0] + "); set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

install: $(BIN)/.installed

demo: install
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/demo.sh

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python bench/bench_records.py
	$(BIN)/python bench/bench_input.py
	$(BIN)/python bench/bench_training.py
	$(BIN)/python bench/bench_multiworker.py
	$(BIN)/python bench/bench_dask.py
	$(BIN)/python bench/bench_loop.py
	$(BIN)/python bench/bench_sweep.py

clean:
	rm -rf data/demo runs/demo
