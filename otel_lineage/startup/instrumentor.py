"""Zero-code set-up: an ``opentelemetry_instrumentor`` entry point, and the start-up check.

``opentelemetry-instrument d6-reports generate-all`` (or the service's own commands, which run
the same start-up in-process) configures the SDK (sampler from ``OTEL_TRACES_SAMPLER``, which
may name a ``lineage_*`` sampler, exporters from ``OTEL_TRACES_EXPORTER``) and then runs every
installed instrumentor, this one included, which attaches the lineage pipeline to that
provider. No line of the application changes.

The auto-instrumentation start-up logs and swallows what fails in it, which would let a
service produce reports with no lineage. ``startup_check`` (entry point group
``d6_reports.startup_checks``) is how a service asks, without importing this package, whether
lineage is really capturing: it raises with the one-line reason when it is not.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection
from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)
from opentelemetry.sdk.trace import TracerProvider

from otel_lineage.settings import LineageSettings, lineage_enabled
from otel_lineage.startup.configuration import Lineage, LineageStartError, active_lineage, attach

_log = logging.getLogger(__name__)


class LineageInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    _lineage: Lineage | None = None
    #: Why the distro refused the settings before the SDK started (the instrumentor then does
    #: not attach), or why the last attach failed: for ``startup_check``, one line each.
    refused: str | None = None
    failure: str | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return []

    def _instrument(self, **kwargs: Any) -> None:
        if LineageInstrumentor.refused:
            return  # the distro refused the settings: startup_check reports why
        try:
            settings = LineageSettings.from_env()
            if not settings.enabled:
                return
            provider = kwargs.get("tracer_provider") or trace.get_tracer_provider()
            if not isinstance(provider, TracerProvider):
                raise LineageStartError(
                    "lineage cannot start: no OpenTelemetry SDK tracer provider is configured"
                )
            LineageInstrumentor._lineage = attach(provider, settings)
            LineageInstrumentor.failure = None
        except Exception as exc:
            LineageInstrumentor.failure = str(exc).splitlines()[0] if str(exc) else repr(exc)
            raise

    def _uninstrument(self, **kwargs: Any) -> None:
        if LineageInstrumentor._lineage is not None:
            LineageInstrumentor._lineage.shutdown()
            LineageInstrumentor._lineage = None


def startup_check() -> str | None:
    """None when lineage captures in this process; a warning when it is explicitly off.

    Raises ``LineageStartError`` (one line) when lineage should capture and does not: a bad
    setting, an SDK that failed to start, a provider without the pipeline.
    """
    LineageSettings.from_env()  # a bad value is named even when the SDK was set up elsewhere
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return "OpenTelemetry is disabled (OTEL_SDK_DISABLED=true): reports get no lineage rows"
    if not lineage_enabled():
        return "lineage is off (ENABLE_REPORT_LINEAGE=false): reports get no lineage rows"
    reason = LineageInstrumentor.refused or LineageInstrumentor.failure
    if reason:
        raise LineageStartError(reason)
    provider = trace.get_tracer_provider()
    lineage = active_lineage(provider) if isinstance(provider, TracerProvider) else None
    if lineage is not None and lineage.outbox_problem:
        raise LineageStartError(
            f"{lineage.outbox_problem}: a crash would lose lineage; make OTEL_LINEAGE_OUTBOX "
            "a writable directory (or 'memory' to accept that)"
        )
    if lineage is not None:
        return None
    raise LineageStartError(
        "lineage did not start: the OpenTelemetry SDK is not configured with the lineage "
        "pipeline (see the error above, or run under opentelemetry-instrument)"
    )
