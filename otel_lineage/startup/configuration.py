"""Setting the plugin up: ``configure()`` in code, or ``LineageInstrumentor`` with zero code.

Both end in ``attach()``, which adds the lineage pipeline (processor, hand-off, writer, store,
metrics, trace-stamping listener) to an SDK tracer provider. With ``ENABLE_REPORT_LINEAGE``
false nothing of it is created: no processor, no listener, and the sampler is the delegate.

Both fail loud: a setting the plugin cannot honour, or a sampler that would drop report
traces, raises ``LineageConfigError``/``LineageStartError`` (one line) instead of starting a
service that makes PDFs with no lineage. An unreachable lineage *database* is not a failed
start: the durable outbox holds the records until it is back.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from importlib.metadata import entry_points
from pathlib import Path

from opentelemetry import metrics, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, Sampler
from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from otel_lineage.capture.listeners import TraceStamper
from otel_lineage.capture.processor import LineageSpanProcessor
from otel_lineage.capture.sampler import (
    LINEAGE_PREFIX,
    STANDARD_SAMPLERS,
    LineageSampler,
    sampler_from_name,
)
from otel_lineage.delivery.engines import create_lineage_engine
from otel_lineage.delivery.handoff import HandOff, MemoryHandOff
from otel_lineage.delivery.outbox import OutboxHandOff
from otel_lineage.delivery.stats import LineageStats
from otel_lineage.delivery.store import LineageStore
from otel_lineage.delivery.writer import BackgroundWriter
from otel_lineage.evidence.seals import SealSettings, writer_sealer
from otel_lineage.protection.keys import keyring_from_env
from otel_lineage.protection.snapshots import SnapshotStore
from otel_lineage.settings import MEMORY_OUTBOX, LineageConfigError, LineageSettings
from otel_lineage.startup.detachable import DetachableTracerProvider

_log = logging.getLogger(__name__)
#: Pipelines attached and not shut down, by provider (what ``startup_check`` asks about).
_ACTIVE: weakref.WeakKeyDictionary[TracerProvider, Lineage] = weakref.WeakKeyDictionary()
#: Exporter names of ``OTEL_TRACES_EXPORTER`` that export nothing.
_NO_EXPORT = frozenset({"", "none"})


class LineageStartError(RuntimeError):
    """Lineage could not start (the message is one line for the user)."""


def active_lineage(provider: TracerProvider) -> Lineage | None:
    """The running lineage pipeline of ``provider``, if any."""
    return _ACTIVE.get(provider)


@dataclass
class Lineage:
    """Handle on a configured lineage pipeline (or on its absence when the flag is off)."""

    provider: TracerProvider
    settings: LineageSettings
    processor: LineageSpanProcessor | None = None
    stamper: TraceStamper | None = None
    store: LineageStore | None = None
    instrumented_engines: list[Engine] = field(default_factory=list)
    #: What the SQLAlchemy instrumentation was given (detached at shutdown, see detachable).
    sql_tracer_provider: DetachableTracerProvider | None = None
    #: True when ``configure()`` created ``provider``: shutdown then shuts it down too.
    owns_provider: bool = False
    #: Why the durable outbox could not be opened (records are then kept in memory only, and a
    #: crash loses them): an embedding application keeps running; the service's own entry
    #: points refuse to (``startup_check``).
    outbox_problem: str | None = None

    @property
    def enabled(self) -> bool:
        return self.processor is not None

    def flush(self, timeout_s: float = 30.0) -> bool:
        return self.provider.force_flush(int(timeout_s * 1000))

    def shutdown(self) -> None:
        """Drain and stop the pipeline, remove the listener and SQLAlchemy instrumentation."""
        if _ACTIVE.get(self.provider) is self:
            del _ACTIVE[self.provider]
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
        if self.sql_tracer_provider is not None:
            self.sql_tracer_provider.detach()
            self.sql_tracer_provider = None
        if self.owns_provider:
            self.provider.shutdown()


def configure(
    *,
    engines: Iterable[Engine | AsyncEngine] = (),
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
    - ``engines``: SQLAlchemy engines to instrument (explicitly, once); for an
      ``AsyncEngine`` its ``sync_engine`` is instrumented (global instrumentation leaks an
      open span with async engines).
    - ``database_url``/``enabled``: override ``OTEL_LINEAGE_DATABASE_URL`` and
      ``ENABLE_REPORT_LINEAGE``.

    Raises ``LineageConfigError`` for a setting it cannot honour (named, with its accepted
    range) and ``LineageStartError`` when the pipeline cannot be attached.
    """
    settings = LineageSettings.from_env()
    if enabled is not None:
        settings = replace(settings, enabled=enabled)
    if database_url is not None:
        settings = replace(settings, database_url=database_url)
    owns_provider = tracer_provider is None and not set_global
    if tracer_provider is None:
        tracer_provider = TracerProvider(
            sampler=_lineage_sampler(sampler, settings.enabled, settings.span_recording),
            resource=Resource.create(),
            # A global provider is shut down at exit; a private one by Lineage.shutdown.
            shutdown_on_exit=set_global,
        )
        if set_global:
            trace.set_tracer_provider(tracer_provider)
    exporter = exporter or _otlp_exporter_from_env()
    lineage = (
        attach(
            tracer_provider,
            settings,
            meter_provider=meter_provider,
            exporting=exporter is not None or None,
        )
        if settings.enabled
        else Lineage(provider=tracer_provider, settings=settings)
    )
    lineage.owns_provider = owns_provider
    if exporter is not None:
        tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
    sync_engines = [e.sync_engine if isinstance(e, AsyncEngine) else e for e in engines]
    if sync_engines:
        from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

        sql_provider = DetachableTracerProvider(tracer_provider)
        SQLAlchemyInstrumentor().instrument(engines=sync_engines, tracer_provider=sql_provider)
        lineage.instrumented_engines = sync_engines
        lineage.sql_tracer_provider = sql_provider
    return lineage


def attach(
    provider: TracerProvider,
    settings: LineageSettings,
    *,
    meter_provider: metrics.MeterProvider | None = None,
    exporting: bool | None = None,
) -> Lineage:
    """Add the lineage pipeline to ``provider`` (the flag is assumed on).

    ``exporting``: whether a span exporter is configured in this process (rows record
    ``exported`` only then); by default read from ``OTEL_TRACES_EXPORTER``.
    """
    if active_lineage(provider) is not None:
        raise LineageStartError("lineage is already attached to this tracer provider")
    check_sampler_env()
    _check_sampler(provider.sampler)
    seals = SealSettings.from_env()  # a bad value or key file fails the start, named
    if exporting is None:
        exporting = _exporter_names() != set()
    service = provider.resource.attributes.get("service.name")
    # The key file is read and checked here, before any report: a bad one stops the start
    # (one line naming OTEL_LINEAGE_SNAPSHOT_KEY_FILE) rather than storing snapshots in clear.
    snapshots = SnapshotStore(keyring_from_env())
    store = LineageStore(
        create_lineage_engine(
            settings.database_url, statement_timeout_s=WRITER_STATEMENT_TIMEOUT_S
        ),
        service_name=str(service) if service else None,
        snapshots=snapshots,
    )
    stats = LineageStats()
    handoff, outbox_problem = make_handoff(settings)
    writer = BackgroundWriter(
        handoff,
        store,
        stats,
        batch_size=settings.batch_size,
        sealer=writer_sealer(store.engine, seals.signer) if seals.every_s else None,
        seal_every_s=seals.every_s,
    )
    processor = LineageSpanProcessor(
        handoff,
        writer,
        stats=stats,
        max_traces=settings.max_traces,
        max_spans_per_trace=settings.max_spans_per_trace,
        trace_ttl_s=settings.trace_ttl_s,
        exporting=exporting,
    )
    provider.add_span_processor(processor)
    stats.register_metrics(handoff.pending, meter_provider)
    stamper = TraceStamper(settings.stamp_classes)
    stamper.install()
    lineage = Lineage(
        provider=provider,
        settings=settings,
        processor=processor,
        stamper=stamper,
        store=store,
        outbox_problem=outbox_problem,
    )
    _ACTIVE[provider] = lineage
    return lineage


#: A lineage write that takes longer than this is abandoned and retried (the database may
#: accept connections and never answer); the writer's own backoff applies.
WRITER_STATEMENT_TIMEOUT_S = 30.0


_PARENT_ALWAYS_ON: str = ParentBased(ALWAYS_ON).get_description()  # type: ignore[no-untyped-call]


def check_sampler_env() -> None:
    """A bad ``OTEL_TRACES_SAMPLER``/``_ARG`` is an error here, not the SDK's silent default.

    The SDK replaces a sampler it cannot build with its default (export everything) after a
    warning; here an unknown name or a bad argument stops the start with one line. A name in
    the wrong case is taken in lower case (the SDK's names are lower case).
    """
    raw = os.environ.get("OTEL_TRACES_SAMPLER")
    if raw is None or not raw.strip():
        return
    name = raw.strip().lower()
    if name != raw:
        os.environ["OTEL_TRACES_SAMPLER"] = name
    if name.removeprefix(LINEAGE_PREFIX) not in STANDARD_SAMPLERS:
        installed = {ep.name for ep in entry_points(group="opentelemetry_traces_sampler")}
        if name in installed:
            return  # a sampler of another package: the SDK resolves it
        raise LineageConfigError(
            f"OTEL_TRACES_SAMPLER={raw!r} is not a known sampler: expected one of "
            f"{', '.join(sorted(STANDARD_SAMPLERS))}, or lineage_<one of them>"
        )
    try:
        sampler_from_name(name, os.environ.get("OTEL_TRACES_SAMPLER_ARG"))
    except LineageConfigError:
        raise  # a lineage setting the sampler reads (OTEL_LINEAGE_RECORD_SPANS), named
    except ValueError as exc:
        raise LineageConfigError(
            f"OTEL_TRACES_SAMPLER={name} with OTEL_TRACES_SAMPLER_ARG="
            f"{os.environ.get('OTEL_TRACES_SAMPLER_ARG')!r}: {exc}"
        ) from None


def _check_sampler(sampler: Sampler) -> None:
    """Refuse a sampler that can drop report traces: their lineage would be lost silently."""
    if isinstance(sampler, LineageSampler):
        return
    description: str = sampler.get_description()
    never_drops = sampler is ALWAYS_ON or (
        isinstance(sampler, ParentBased) and description == _PARENT_ALWAYS_ON
    )
    if not never_drops:
        raise LineageConfigError(
            f"the tracer provider's sampler is {description}, which drops "
            "report traces and their lineage: use a LineageSampler "
            "(OTEL_TRACES_SAMPLER=lineage_<standard name>)"
        )


def make_handoff(settings: LineageSettings) -> tuple[HandOff, str | None]:
    """The durable outbox under ``settings.outbox``; memory when it says ``memory``, or when
    the outbox cannot be opened (then also the one-line reason)."""
    if settings.outbox == MEMORY_OUTBOX:
        return MemoryHandOff(settings.max_pending), None
    try:
        box = OutboxHandOff(
            Path(settings.outbox),
            max_records=settings.max_pending,
            max_bytes=settings.outbox_max_bytes,
        )
    except (OSError, sqlite3.Error) as exc:
        # An embedding application must not fail to start for lineage: keep records in memory
        # (they survive database outages, not crashes) and say so, in one line.
        problem = (
            f"lineage outbox {settings.outbox} unusable ({type(exc).__qualname__}: "
            f"{getattr(exc, 'strerror', None) or exc})"
        )
        _log.error("%s; records are kept in memory only (not crash-safe)", problem)
        return MemoryHandOff(settings.max_pending), problem
    return box, None


def _lineage_sampler(delegate: Sampler | None, enabled: bool, span_recording: str) -> Sampler:
    if delegate is None:
        name = os.environ.get("OTEL_TRACES_SAMPLER")
        try:
            delegate = sampler_from_name(name, os.environ.get("OTEL_TRACES_SAMPLER_ARG"))
        except ValueError as exc:
            raise LineageConfigError(f"OTEL_TRACES_SAMPLER={name!r}: {exc}") from None
    if enabled and not isinstance(delegate, LineageSampler):
        return LineageSampler(delegate, span_recording=span_recording)
    if not enabled and isinstance(delegate, LineageSampler):
        return delegate.delegate
    return delegate


def _exporter_names() -> set[str]:
    names = os.environ.get("OTEL_TRACES_EXPORTER", "")
    return {n.strip().lower() for n in names.split(",")} - _NO_EXPORT


def _otlp_exporter_from_env() -> SpanExporter | None:
    exporters = _exporter_names()
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    explicit_none = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none"
    unknown = exporters - {"otlp", "otlp_proto_http", "otlp_proto_grpc"}
    if unknown:
        raise LineageConfigError(
            f"OTEL_TRACES_EXPORTER names {', '.join(sorted(unknown))}: configure() can only "
            "add OTLP (pass exporter= for another one)"
        )
    if not exporters and not (endpoint and not explicit_none):
        return None
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter as GrpcExporter,
            )
        except ImportError:
            raise LineageConfigError(
                "OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs opentelemetry-exporter-otlp-proto-grpc "
                "(not installed); use http/protobuf"
            ) from None
        grpc_exporter: SpanExporter = GrpcExporter()
        return grpc_exporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()
