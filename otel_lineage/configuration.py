"""Setting the plugin up: ``configure()`` in code, or ``LineageInstrumentor`` with zero code.

Both end in ``attach()``, which adds the lineage pipeline (processor, hand-off, writer, store,
metrics, trace-stamping listener) to an SDK tracer provider. With ``ENABLE_REPORT_LINEAGE``
false nothing of it is created: no processor, no listener, and the sampler is the delegate.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from opentelemetry import metrics, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import Sampler
from sqlalchemy import Engine, create_engine, event

from otel_lineage.handoff import HandOff, MemoryHandOff
from otel_lineage.listeners import TraceStamper
from otel_lineage.outbox import OutboxHandOff
from otel_lineage.processor import LineageSpanProcessor
from otel_lineage.sampler import LineageSampler, sampler_from_name
from otel_lineage.settings import MEMORY_OUTBOX, LineageSettings
from otel_lineage.stats import LineageStats
from otel_lineage.store import LineageStore
from otel_lineage.writer import BackgroundWriter

_log = logging.getLogger(__name__)


@dataclass
class Lineage:
    """Handle on a configured lineage pipeline (or on its absence when the flag is off)."""

    provider: TracerProvider
    settings: LineageSettings
    processor: LineageSpanProcessor | None = None
    stamper: TraceStamper | None = None
    store: LineageStore | None = None
    instrumented_engines: list[Engine] = field(default_factory=list)

    @property
    def enabled(self) -> bool:
        return self.processor is not None

    def flush(self, timeout_s: float = 30.0) -> bool:
        return self.provider.force_flush(int(timeout_s * 1000))

    def shutdown(self) -> None:
        """Drain and stop the pipeline, remove the listener and SQLAlchemy instrumentation."""
        if self.processor is not None:
            self.processor.shutdown()
        if self.stamper is not None:
            self.stamper.uninstall()
        if self.store is not None:
            self.store.engine.dispose()
        if self.instrumented_engines:
            from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

            SQLAlchemyInstrumentor().uninstrument()
            self.instrumented_engines = []


def configure(
    *,
    engines: Iterable[Engine] = (),
    database_url: str | None = None,
    tracer_provider: TracerProvider | None = None,
    sampler: Sampler | None = None,
    exporter: SpanExporter | None = None,
    enabled: bool | None = None,
    meter_provider: metrics.MeterProvider | None = None,
    set_global: bool = True,
) -> Lineage:
    """Trace the report service and record lineage; returns a handle to flush or shut down.

    - ``tracer_provider``: extend this provider; by default a new one is created from the
      standard variables (``OTEL_TRACES_SAMPLER``/``_ARG``, including the ``lineage_*``
      names, ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``) and, with ``set_global``,
      installed as the global provider.
    - ``sampler``: the delegate for a new provider (wrapped in a ``LineageSampler`` when the
      flag is on).
    - ``exporter``: exported through a ``BatchSpanProcessor``; by default an OTLP exporter is
      added when ``OTEL_TRACES_EXPORTER`` says ``otlp`` or an OTLP endpoint is set.
    - ``engines``: SQLAlchemy engines to instrument (explicitly, once).
    - ``database_url``/``enabled``: override ``OTEL_LINEAGE_DATABASE_URL`` and
      ``ENABLE_REPORT_LINEAGE``.
    """
    settings = LineageSettings.from_env()
    if enabled is not None:
        settings = replace(settings, enabled=enabled)
    if database_url is not None:
        settings = replace(settings, database_url=database_url)
    if tracer_provider is None:
        tracer_provider = TracerProvider(
            sampler=_lineage_sampler(sampler, settings.enabled), resource=Resource.create()
        )
        if set_global:
            trace.set_tracer_provider(tracer_provider)
    lineage = (
        attach(tracer_provider, settings, meter_provider=meter_provider)
        if settings.enabled
        else Lineage(provider=tracer_provider, settings=settings)
    )
    exporter = exporter or _otlp_exporter_from_env()
    if exporter is not None:
        tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
    engines = list(engines)
    if engines:
        from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

        SQLAlchemyInstrumentor().instrument(engines=engines, tracer_provider=tracer_provider)
        lineage.instrumented_engines = engines
    return lineage


def attach(
    provider: TracerProvider,
    settings: LineageSettings,
    *,
    meter_provider: metrics.MeterProvider | None = None,
) -> Lineage:
    """Add the lineage pipeline to ``provider`` (the flag is assumed on)."""
    if not isinstance(provider.sampler, LineageSampler):
        _log.warning(
            "the tracer provider's sampler is %s, not a LineageSampler: report traces it "
            "drops will have no lineage (set OTEL_TRACES_SAMPLER=lineage_parentbased_*)",
            provider.sampler.get_description(),
        )
    service = provider.resource.attributes.get("service.name")
    store = LineageStore(
        create_lineage_engine(settings.database_url),
        service_name=str(service) if service else None,
    )
    stats = LineageStats()
    handoff = make_handoff(settings)
    writer = BackgroundWriter(handoff, store, stats, batch_size=settings.batch_size)
    processor = LineageSpanProcessor(
        handoff,
        writer,
        stats=stats,
        max_traces=settings.max_traces,
        max_spans_per_trace=settings.max_spans_per_trace,
        trace_ttl_s=settings.trace_ttl_s,
    )
    provider.add_span_processor(processor)
    stats.register_metrics(handoff.pending, meter_provider)
    stamper = TraceStamper(_stamp_classes())
    stamper.install()
    return Lineage(
        provider=provider, settings=settings, processor=processor, stamper=stamper, store=store
    )


def make_handoff(settings: LineageSettings) -> HandOff:
    """The durable outbox under ``settings.outbox``; memory when it says ``memory`` or when the
    outbox cannot be opened."""
    if settings.outbox == MEMORY_OUTBOX:
        return MemoryHandOff(settings.max_pending)
    try:
        return OutboxHandOff(
            Path(settings.outbox),
            max_records=settings.max_pending,
            max_bytes=settings.outbox_max_bytes,
        )
    except (OSError, sqlite3.Error):
        # Lineage must not stop the service from starting: keep records in memory (they
        # survive database outages, not crashes) and say so loudly.
        _log.exception(
            "lineage outbox %s unusable; records are kept in memory only (not crash-safe)",
            settings.outbox,
        )
        return MemoryHandOff(settings.max_pending)


def create_lineage_engine(url: str) -> Engine:
    """An engine for the lineage database; SQLite gets WAL and a busy timeout for writers."""
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    engine = create_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _wal(dbapi_connection: object, _record: object) -> None:
        cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")  # WAL: safe against process crashes
        cursor.close()

    return engine


def _lineage_sampler(delegate: Sampler | None, enabled: bool) -> Sampler:
    if delegate is None:
        delegate = sampler_from_name(
            os.environ.get("OTEL_TRACES_SAMPLER"), os.environ.get("OTEL_TRACES_SAMPLER_ARG")
        )
    if enabled and not isinstance(delegate, LineageSampler):
        return LineageSampler(delegate)
    if not enabled and isinstance(delegate, LineageSampler):
        return delegate.delegate
    return delegate


def _stamp_classes() -> list[str]:
    names = os.environ.get("OTEL_LINEAGE_STAMP_CLASSES", "ReportGeneration")
    return [n.strip() for n in names.split(",") if n.strip()]


def _otlp_exporter_from_env() -> SpanExporter | None:
    exporters = os.environ.get("OTEL_TRACES_EXPORTER", "")
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if "otlp" not in exporters.split(",") and not (endpoint and exporters != "none"):
        return None
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter as GrpcExporter,
            )
        except ImportError as exc:
            raise RuntimeError(
                "OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs opentelemetry-exporter-otlp-proto-grpc"
            ) from exc
        grpc_exporter: SpanExporter = GrpcExporter()
        return grpc_exporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()
