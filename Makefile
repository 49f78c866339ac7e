# Two entry points for a newcomer: `make test` and `make quickstart`. Each sets itself up: it uses the
# active virtual environment when there is one, else creates .venv with $(PYTHON), and installs
# requirements.txt and requirements-demo.txt into it once (again only when they change). Supported:
# CPython 3.10 to 3.13 (`make test-pythons` runs the suite on each one found on the machine); another
# version is refused with one line before anything is installed.

PYTHON ?= python3
ifdef VIRTUAL_ENV
ENV_DIR := $(VIRTUAL_ENV)
else
ENV_DIR := .venv
endif
PY := $(ENV_DIR)/bin/python
STAMP := $(ENV_DIR)/.pfgmpp-requirements

SUPPORTED_PYTHONS := 3.10 3.11 3.12 3.13
# The interpreter that will run everything: the environment's if it exists, else the one that creates it.
CHECKED_PY = $(if $(wildcard $(PY)),$(PY),$(PYTHON))
CHECKED_VERSION = $(shell $(CHECKED_PY) -c 'import sys; sys.stdout.write("%d.%d" % sys.version_info[:2])' 2>/dev/null)

.PHONY: install test test-fast quickstart docs check-python test-pythons gpu-check

install: $(STAMP)

# Expanded only when a target needs it; $(error) stops make with this one line.
check-python:
	$(if $(CHECKED_VERSION),,$(error $(CHECKED_PY) does not run; install CPython 3.10 to 3.13, or pass PYTHON=/path/to/python3.X))
	$(if $(filter $(CHECKED_VERSION),$(SUPPORTED_PYTHONS)),,$(error $(CHECKED_PY) is Python $(CHECKED_VERSION), but this project supports Python 3.10 to 3.13; run make with PYTHON=python3.12 (for example), or activate a virtual environment of a supported version))

$(STAMP): requirements.txt | check-python
	@test -x $(PY) || $(PYTHON) -m venv $(ENV_DIR)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@touch $(STAMP)

# requirements-demo.txt (scikit-learn: the quick start's digits and its scorer), installed once into
# the same environment; the test suite runs the quick start too, so `make test` installs it as well.
DEMO_STAMP := $(ENV_DIR)/.pfgmpp-demo-requirements

$(DEMO_STAMP): requirements-demo.txt $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-demo.txt
	@touch $(DEMO_STAMP)

# The suite runs on two pytest-xdist workers (PYTEST_WORKERS), one test module at a time each, so that a
# module's shared fixtures (a training run, a study) are built once. `make test` runs every test and
# lists the 20 slowest; `make test-fast` leaves out the tests marked slow (trainings, torch.compile,
# torchrun, the D study, the quick start) and those that need CUDA.
PYTEST_WORKERS ?= 2
PYTEST_ARGS = -q -n $(PYTEST_WORKERS) --dist loadfile

test: check-python $(DEMO_STAMP)
	$(PY) -m pytest $(PYTEST_ARGS) --durations=20

test-fast: check-python $(DEMO_STAMP)
	$(PY) -m pytest $(PYTEST_ARGS) -m "not slow and not cuda" --durations=10

# `make test` in a fresh virtual environment for each supported interpreter on this machine, one
# line per version (tools/test_pythons.sh; pass versions as PYTHONS="3.10 3.13", and FAST=1 for the
# fast tier only).
test-pythons:
	@tools/test_pythons.sh $(if $(FAST),--fast) $(PYTHONS)

# The quick start needs requirements-demo.txt too. Options go through QUICKSTART, e.g.
# make quickstart QUICKSTART="--device=cuda --fresh".
quickstart: check-python $(DEMO_STAMP)
	$(PY) quickstart.py $(QUICKSTART)

# The GPU acceptance check (benchmarks/gpu_check.py): the CUDA tests (pytest -m cuda) and a short
# throughput run, about 8 minutes on one H100, one JSON record; without CUDA one line and exit 0.
# Options go through GPU_CHECK, e.g. make gpu-check GPU_CHECK="--out=h100.json --dry-run".
gpu-check: check-python $(STAMP)
	$(PY) -m benchmarks.gpu_check $(GPU_CHECK)

# Regenerate docs/*-help.txt from every script's --help (tests/test_docs.py checks they are current).
docs: check-python $(STAMP)
	$(PY) -m tools.make_help_docs
