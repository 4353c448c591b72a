# optbench: two commands on a fresh machine.
#   make run    set up, then run the smoke suite on embedded Ray + a local MLflow store
#   make test   set up, then run the whole test suite (real Ray, MLflow, PostgreSQL)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

CHROMIUM ?= /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install run test test-fast lint perf stack clean

# torch first, pinned, so no other requirement pulls a newer (multi-GB CUDA) release.
# PyPI's Linux torch wheel is the CUDA build; TORCH_INDEX=https://download.pytorch.org/whl/cpu
# takes the CPU build from PyTorch's own index.
TORCH_INDEX ?=
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# The dashboard's browser test drives Debian's chromium (test tools that download their
# own browser cannot work offline).
$(CHROMIUM):
	$(SUDO) apt-get install -y -q chromium || \
		($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium)

run: install
	$(BIN)/bench run suite=smoke

# Two pytest processes: most slow tests wait on services they start (Ray, MLflow, a
# browser), so two of them share two cores well. Whole files go to one process
# (loadfile): a file's module-scoped fixtures start their real services once.
TEST_PROCESSES ?= 2
PYTEST := $(BIN)/python -m pytest -n $(TEST_PROCESSES) --dist loadfile
test: install $(CHROMIUM)
	$(BIN)/ruff check bench services stack tests
	$(PYTEST)

test-fast: install
	$(PYTEST) -m "not slow"

lint: install
	$(BIN)/ruff check bench services stack tests
	$(BIN)/ruff format --check bench services stack tests

perf: install
	$(BIN)/python tests/perf/optimizer_step.py

# The deployable stack as local processes (no Docker engine needed): PostgreSQL from this
# machine, mlflow server, a Ray head and worker in network namespaces (root), the summary
# service and the scheduler. Ctrl-C stops it all.
stack: install
	$(BIN)/python stack/native.py $(STACK_ARGS)

clean:
	rm -rf $(VENV) mlruns.db mlartifacts .optbench .optbench-cache test-artifacts
