"""SQLAlchemy listener that stamps the current trace on report-generation rows.

Registered by the plugin (never by the generator), it sets ``trace_id``/``span_id`` on every
newly inserted instance of the configured mapped classes, in the same flush and transaction as
the row itself: the durable link from every PDF to the trace, and so to its lineage row, even
when the trace was never exported.

A queued generation's row is inserted when the report is requested and run later, perhaps
more than once (a redelivered task): an update made while a report's root span is current
(the generator starts each attempt that way) re-stamps the row with that trace when it names
another one, so the row always points at its latest attempt. Other updates never touch it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from opentelemetry import trace
from sqlalchemy import event
from sqlalchemy.orm import Mapper

from otel_lineage import semconv as sc
from otel_lineage.ratelimit import RateLimitedLogger

_log = RateLimitedLogger(logging.getLogger(__name__))
DEFAULT_CLASSES = ("ReportGeneration",)


class TraceStamper:
    """``before_insert`` hook on every mapper, acting on the named classes only."""

    def __init__(
        self,
        class_names: Iterable[str] = DEFAULT_CLASSES,
        *,
        trace_attr: str = "trace_id",
        span_attr: str = "span_id",
    ) -> None:
        self._names = frozenset(class_names)
        self._trace_attr = trace_attr
        self._span_attr = span_attr
        self.installed = False

    def install(self) -> None:
        if not self.installed:
            event.listen(Mapper, "before_insert", self._before_insert)
            event.listen(Mapper, "before_update", self._before_update)
            self.installed = True

    def uninstall(self) -> None:
        if self.installed:
            event.remove(Mapper, "before_insert", self._before_insert)
            event.remove(Mapper, "before_update", self._before_update)
            self.installed = False

    def _before_insert(self, _mapper: Mapper[Any], _connection: Any, target: Any) -> None:
        try:
            if type(target).__name__ not in self._names:
                return
            if getattr(target, self._trace_attr, None) is not None:
                return
            context = trace.get_current_span().get_span_context()
            if not context.is_valid:
                return
            setattr(target, self._trace_attr, trace.format_trace_id(context.trace_id))
            setattr(target, self._span_attr, trace.format_span_id(context.span_id))
        except Exception:  # a listener must never fail the application's flush
            _log.exception("stamping trace ids failed")

    def _before_update(self, _mapper: Mapper[Any], _connection: Any, target: Any) -> None:
        try:
            if type(target).__name__ not in self._names:
                return
            span = trace.get_current_span()
            if getattr(span, "name", None) != sc.SPAN_GENERATE:
                return  # only a report's own root re-stamps (never an admin request)
            context = span.get_span_context()
            if not context.is_valid:
                return
            trace_id = trace.format_trace_id(context.trace_id)
            if getattr(target, self._trace_attr, None) == trace_id:
                return
            setattr(target, self._trace_attr, trace_id)
            setattr(target, self._span_attr, trace.format_span_id(context.span_id))
        except Exception:  # a listener must never fail the application's flush
            _log.exception("stamping trace ids failed")
