# Every target creates .venv and installs the project into it when needed, so a fresh clone
# needs nothing but Python >= 3.11 and the system libraries WeasyPrint uses (Pango).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
AUDIT_ARGS ?=
COVERAGE_MIN := 85

.PHONY: demo test lint audit bench bench-quick clean install

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

install: $(STAMP)

# The demo runs zero-code (opentelemetry-instrument): sampled traces would go to an OTLP
# collector if OTEL_TRACES_EXPORTER=otlp were set; by default nothing leaves the machine, and
# every report still gets its lineage row (10% export ratio, 100% lineage).
DEMO_ENV := OTEL_SERVICE_NAME=$${OTEL_SERVICE_NAME:-d6-reports} \
	OTEL_TRACES_SAMPLER=$${OTEL_TRACES_SAMPLER:-lineage_parentbased_traceidratio} \
	OTEL_TRACES_SAMPLER_ARG=$${OTEL_TRACES_SAMPLER_ARG:-0.1} \
	OTEL_TRACES_EXPORTER=$${OTEL_TRACES_EXPORTER:-none} \
	OTEL_METRICS_EXPORTER=$${OTEL_METRICS_EXPORTER:-none} \
	OTEL_LOGS_EXPORTER=$${OTEL_LOGS_EXPORTER:-none}

## Main job on the embedded default (SQLite under ./var, no services), then its lineage.
demo: $(STAMP)
	$(DEMO_ENV) $(BIN)/opentelemetry-instrument $(BIN)/d6-reports demo
	$(BIN)/otel-lineage audit
	$(BIN)/otel-lineage show --latest

## Tests; PostgreSQL tests run when D6_TEST_POSTGRES_URL is set (.ci/run sets it).
test: $(STAMP)
	$(BIN)/pytest -q --cov --cov-report=term-missing:skip-covered \
		--cov-fail-under=$(COVERAGE_MIN) $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## Known vulnerabilities in the installed environment (exit 1 on a finding or on an error;
## .ci/run tells the two apart). The project itself is not on PyPI: --skip-editable.
audit: $(STAMP)
	$(BIN)/pip-audit --skip-editable --progress-spinner off $(AUDIT_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench

## Seconds: per-report spans, queries, lineage rows and overhead against bench/budget.json.
bench-quick: $(STAMP)
	$(BIN)/python -m bench.quick

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache .coverage*
