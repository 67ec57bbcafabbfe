"""``LineageSpanProcessor``: collects each report trace and folds it when its root ends.

Hot-path rules (``on_start``/``on_end`` run on the application's thread): never raise, never
do I/O. A span of a report trace is appended to its trace's buffer; when the ``report.generate``
root ends, the buffer is folded (pure, in memory) and the record handed off to the background
writer. Unlike the exporting processors this one does *not* skip unsampled spans: recorded is
enough, which is the point.

Memory is bounded: at most ``max_traces`` open report traces and ``max_spans_per_trace`` spans
each; a trace whose root has not ended after ``trace_ttl_s`` is folded as incomplete and
evicted. Spans that end after their report was folded are counted as late and dropped.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field

from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from otel_lineage import semconv
from otel_lineage.fold import fold
from otel_lineage.handoff import HandOff
from otel_lineage.ratelimit import RateLimitedLogger
from otel_lineage.stats import LineageStats
from otel_lineage.writer import BackgroundWriter

_log = RateLimitedLogger(logging.getLogger(__name__))
_RECENT_CAP = 10_000


@dataclass(slots=True)
class _TraceBuffer:
    root: Span
    created: float
    spans: list[ReadableSpan] = field(default_factory=list)
    snapshot: bytes | None = None
    overflow: int = 0


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
    ) -> None:
        self.handoff = handoff
        self.writer = writer
        self.stats = stats or LineageStats()
        self._max_traces = max_traces
        self._max_spans = max_spans_per_trace
        self._ttl = trace_ttl_s
        self._root_name = root_span_name
        self._buffers: dict[int, _TraceBuffer] = {}
        self._recent: OrderedDict[int, None] = OrderedDict()
        self._lock = threading.Lock()
        self._last_sweep = time.monotonic()
        self._shutdown = False
        if writer is not None:
            writer.start()
        _register_fork_handler(self)

    # -- SpanProcessor hooks (never raise) ------------------------------------------------

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        try:
            if self._shutdown:
                return
            trace_id = span.context.trace_id
            if span.name == self._root_name:
                self._open(trace_id, span)
                return
            buffer = self._buffers.get(trace_id)
            if buffer is not None and parent_context is not None:
                snapshot = otel_context.get_value(
                    semconv.INPUTS_SNAPSHOT_CONTEXT_KEY, parent_context
                )
                if isinstance(snapshot, bytes):
                    buffer.snapshot = snapshot
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
                is_root = context.span_id == buffer.root.context.span_id
                if is_root or len(buffer.spans) < self._max_spans:
                    buffer.spans.append(span)  # the root is never dropped by the cap
                else:
                    buffer.overflow += 1
                if not is_root:
                    return
                del self._buffers[trace_id]
                self._remember(trace_id)
            self._fold_and_hand_off(buffer, span, buffer.spans)
        except Exception:
            self.stats.add("errors")
            _log.exception("lineage on_end failed")

    def shutdown(self) -> None:
        if self._shutdown:
            return
        self._shutdown = True
        with self._lock:
            stranded = list(self._buffers.values())
            self._buffers.clear()
        for buffer in stranded:  # roots that never ended: keep what we know, marked incomplete
            self._evict(buffer)
        if self.writer is not None:
            self.writer.stop()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        if self.writer is None:
            return True
        return self.writer.flush(timeout_millis / 1000)

    # -- internals ------------------------------------------------------------------------

    def _open(self, trace_id: int, root: Span) -> None:
        now = time.monotonic()
        evict: list[_TraceBuffer] = []
        with self._lock:
            self._buffers[trace_id] = _TraceBuffer(root=root, created=now)
            if len(self._buffers) > self._max_traces:
                oldest = next(iter(self._buffers))
                evict.append(self._buffers.pop(oldest))
                self._remember(oldest)
            if now - self._last_sweep > min(self._ttl / 10, 10.0):
                self._last_sweep = now
                expired = [t for t, b in self._buffers.items() if now - b.created > self._ttl]
                for expired_id in expired:
                    evict.append(self._buffers.pop(expired_id))
                    self._remember(expired_id)
        for buffer in evict:
            self._evict(buffer)

    def _remember(self, trace_id: int) -> None:
        self._recent[trace_id] = None
        if len(self._recent) > _RECENT_CAP:
            self._recent.popitem(last=False)

    def _evict(self, buffer: _TraceBuffer) -> None:
        """Fold a trace whose root has not ended, with the live root span as it stands."""
        self._fold_and_hand_off(buffer, buffer.root, [*buffer.spans, buffer.root], evicted=True)

    def _fold_and_hand_off(
        self,
        buffer: _TraceBuffer,
        root: ReadableSpan,
        spans: list[ReadableSpan],
        *,
        evicted: bool = False,
    ) -> None:
        try:
            record = fold(
                spans,
                root=root,
                snapshot=buffer.snapshot,
                dropped_spans=buffer.overflow,
                evicted=evicted,
            )
        except Exception:
            self.stats.add("errors")
            _log.exception("folding a report trace failed")
            return
        if evicted:
            self.stats.add("evicted")
        self.stats.add("folded")
        if not record.complete:
            self.stats.add("incomplete")
        if not self.handoff.put(record):
            self.stats.add("dropped")
            _log.warning("lineage hand-off full; record of trace %s dropped", record.trace_id)

    def _after_fork_in_child(self) -> None:
        # The parent's open traces are the parent's; the child starts clean with a live writer.
        self._buffers = {}
        self._recent = OrderedDict()
        self._lock = threading.Lock()
        self.stats.reset()
        if self.writer is not None and not self._shutdown:
            self.writer.restart_after_fork()


def _register_fork_handler(processor: LineageSpanProcessor) -> None:
    ref = weakref.ref(processor)

    def after_in_child() -> None:
        alive = ref()
        if alive is not None:
            alive._after_fork_in_child()

    os.register_at_fork(after_in_child=after_in_child)
