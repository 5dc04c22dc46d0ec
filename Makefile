# Esper: the two commands that work on a fresh machine.
#   make run   - set up and run the main job
#   make test  - set up and run every test, lint (ruff), type check (mypy), walls (import-linter), contracts
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check
CONSTRAINTS := -c requirements/constraints.txt
PACKAGES := core kasmina tamiyo simic urza nissa
EDITABLE := $(foreach p,$(PACKAGES),-e packages/esper-$(p))
STAMP := $(VENV)/.esper-installed

.PHONY: venv system-packages run test lint typecheck walls contracts pytest format clean

# The venv is rebuilt when a package's dependencies or the pinned tools change. torch goes in first, pinned to the
# CPU wheel on this machine's disk (any looser request would pull a multi-GB CUDA build).
$(STAMP): requirements/*.txt $(foreach p,$(PACKAGES),packages/esper-$(p)/pyproject.toml)
	bash scripts/install-system-packages.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(CONSTRAINTS) torch==2.13.0 numpy
	$(PIP) install --quiet $(CONSTRAINTS) -r requirements/dev.txt $(EDITABLE) -e 'packages/esper-core[testing,redis,train]'
	$(PIP) install --quiet $(CONSTRAINTS) -r requirements/efficacy.txt  # the efficacy experiment's gromo arm (tested)
	touch $(STAMP)

venv: $(STAMP)

# Servers the tests start on loopback (redis-server) and the Fashion-MNIST files; apt only when something is missing.
system-packages:
	bash scripts/install-system-packages.sh

# The main job: grow a narrow CNN on Fashion-MNIST with the heuristic controller (a few minutes on 2 cores); it
# ends with the summary table and the path of the report (plots of accuracy, loss and parameters).
run: venv
	$(BIN)/esper run examples/fashion-mnist.toml

contracts: venv
	$(BIN)/python scripts/generate_leyline.py --check
	$(BIN)/python scripts/generate_field_reference.py --check

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy packages/esper-core/src packages/esper-kasmina/src packages/esper-tamiyo/src \
		packages/esper-simic/src packages/esper-urza/src packages/esper-nissa/src scripts benchmarks \
		examples/esper-example-plugin/src

walls: venv
	$(BIN)/lint-imports --no-cache

pytest: venv
	$(BIN)/python -m pytest

test: system-packages contracts lint typecheck walls pytest

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
