# Quick start:  make demo   (sets up .venv, runs the whole pipeline on synthetic CelebA)
#               make test   (sets up .venv, runs the test suite)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The versions the suite last passed on (Python 3.11; other Pythons get setup.cfg's ranges). To try the newest
# releases instead: make install CONSTRAINTS= VENV=.venv-latest, then make test VENV=.venv-latest CONSTRAINTS=,
# and, when green, make constraints VENV=.venv-latest to record them.
CONSTRAINTS ?= constraints.txt
# pytest-xdist workers: one more than the cores, because the drills spend part of their time waiting on processes,
# sockets and signals (2 cores: the whole suite in 11 min 42 s with 3 workers, 12 min 39 s with 2).
TEST_WORKERS ?= $(shell $(PYTHON) -c 'import os; print((os.cpu_count() or 1) + 1)')

.PHONY: install demo test check lint format bench clean constraints

$(BIN)/.installed: setup.py setup.cfg $(wildcard $(CONSTRAINTS))
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "error: Python >= 3.10 is needed (found " + sys.version.split()[0] + "); set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]' $(if $(CONSTRAINTS),--constraint $(CONSTRAINTS))
	@touch $@

install: $(BIN)/.installed

demo: install
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/demo.sh

test: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15

# The fast layer: unit tests of the pure modules, the records' golden hashes and in-process model tests (<90 s).
check: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow"

# The formatter and the linter (ruff.toml): make lint checks, make format rewrites.
lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(BIN)/python bench/bench_records.py
	$(BIN)/python bench/bench_input.py
	$(BIN)/python bench/bench_training.py
	$(BIN)/python bench/bench_devices.py
	$(BIN)/python bench/bench_multiworker.py
	$(BIN)/python bench/bench_dask.py
	$(BIN)/python bench/bench_loop.py
	$(BIN)/python bench/bench_sweep.py

constraints: install
	@{ echo "# The versions the test suite passes on, recorded by make constraints ($$($(BIN)/python -V))."; \
	   echo "# make install uses them on this Python; setup.cfg keeps the ranges. See the Makefile to try newer ones."; \
	   $(BIN)/pip freeze --exclude-editable | grep -v '^-e ' | \
	   sed "s/\$$/; python_version == \"$$($(BIN)/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')\"/"; \
	} > constraints.txt.new && mv constraints.txt.new constraints.txt
	@echo "wrote constraints.txt ($$(grep -vc '^#' constraints.txt) packages)"

clean:
	rm -rf data/demo runs/demo
