# The README's commands. Each target creates or reuses .venv and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fleetwatch-installed
PYTEST_ARGS ?=

.PHONY: up test lint bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "fleetwatch needs Python 3.11 or newer")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

up: $(STAMP)
	$(BIN)/fleetwatch up --fast

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check shared services fleetwatch tests bench examples
	$(BIN)/ruff format --check shared services fleetwatch tests bench examples
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/deadman.py
	$(BIN)/python bench/agent.py
	$(BIN)/python bench/prober.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
