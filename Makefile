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

quickstart: $(STAMP)
	$(PY) -c "import torch, training.networks, training.loss, training.pfgmpp; print('PFGM++ is installed: torch', torch.__version__, '| CUDA available:', torch.cuda.is_available())"
	@echo "The quick-start demo (train, generate, evaluate on bundled digits) lands with its issue; see README.md."

# Regenerate docs/*-help.txt from every script's --help (tests/test_docs.py checks they are current).
docs: $(STAMP)
	$(PY) tools/make_help_docs.py
