"""The fold and the processor with a real SDK tracer and no database."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Span, Status, StatusCode

from otel_lineage import LineageRecord, LineageSampler, LineageSpanProcessor, fold, semconv
from otel_lineage.capture.fold import EVICTED_AT_SHUTDOWN, EVICTED_BY_TRACE_CAP, EVICTED_BY_TTL
from otel_lineage.capture.sampler import sampler_from_name
from otel_lineage.delivery.handoff import MemoryHandOff
from otel_lineage.record import decompress

SNAPSHOT = b'{"business":{"name":"Acme"},"schema":"d6.report-inputs/1"}'
DIGEST = hashlib.sha256(SNAPSHOT).hexdigest()
SHA = "a" * 64


def _tracer(
    processor: LineageSpanProcessor | None = None, limits: SpanLimits | None = None
) -> tuple[TracerProvider, InMemorySpanExporter]:
    provider = TracerProvider(
        sampler=LineageSampler(sampler_from_name("parentbased_always_on")), span_limits=limits
    )
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    if processor is not None:
        provider.add_span_processor(processor)
    return provider, exporter


#: The carrier of every report ``_report`` made, by trace id (``_fold`` looks it up).
_CARRIERS: dict[int, dict[str, object]] = {}


def _report(
    provider: TracerProvider,
    *,
    snapshot: bytes | None = SNAPSHOT,
    digest: str = DIGEST,
    fail: bool = False,
    steps: tuple[str, ...] = semconv.STEP_SPANS,
    generation_id: str | None = None,
    carrier: dict[str, object] | None = None,
    library_spans: int = 0,
) -> dict[str, object]:
    """A report trace shaped as the generator makes it: every fact in the carrier and on a span.

    ``library_spans`` SQL-like spans are started under each step.
    """
    tracer = provider.get_tracer("d6_reports")
    carried: dict[str, object] = {} if carrier is None else carrier
    attrs: dict[str, str | int] = {
        semconv.GENERATION_ID: generation_id or str(uuid.uuid4()),
        semconv.BUSINESS_ID: 7,
        semconv.TEMPLATE_NAME: "t",
    }
    carried.update(attrs)
    context = otel_context.set_value(semconv.REPORT_CONTEXT_KEY, carried, Context())

    def record(span: Span, facts: dict[str, Any]) -> None:
        carried.update(facts)
        span.set_attributes(facts)

    with tracer.start_as_current_span(
        semconv.SPAN_GENERATE, context=context, attributes=attrs
    ) as root:
        _CARRIERS[root.get_span_context().trace_id] = carried
        record(root, {semconv.TEMPLATE_VERSION: "1.0.0", semconv.TEMPLATE_SHA256: SHA})
        for name in steps:
            with tracer.start_as_current_span(name) as span:
                for _ in range(library_spans):
                    with tracer.start_as_current_span("SELECT"):
                        pass
                if name == semconv.SPAN_LOAD_INPUTS:
                    if snapshot is not None:
                        carried[semconv.INPUTS_SNAPSHOT] = snapshot
                    record(
                        span, {semconv.INPUTS_SHA256: digest, semconv.INPUTS_BYTES: len(SNAPSHOT)}
                    )
                    span.set_attribute(semconv.INPUTS_TABLES, ["business", "finding"])
                if name == semconv.SPAN_CONVERT_PDF:
                    record(span, {semconv.OUTPUT_SHA256: SHA, semconv.OUTPUT_PAGES: 3})
        if fail:
            carried[semconv.ERROR_MESSAGE] = "it broke for Acme"
            root.set_status(Status(StatusCode.ERROR, "BusinessNotFound: no such business"))
            record(root, {semconv.ERROR_TYPE: "BusinessNotFound", semconv.STATUS: "failed"})
        else:
            record(root, {semconv.STATUS: "completed"})
    return carried


def _fold(exporter: InMemorySpanExporter, snapshot: bytes | None = SNAPSHOT) -> LineageRecord:
    """Fold the one report in ``exporter``, its carrier holding ``snapshot``."""
    spans = exporter.get_finished_spans()
    (root,) = [s for s in spans if s.name == semconv.SPAN_GENERATE]
    assert root.context is not None
    carrier = dict(_CARRIERS[root.context.trace_id])
    carrier.pop(semconv.INPUTS_SNAPSHOT, None)
    if snapshot is not None:
        carrier[semconv.INPUTS_SNAPSHOT] = snapshot
    return fold(spans, root=root, carrier=carrier)


def test_fold_complete_record() -> None:
    provider, exporter = _tracer()
    _report(provider, generation_id="gen-1")
    record = _fold(exporter)
    assert record.complete, record.incomplete_reasons
    assert (record.report_generation_id, record.business_id) == ("gen-1", 7)
    assert (record.template_name, record.template_version) == ("t", "1.0.0")
    assert record.inputs_sha256 == DIGEST and record.inputs_bytes == len(SNAPSHOT)
    assert record.inputs_snapshot is not None
    assert decompress(record.inputs_snapshot, record.inputs_codec) == SNAPSHOT
    assert record.output_pages == 3 and record.status == "completed"
    assert [s["name"] for s in record.steps] == list(semconv.STEP_SPANS)
    assert record.input_tables == ["business", "finding"]
    assert record.span_count == 5
    tree = decompress(record.span_tree, record.span_tree_codec)
    assert b"report.convert_pdf" in tree and b"Acme" not in tree  # no payload in the tree
    assert LineageRecord.from_bytes(record.to_bytes()) == record


def test_fold_failed_root() -> None:
    provider, exporter = _tracer()
    _report(provider, fail=True, snapshot=None, steps=(semconv.SPAN_LOAD_INPUTS,))
    record = _fold(exporter, snapshot=None)
    assert (record.status, record.error_type, record.error_message) == (
        "failed",
        "BusinessNotFound",
        "it broke for Acme",  # the carrier's full message: only ever in the lineage database
    )


@pytest.mark.parametrize(
    ("kwargs", "snapshot", "reason"),
    [
        ({"digest": "b" * 64}, SNAPSHOT, "inputs_snapshot_sha256_mismatch"),
        ({}, SNAPSHOT + b" ", "inputs_snapshot_sha256_mismatch"),
        ({"snapshot": None}, None, "inputs_snapshot_missing"),
        ({"steps": semconv.STEP_SPANS[:2]}, SNAPSHOT, "missing_span:report.convert_pdf"),
    ],
)
def test_fold_marks_what_it_cannot_trust(
    kwargs: dict[str, object], snapshot: bytes | None, reason: str
) -> None:
    provider, exporter = _tracer()
    _report(provider, **kwargs)  # type: ignore[arg-type]
    record = _fold(exporter, snapshot=snapshot)
    assert not record.complete
    assert reason in record.incomplete_reasons


def test_truncation_by_span_limits_is_detected() -> None:
    provider, exporter = _tracer(limits=SpanLimits(max_attribute_length=20))
    _report(provider)
    record = _fold(exporter)
    assert f"truncated_attribute:{semconv.INPUTS_SHA256}" in record.incomplete_reasons
    assert not record.complete
    assert record.inputs_sha256 == DIGEST  # the carrier's value, not the cut attribute


def test_dropped_attributes_are_detected() -> None:
    provider, exporter = _tracer(limits=SpanLimits(max_span_attributes=2))
    _report(provider)
    record = _fold(exporter)
    assert any(r.startswith("dropped_span_data:report.generate") for r in record.incomplete_reasons)


@contextmanager
def _processor(**kwargs: object) -> Iterator[tuple[LineageSpanProcessor, MemoryHandOff]]:
    handoff = MemoryHandOff(capacity=int(kwargs.pop("capacity", 1000)))  # type: ignore[call-overload]
    processor = LineageSpanProcessor(handoff, **kwargs)  # type: ignore[arg-type]
    try:
        yield processor, handoff
    finally:
        processor.shutdown()


def _taken(handoff: MemoryHandOff) -> list[LineageRecord]:
    return [p.record for p in handoff.take(1000, 0)]


def test_processor_folds_each_report_once_at_root_end() -> None:
    with _processor() as (processor, handoff):
        provider, _ = _tracer(processor)
        _report(provider)
        _report(provider)
        tracer = provider.get_tracer("x")
        with tracer.start_as_current_span("unrelated"):
            pass
        records = _taken(handoff)
        assert len(records) == 2 and all(r.complete for r in records)
        assert processor.stats.snapshot().folded == 2
        assert processor._buffers == {}


def test_late_spans_are_counted_and_dropped() -> None:
    with _processor() as (processor, handoff):
        provider, _ = _tracer(processor)
        tracer = provider.get_tracer("x")
        root = tracer.start_span(semconv.SPAN_GENERATE)
        ctx = otel_context.set_value("k", 1)
        child = tracer.start_span("slow.child", context=trace.set_span_in_context(root, ctx))
        root.end()
        child.end()  # ends after its report was folded
        (record,) = _taken(handoff)
        assert record.span_count == 1
        assert processor.stats.snapshot().late == 1


def _wait_for(condition: Any, timeout_s: float = 10.0) -> None:
    """Poll until ``condition()``: the sweeper runs on its own thread."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def test_never_ending_roots_are_evicted_after_ttl_and_recorded_incomplete() -> None:
    with _processor(trace_ttl_s=0.05, sweep_interval_s=0.01) as (processor, handoff):
        provider, _ = _tracer(processor)
        tracer = provider.get_tracer("x")
        stuck = tracer.start_span(semconv.SPAN_GENERATE, attributes={semconv.GENERATION_ID: "s"})
        # No other report starts: the sweep does not wait for one.
        _wait_for(lambda: handoff.pending() == 1)
        (record,) = _taken(handoff)
        assert record.report_generation_id == "s"
        assert record.status == "unfinished"
        assert record.incomplete_reasons == [EVICTED_BY_TTL]
        counts = processor.stats.snapshot()
        assert counts.evicted == 1 and counts.incomplete == 1
        stuck.end()
        assert processor.stats.snapshot().late == 1
        assert len(processor._buffers) == 0


def test_sweeper_stops_at_shutdown_and_restarts_in_a_forked_child() -> None:
    import os
    import threading

    def sweepers() -> int:
        return sum(t.name == "otel-lineage-sweep" for t in threading.enumerate())

    before = sweepers()
    processor = LineageSpanProcessor(MemoryHandOff(), trace_ttl_s=0.05, sweep_interval_s=0.01)
    assert sweepers() == before + 1
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its own sweeper thread evicts its own stuck root
        try:
            provider, _ = _tracer(processor)
            provider.get_tracer("x").start_span(semconv.SPAN_GENERATE)
            _wait_for(lambda: processor.handoff.pending() == 1)
            os.write(write, b"ok")
        finally:
            os._exit(0)
    os.close(write)
    assert os.read(read, 2) == b"ok"
    os.waitpid(pid, 0)
    processor.shutdown()
    _wait_for(lambda: sweepers() == before)


def test_open_traces_are_capped() -> None:
    with _processor(max_traces=3) as (processor, handoff):
        provider, _ = _tracer(processor)
        tracer = provider.get_tracer("x")
        roots = [tracer.start_span(semconv.SPAN_GENERATE) for _ in range(10)]
        assert len(processor._buffers) == 3
        assert processor.stats.snapshot().evicted == 7
        for root in roots:
            root.end()
        assert processor.stats.snapshot().late == 7
        records = _taken(handoff)
        assert len(records) == 10  # 7 evicted (incomplete) + 3 folded normally
        evicted = [r for r in records if r.status == "unfinished"]
        assert len(evicted) == 7
        # Over the cap is not "too old": the reason says which it was.
        assert all(r.incomplete_reasons == [EVICTED_BY_TRACE_CAP] for r in evicted)


def test_spans_per_trace_are_capped() -> None:
    with _processor(max_spans_per_trace=3) as (processor, handoff):
        provider, _ = _tracer(processor)
        _report(provider)
        (record,) = _taken(handoff)
        assert record.span_count == 4  # 3 buffered + the root itself
        # 5 spans, cap 3, root exempt: exactly one step span was dropped, and it shows.
        assert "span_buffer_overflow:1" in record.incomplete_reasons
        assert "missing_span:report.store" in record.incomplete_reasons
        assert processor.stats.snapshot().evicted == 1  # counted, as docs/operations.md says


def test_span_cap_drops_library_spans_before_step_spans() -> None:
    with _processor(max_spans_per_trace=6) as (processor, handoff):
        provider, _ = _tracer(processor)
        _report(provider, library_spans=3)  # 4 steps + 12 SQL spans, cap 6
        (record,) = _taken(handoff)
        names = [s["name"] for s in record.steps]
        assert names == list(semconv.STEP_SPANS)  # every step span kept, with its digests
        assert record.output_sha256 == SHA and record.output_pages == 3
        assert record.span_count == 7  # 6 buffered + the root
        assert "span_buffer_overflow:10" in record.incomplete_reasons
        assert not any(r.startswith("missing_span") for r in record.incomplete_reasons)
        assert processor.stats.snapshot().evicted == 1


def test_full_handoff_counts_dropped_records() -> None:
    with _processor(capacity=1) as (processor, handoff):
        provider, _ = _tracer(processor)
        _report(provider)
        _report(provider)
        assert handoff.pending() == 1
        assert processor.stats.snapshot().dropped == 1


def test_hooks_never_raise_on_garbage() -> None:
    with _processor() as (processor, _):
        processor.on_start(object())  # type: ignore[arg-type]
        processor.on_end(object())  # type: ignore[arg-type]
        assert processor.stats.snapshot().errors == 2


def test_shutdown_is_idempotent_and_folds_stranded_roots() -> None:
    handoff = MemoryHandOff()
    processor = LineageSpanProcessor(handoff)
    provider, _ = _tracer(processor)
    provider.get_tracer("x").start_span(semconv.SPAN_GENERATE)
    processor.shutdown()
    processor.shutdown()
    assert handoff.pending() == 1
    batch = handoff.take(1, 0)
    assert batch[0].record.incomplete_reasons == [EVICTED_AT_SHUTDOWN]
    handoff.release(batch)
    assert processor.force_flush(10)  # no writer: nothing to wait for
    _report(provider)  # after shutdown: ignored
    assert handoff.pending() == 1


def test_handoff_release_keeps_order_and_abandon_counts() -> None:
    provider, exporter = _tracer()
    _report(provider)
    record = _fold(exporter)
    handoff = MemoryHandOff(capacity=3)
    for _ in range(3):
        assert handoff.put(record)
    assert not handoff.put(record)
    batch = handoff.take(2, 0)
    assert [p.key for p in batch] == [1, 2]
    handoff.release(batch)
    assert [p.key for p in handoff.take(3, 0)] == [1, 2, 3]
    assert handoff.pending() == 3
    assert handoff.abandon() == 3
