# mailexec — what a developer can do. `make help` lists it.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: help venv run test test-fast lint bench chaos soak clean
help:           ## this list
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/' | sort

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11) on PATH"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

venv: $(STAMP)  ## create the virtualenv and install mailexec with its test tools

run: $(STAMP)   ## the whole pipeline on this machine, demo data in; prints where everything is
	$(BIN)/python -m mailexec.devrun

test: $(STAMP)  ## the whole test suite against the local PostgreSQL and RabbitMQ
	$(BIN)/python -m mailexec.devrun --services-only
	$(BIN)/pytest -q -p no:cacheprovider $(PYTEST_ARGS)

lint: $(STAMP)  ## ruff + mypy
	$(BIN)/ruff check mailexec shared services migrations tests
	$(BIN)/mypy mailexec shared services

clean:          ## remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
