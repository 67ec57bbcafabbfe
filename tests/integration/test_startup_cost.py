"""The report commands' start-up loads only the instrumentors they use.

``start_telemetry`` runs every entry-point instrumentor unless told otherwise; the report
commands and their pool processes serve no FastAPI app and consume no Celery task, and importing
FastAPI to instrument it was about a second of every process's start. A fresh interpreter per
case: the start-up runs once per process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

_PROBE = """
import json, os, sys
from d6_reports.bootstrap import REPORT_COMMAND_UNUSED, start_telemetry
from opentelemetry import trace
start_telemetry(warn=lambda _m: None, unused_instrumentations=REPORT_COMMAND_UNUSED)
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
print(json.dumps({
    "fastapi": "fastapi" in sys.modules,
    "celery_instrumented": "opentelemetry.instrumentation.celery" in sys.modules,
    "sqlalchemy_instrumented": SQLAlchemyInstrumentor().is_instrumented_by_opentelemetry,
    "provider": type(trace.get_tracer_provider()).__name__,
    "disabled_after": os.environ.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"),
}))
"""


def _probe(tmp_path: Path, disabled: str | None = None) -> dict[str, object]:
    env = {
        **os.environ,
        "D6_DATABASE_URL": f"sqlite:///{tmp_path / 'probe.db'}",
        "OTEL_LINEAGE_OUTBOX": "memory",
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
    }
    env.pop("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", None)
    if disabled is not None:
        env["OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"] = disabled
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_report_commands_skip_fastapi_and_celery_but_trace_sql(tmp_path: Path) -> None:
    result = _probe(tmp_path)
    assert result["fastapi"] is False and result["celery_instrumented"] is False
    assert result["sqlalchemy_instrumented"] is True
    assert result["provider"] == "TracerProvider"
    assert result["disabled_after"] is None  # the environment is left as it was


@pytest.mark.parametrize("named", ["sqlalchemy", " sqlalchemy , fastapi "])
def test_what_the_user_disabled_stays_disabled(tmp_path: Path, named: str) -> None:
    result = _probe(tmp_path, disabled=named)
    assert result["sqlalchemy_instrumented"] is False and result["fastapi"] is False
    assert result["disabled_after"] == named
