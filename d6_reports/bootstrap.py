"""Bringing up OpenTelemetry in the service's own processes, and refusing to run without it.

Every entry point that generates reports (``d6-reports generate|generate-all|demo`` and each
worker process) calls ``start_telemetry()`` first. It runs the same start-up as
``opentelemetry-instrument`` in-process (``auto_instrumentation.initialize``: the distro, the
SDK configurator from ``OTEL_*``, every entry-point instrumentor, the lineage plugin's among
them), unless a tracer provider is already installed (run under ``opentelemetry-instrument``,
or by the embedding application), so nothing is configured twice.

Then it asks every installed start-up check (entry point group ``d6_reports.startup_checks``;
the lineage plugin registers one) whether the process is really capturing. This keeps the
dependency one way: the service knows the hook, never the plugin. A failed start is one line
and a ``TelemetryStartError``, so the command exits before making a PDF without lineage,
unless ``D6_ALLOW_NO_LINEAGE=true`` says that is acceptable (then it is a warning).
``OTEL_SDK_DISABLED=true`` and ``ENABLE_REPORT_LINEAGE=false`` are explicit choices: warnings.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib.metadata import entry_points

from opentelemetry import trace

STARTUP_CHECKS_GROUP = "d6_reports.startup_checks"
ALLOW_NO_LINEAGE_ENV = "D6_ALLOW_NO_LINEAGE"
#: Loggers of the auto-instrumentation start-up that log a traceback before re-raising.
_STARTUP_LOGGERS = (
    "opentelemetry.instrumentation.auto_instrumentation",
    "opentelemetry.instrumentation.auto_instrumentation._load",
)
#: ``service.name`` of the service's processes when the environment names none.
DEFAULT_SERVICE_NAME = "d6-reports"
#: The standard variable naming the entry-point instrumentors not to load.
DISABLED_INSTRUMENTATIONS_ENV = "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"
#: Instrumentors the report commands and their pool processes never use: they serve no FastAPI
#: app and consume no Celery task. Loading the FastAPI one imports FastAPI, about 1 s of every
#: process's start (2.2 s to 0.6 s for a ``generate-all`` pool process, measured here).
REPORT_COMMAND_UNUSED = ("fastapi", "celery")
_started = False


class TelemetryStartError(RuntimeError):
    """Tracing or lineage could not start; the message is one line for the user."""


def start_telemetry(
    *,
    warn: Callable[[str], None] | None = None,
    service_name: str = DEFAULT_SERVICE_NAME,
    unused_instrumentations: Sequence[str] = (),
) -> None:
    """Configure OpenTelemetry once per process and check that lineage captures.

    ``warn`` receives each one-line warning (default: printed to stderr). ``service_name`` is
    the resource's ``service.name`` unless the environment names one (``OTEL_SERVICE_NAME`` or
    ``service.name`` in ``OTEL_RESOURCE_ATTRIBUTES``): traces and lineage rows of the service
    are never ``unknown_service``. ``unused_instrumentations``: entry-point instrumentors this
    process has no use for, added to ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` (whatever the
    variable already names stays disabled) for the start-up, so their libraries are never
    imported.
    """
    global _started
    warn = warn or _print_warning
    allowed = _allowed_without_lineage()
    try:
        if not _started:
            if isinstance(_installed_provider(), trace.ProxyTracerProvider):
                _name_service(service_name)
                with _disabled(unused_instrumentations):
                    _initialize()
            _started = True
        _run_checks(warn)
    except TelemetryStartError as exc:
        if not allowed:
            raise
        warn(f"{exc} (continuing without lineage: {ALLOW_NO_LINEAGE_ENV}=true)")


def telemetry_untouched() -> bool:
    """True while this process has brought up no telemetry: ``start_telemetry`` has not run
    and no tracer provider is installed (so a fork from it copies no SDK thread or state).
    A provider named by ``OTEL_PYTHON_TRACER_PROVIDER`` counts as touched without being
    loaded here: loading it is the start-up's job, and its failure the start-up's one line."""
    if _started or os.environ.get("OTEL_PYTHON_TRACER_PROVIDER"):
        return False
    return isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def _allowed_without_lineage() -> bool:
    raw = os.environ.get(ALLOW_NO_LINEAGE_ENV, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise TelemetryStartError(
        f"{ALLOW_NO_LINEAGE_ENV}={raw!r} is not valid: expected true or false"
    )


def _installed_provider() -> trace.TracerProvider:
    """The global provider; OTEL_PYTHON_TRACER_PROVIDER naming nothing is a failed start."""
    try:
        return trace.get_tracer_provider()
    except Exception as exc:
        named = os.environ.get("OTEL_PYTHON_TRACER_PROVIDER")
        reason = f"OTEL_PYTHON_TRACER_PROVIDER={named!r} names no installed tracer provider"
        raise TelemetryStartError(
            f"tracing cannot start: {reason if named else _one_line(exc)}"
        ) from exc


def _name_service(name: str) -> None:
    resource = os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    named = any(part.split("=", 1)[0].strip() == "service.name" for part in resource.split(","))
    if not named:
        os.environ.setdefault("OTEL_SERVICE_NAME", name)


@contextmanager
def _disabled(instrumentations: Sequence[str]) -> Iterator[None]:
    """Add ``instrumentations`` to the variable the auto-instrumentation start-up reads, for
    the start-up only: the process's environment (and its children's) is left as it was."""
    before = os.environ.get(DISABLED_INSTRUMENTATIONS_ENV)
    names = [n.strip() for n in (before or "").split(",") if n.strip()]
    names += [n for n in instrumentations if n not in names]
    if names:
        os.environ[DISABLED_INSTRUMENTATIONS_ENV] = ",".join(names)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(DISABLED_INSTRUMENTATIONS_ENV, None)
        else:
            os.environ[DISABLED_INSTRUMENTATIONS_ENV] = before


def _initialize() -> None:
    from opentelemetry.instrumentation.auto_instrumentation import initialize

    try:
        with _quiet_startup_tracebacks():
            initialize(swallow_exceptions=False)
    except Exception as exc:
        raise TelemetryStartError(f"tracing and lineage cannot start: {_one_line(exc)}") from exc


def _run_checks(warn: Callable[[str], None]) -> None:
    checks = list(entry_points(group=STARTUP_CHECKS_GROUP))
    if not checks:
        raise TelemetryStartError("no lineage plugin is installed: reports would get no lineage")
    for entry_point in checks:
        try:
            message = entry_point.load()()
        except Exception as exc:
            raise TelemetryStartError(_one_line(exc)) from exc
        if message:
            warn(str(message))


@contextmanager
def _quiet_startup_tracebacks() -> Iterator[None]:
    """The start-up logs a traceback for what it re-raises: we report that in one line."""

    def no_tracebacks(record: logging.LogRecord) -> bool:
        return record.exc_info is None

    loggers = [logging.getLogger(name) for name in _STARTUP_LOGGERS]
    for logger in loggers:
        logger.addFilter(no_tracebacks)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(no_tracebacks)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__qualname__


def _print_warning(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)
