"""Helpers for lineage tests: a configured pipeline on a real SDK provider and database."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, Sampler, TraceIdRatioBased
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

import otel_lineage
from d6_reports.generator import ReportGenerator
from otel_lineage import LineageSampler
from otel_lineage.delivery.schema import report_lineage


@contextmanager
def lineage_pipeline(
    db_url: str,
    engine: Engine,
    *,
    ratio: float = 1.0,
    enabled: bool = True,
    sampler: Sampler | None = None,
    span_limits: SpanLimits | None = None,
    span_recording: str = "report",
) -> Iterator[tuple[otel_lineage.Lineage, InMemorySpanExporter]]:
    """A provider exporting (sampled spans) to memory, with lineage written to ``db_url``."""
    delegate = sampler or ParentBased(TraceIdRatioBased(ratio))
    provider = TracerProvider(
        sampler=LineageSampler(delegate, span_recording=span_recording) if enabled else delegate,
        span_limits=span_limits,
    )
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    lineage = otel_lineage.configure(
        tracer_provider=provider,
        database_url=db_url,
        engines=[engine],
        enabled=enabled,
        set_global=False,
    )
    try:
        yield lineage, exporter
    finally:
        lineage.shutdown()
        provider.shutdown()


def make_generator(
    sessions: sessionmaker[Session], lineage: otel_lineage.Lineage, reports_dir: object
) -> ReportGenerator:
    from pathlib import Path

    return ReportGenerator(sessions, Path(str(reports_dir)), tracer_provider=lineage.provider)


def lineage_rows(engine: Engine) -> list[dict[str, object]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(report_lineage)).mappings()]
