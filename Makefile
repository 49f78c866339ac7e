# Two entry points for a newcomer: `make test` and `make quickstart`. Each sets itself up: it uses the
# active virtual environment when there is one, else creates .venv, and installs requirements.txt
# into it once (again only when requirements.txt changes).

PYTHON ?= python3
ifdef VIRTUAL_ENV
ENV_DIR := $(VIRTUAL_ENV)
else
ENV_DIR := .venv
endif
PY := $(ENV_DIR)/bin/python
STAMP := $(ENV_DIR)/.pfgmpp-requirements

.PHONY: install test quickstart docs

install: $(STAMP)

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(ENV_DIR)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

# The quick-start demo also needs requirements-demo.txt (scikit-learn), installed once into the same
# environment. Options go through QUICKSTART, e.g. make quickstart QUICKSTART="--device=cuda --fresh".
DEMO_STAMP := $(ENV_DIR)/.pfgmpp-demo-requirements

$(DEMO_STAMP): requirements-demo.txt $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-demo.txt
	@touch $(DEMO_STAMP)

quickstart: $(DEMO_STAMP)
	$(PY) quickstart.py $(QUICKSTART)

# Regenerate docs/*-help.txt from every script's --help (tests/test_docs.py checks they are current).
docs: $(STAMP)
	$(PY) tools/make_help_docs.py
