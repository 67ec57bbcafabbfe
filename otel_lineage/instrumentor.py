"""Zero-code set-up: an ``opentelemetry_instrumentor`` entry point.

``opentelemetry-instrument d6-reports generate-all`` configures the SDK (sampler from
``OTEL_TRACES_SAMPLER``, which may name a ``lineage_*`` sampler, exporters from
``OTEL_TRACES_EXPORTER``) and then runs every installed instrumentor, this one included, which
attaches the lineage pipeline to that provider. No line of the application changes.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)
from opentelemetry.sdk.trace import TracerProvider

from otel_lineage.configuration import Lineage, attach
from otel_lineage.settings import LineageSettings

_log = logging.getLogger(__name__)


class LineageInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    _lineage: Lineage | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return []

    def _instrument(self, **kwargs: Any) -> None:
        settings = LineageSettings.from_env()
        if not settings.enabled:
            return
        provider = kwargs.get("tracer_provider") or trace.get_tracer_provider()
        if not isinstance(provider, TracerProvider):
            _log.warning("no SDK tracer provider is configured; report lineage is off")
            return
        LineageInstrumentor._lineage = attach(provider, settings)

    def _uninstrument(self, **kwargs: Any) -> None:
        if LineageInstrumentor._lineage is not None:
            LineageInstrumentor._lineage.shutdown()
            LineageInstrumentor._lineage = None
