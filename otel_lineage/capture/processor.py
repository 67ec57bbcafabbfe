"""``LineageSpanProcessor``: collects each report trace and folds it when its root ends.

Hot-path rules (``on_start``/``on_end`` run on the application's thread): never raise, never
do I/O beyond the hand-off. When a ``report.generate`` root starts, the processor keeps the
producer's report carrier from the root's start Context and tells the hand-off a report is open
(so a crash leaves an "abandoned" marker, not silence); a span of a report trace is appended to
its trace's buffer; when the root ends, the buffer is folded (pure, in memory) and the record
handed off to the background writer. Unlike the exporting processors this one does *not* skip
unsampled spans: recorded is enough, which is the point.

Memory is bounded: at most ``max_traces`` open report traces (beyond: the oldest is folded as
incomplete, reason ``evicted_by_trace_cap``) and ``max_spans_per_trace`` spans each (beyond:
library spans are dropped first, since the ``report.*`` step spans carry the digests). A small
daemon thread folds traces whose root has not ended after ``trace_ttl_s`` (reason
``root_span_not_ended_before_ttl``) without waiting for the next report. Every such trace is
counted as ``evicted``. Spans that end after their report was folded are counted as late and
dropped.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from otel_lineage import semconv
from otel_lineage.capture.fold import (
    EVICTED_AT_SHUTDOWN,
    EVICTED_BY_TRACE_CAP,
    EVICTED_BY_TTL,
    fold,
)
from otel_lineage.delivery.handoff import HandOff, ReportStart
from otel_lineage.delivery.stats import LineageStats
from otel_lineage.delivery.writer import BackgroundWriter
from otel_lineage.ratelimit import RateLimitedLogger

_log = RateLimitedLogger(logging.getLogger(__name__))
_RECENT_CAP = 10_000
_STEP_PREFIX = semconv.REPORT_SPAN_PREFIX


@dataclass(slots=True)
class _TraceBuffer:
    root: Span
    created: float
    carrier: Mapping[str, object] | None = None
    steps: list[ReadableSpan] = field(default_factory=list)  # report.* spans: kept first
    others: list[ReadableSpan] = field(default_factory=list)  # library spans (SQL, ...)
    overflow: int = 0

    def add(self, span: ReadableSpan, cap: int) -> None:
        """Buffer ``span`` within ``cap``; over it, a library span is the one dropped."""
        is_step = span.name.startswith(_STEP_PREFIX)
        if len(self.steps) + len(self.others) >= cap:
            self.overflow += 1
            if not is_step or not self.others:
                return
            self.others.pop()
        (self.steps if is_step else self.others).append(span)


class LineageSpanProcessor(SpanProcessor):
    def __init__(
        self,
        handoff: HandOff,
        writer: BackgroundWriter | None = None,
        *,
        stats: LineageStats | None = None,
        max_traces: int = 10_000,
        max_spans_per_trace: int = 2_000,
        trace_ttl_s: float = 600.0,
        root_span_name: str = semconv.SPAN_GENERATE,
        exporting: bool = False,
        sweep_interval_s: float | None = None,
    ) -> None:
        """``exporting``: a span exporter is configured (records say ``exported`` when sampled).

        ``sweep_interval_s``: how often the TTL sweep runs (default: a tenth of the TTL, at
        most 10 s).
        """
        self.handoff = handoff
        self.writer = writer
        self.stats = stats or LineageStats()
        self._max_traces = max_traces
        self._max_spans = max_spans_per_trace
        self._ttl = trace_ttl_s
        self._root_name = root_span_name
        self._exporting = exporting
        self._sweep_interval = max(sweep_interval_s or min(trace_ttl_s / 10, 10.0), 0.001)
        self._buffers: dict[int, _TraceBuffer] = {}
        self._recent: OrderedDict[int, None] = OrderedDict()
        self._lock = threading.Lock()
        self._shutdown = False
        self._stop_sweeping = threading.Event()
        if writer is not None:
            writer.start()
        self._sweeper = _start_sweeper(self)
        _register_fork_handler(self)

    # -- SpanProcessor hooks (never raise) ------------------------------------------------

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        try:
            if self._shutdown or span.name != self._root_name:
                return
            # Only the context the root was started in: the current one may be another report's.
            carrier = (
                None
                if parent_context is None
                else otel_context.get_value(semconv.REPORT_CONTEXT_KEY, parent_context)
            )
            carried = carrier if isinstance(carrier, Mapping) else None
            trace_id = span.context.trace_id
            self._open(trace_id, span, carried)
            known = _Known(carried or {}, span.attributes or {})
            generation_id = known.get(semconv.GENERATION_ID)
            self.handoff.begin(
                f"{trace_id:032x}",
                None if generation_id is None else str(generation_id),
                _report_start(known),
            )
        except Exception:
            self.stats.add("errors")
            _log.exception("lineage on_start failed")

    def on_end(self, span: ReadableSpan) -> None:
        try:
            context = span.context
            if context is None or self._shutdown:
                return
            trace_id = context.trace_id
            if trace_id not in self._buffers:
                if trace_id in self._recent:
                    self.stats.add("late")
                return
            with self._lock:
                buffer = self._buffers.get(trace_id)
                if buffer is None:
                    self.stats.add("late")
                    return
                if context.span_id != buffer.root.context.span_id:
                    buffer.add(span, self._max_spans)
                    return
                del self._buffers[trace_id]
                self._remember(trace_id)
            # The root is never dropped by the cap.
            self._fold_and_hand_off(buffer, span, [*buffer.steps, *buffer.others, span])
        except Exception:
            self.stats.add("errors")
            _log.exception("lineage on_end failed")

    def shutdown(self) -> None:
        if self._shutdown:
            return
        self._shutdown = True
        self._stop_sweeping.set()
        if self._sweeper is not threading.current_thread():
            self._sweeper.join(timeout=5.0)  # it only waits on the event, or folds a batch
        with self._lock:
            stranded = list(self._buffers.values())
            self._buffers.clear()
        for buffer in stranded:  # roots that never ended: keep what we know, marked incomplete
            self._evict(buffer, EVICTED_AT_SHUTDOWN)
        if self.writer is not None:
            self.writer.stop()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        if self.writer is None:
            return True
        return self.writer.flush(timeout_millis / 1000)

    # -- internals ------------------------------------------------------------------------

    def _open(self, trace_id: int, root: Span, carrier: Mapping[str, object] | None) -> None:
        evicted: _TraceBuffer | None = None
        with self._lock:
            self._buffers[trace_id] = _TraceBuffer(
                root=root, created=time.monotonic(), carrier=carrier
            )
            if len(self._buffers) > self._max_traces:
                oldest = next(iter(self._buffers))
                evicted = self._buffers.pop(oldest)
                self._remember(oldest)
        if evicted is not None:
            self._evict(evicted, EVICTED_BY_TRACE_CAP)

    def sweep(self) -> int:
        """Fold and evict the traces whose root is older than the TTL; how many there were."""
        now = time.monotonic()
        with self._lock:
            expired = [t for t, b in self._buffers.items() if now - b.created > self._ttl]
            buffers = [self._buffers.pop(t) for t in expired]
            for trace_id in expired:
                self._remember(trace_id)
        for buffer in buffers:
            self._evict(buffer, EVICTED_BY_TTL)
        return len(buffers)

    def _remember(self, trace_id: int) -> None:
        self._recent[trace_id] = None
        if len(self._recent) > _RECENT_CAP:
            self._recent.popitem(last=False)

    def _evict(self, buffer: _TraceBuffer, reason: str) -> None:
        """Fold a trace whose root has not ended, with the live root span as it stands."""
        spans = [*buffer.steps, *buffer.others, buffer.root]
        self._fold_and_hand_off(buffer, buffer.root, spans, evicted=reason)

    def _fold_and_hand_off(
        self,
        buffer: _TraceBuffer,
        root: ReadableSpan,
        spans: list[ReadableSpan],
        *,
        evicted: str | None = None,
    ) -> None:
        try:
            record = fold(
                spans,
                root=root,
                carrier=buffer.carrier,
                dropped_spans=buffer.overflow,
                evicted=evicted,
                exporting=self._exporting,
            )
        except Exception:
            self.stats.add("errors")
            _log.exception("folding a report trace failed")
            return
        if evicted or buffer.overflow:  # docs/operations.md: over a cap or TTL -> evicted
            self.stats.add("evicted")
        self.stats.add("folded")
        if not record.complete:
            self.stats.add("incomplete")
        if not self.handoff.put(record):
            self.stats.add("dropped")
            _log.warning("lineage hand-off full; record of trace %s dropped", record.trace_id)

    def _after_fork_in_child(self) -> None:
        # The parent's open traces are the parent's; the child starts clean with a live writer
        # and its own sweeper (threads do not survive fork).
        self._buffers = {}
        self._recent = OrderedDict()
        self._lock = threading.Lock()
        self.stats.reset()
        if not self._shutdown:
            self._stop_sweeping = threading.Event()
            self._sweeper = _start_sweeper(self)
            if self.writer is not None:
                self.writer.restart_after_fork()


def _start_sweeper(processor: LineageSpanProcessor) -> threading.Thread:
    """Run the TTL sweep every ``sweep interval`` on a daemon thread until shutdown.

    The thread holds the processor weakly, so a processor dropped without ``shutdown`` is
    collected and its sweeper ends.
    """
    ref = weakref.ref(processor)
    stop, interval = processor._stop_sweeping, processor._sweep_interval

    def run() -> None:
        while not stop.wait(interval):
            alive = ref()
            if alive is None:
                return
            try:
                alive.sweep()
            except Exception:
                alive.stats.add("errors")
                _log.exception("lineage TTL sweep failed")
            del alive

    thread = threading.Thread(target=run, name="otel-lineage-sweep", daemon=True)
    thread.start()
    return thread


def _register_fork_handler(processor: LineageSpanProcessor) -> None:
    ref = weakref.ref(processor)

    def after_in_child() -> None:
        alive = ref()
        if alive is not None:
            alive._after_fork_in_child()

    os.register_at_fork(after_in_child=after_in_child)


class _Known:
    """The carrier's value of a key, else the root's attribute (no merged copy per report)."""

    __slots__ = ("_attributes", "_carried")

    def __init__(self, carried: Mapping[str, object], attributes: Mapping[str, object]) -> None:
        self._carried, self._attributes = carried, attributes

    def get(self, key: str) -> object:
        value = self._carried.get(key)
        return self._attributes.get(key) if value is None else value


def _report_start(known: _Known) -> ReportStart:
    """The report's identity as known at its start, for its open marker (ids and names)."""

    def number(key: str) -> int | None:
        value = known.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def name(key: str) -> str | None:
        value = known.get(key)
        return value if isinstance(value, str) else None

    return ReportStart(
        business_id=number(semconv.BUSINESS_ID),
        template_name=name(semconv.TEMPLATE_NAME),
        template_version=name(semconv.TEMPLATE_VERSION),
        attempt=number(semconv.ATTEMPT),
    )
