# Every target creates .venv and installs the project into it when needed, so a fresh clone
# needs nothing but Python >= 3.11 and the system libraries WeasyPrint uses (Pango).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test lint bench clean install

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Main job on the embedded default (SQLite under ./var, no services).
demo: $(STAMP)
	$(BIN)/d6-reports demo

## Tests; PostgreSQL tests run when D6_TEST_POSTGRES_URL is set (.ci/run sets it).
test: $(STAMP)
	$(BIN)/pytest -q --cov --cov-report=term-missing:skip-covered $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache .coverage*
