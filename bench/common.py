"""Pieces shared by the benchmark sections."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from otel_lineage.capture.processor import LineageSpanProcessor
from otel_lineage.delivery.store import LineageStore


class NullExporter(SpanExporter):
    """Stands in for the OTLP exporter so tracing cost is measured without a network."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "median": round(statistics.median(values), 3),
        "p95": round(pct(values, 0.95), 3),
        "p99": round(pct(values, 0.99), 3),
    }


class TimedProcessor(LineageSpanProcessor):
    """The real processor, with the time spent in its hooks (fold included) accumulated."""

    hook_ns = 0

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        started = time.perf_counter_ns()
        super().on_start(span, parent_context)
        TimedProcessor.hook_ns += time.perf_counter_ns() - started

    def on_end(self, span: ReadableSpan) -> None:
        started = time.perf_counter_ns()
        super().on_end(span)
        TimedProcessor.hook_ns += time.perf_counter_ns() - started


class TimedStore(LineageStore):
    """The real store, with the writer thread's CPU time in upserts accumulated.

    CPU time, not wall time: the writer shares the GIL with WeasyPrint, so its wall time
    mostly measures waiting for the report thread, not work.
    """

    write_ns = 0
    records = 0
    batches = 0

    def upsert(self, records: Sequence[Any]) -> None:
        started = time.thread_time_ns()
        super().upsert(records)
        TimedStore.write_ns += time.thread_time_ns() - started
        TimedStore.records += len(records)
        TimedStore.batches += 1
