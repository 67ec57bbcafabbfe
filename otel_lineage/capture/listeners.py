"""SQLAlchemy listener that stamps the current trace on report-generation rows.

Registered by the plugin (never by the generator), it sets ``trace_id``/``span_id`` on every
newly inserted instance of the configured mapped classes, in the same flush and transaction as
the row itself: the durable link from every PDF to the trace, and so to its lineage row, even
when the trace was never exported.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from opentelemetry import trace
from sqlalchemy import event
from sqlalchemy.orm import Mapper

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
            self.installed = True

    def uninstall(self) -> None:
        if self.installed:
            event.remove(Mapper, "before_insert", self._before_insert)
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
