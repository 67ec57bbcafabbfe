"""A tracer provider that can let go of the real one: for the SQLAlchemy instrumentation.

The SQLAlchemy instrumentation registers a ``weakref.finalize`` per engine listener that holds
its tracer until the *application's* engine is garbage collected, and ``uninstrument()`` does
not remove them. Handed the real provider, every ``configure()``/``shutdown()`` cycle would keep
a whole lineage pipeline (provider, processor, writer, store engine) alive for as long as the
application's engine lives. Handed this wrapper, shutdown detaches it: what the finalizers keep
is a few empty objects, and their spans become no-ops.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind, Tracer, TracerProvider
from opentelemetry.util.types import Attributes

_NO_OP = trace.NoOpTracer()


class DetachableTracerProvider(TracerProvider):
    def __init__(self, provider: TracerProvider) -> None:
        self._provider: TracerProvider | None = provider
        self._tracers: list[ForwardingTracer] = []

    def get_tracer(self, *args: Any, **kwargs: Any) -> Tracer:
        real = self._provider.get_tracer(*args, **kwargs) if self._provider else _NO_OP
        tracer = ForwardingTracer(real)
        self._tracers.append(tracer)
        return tracer

    def detach(self) -> None:
        """From now on every tracer handed out is a no-op and holds nothing of the pipeline."""
        self._provider = None
        for tracer in self._tracers:
            tracer.real = _NO_OP
        self._tracers.clear()


class ForwardingTracer(Tracer):
    """Starts every span on ``self.real``, whatever its holder makes that now (a no-op once
    detached here; the provider of the block being measured, in the bench)."""

    def __init__(self, real: Tracer) -> None:
        self.real = real

    def start_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> Span:
        return self.real.start_span(
            name,
            context,
            kind,
            attributes,
            links,
            start_time,
            record_exception,
            set_status_on_exception,
        )

    def start_as_current_span(  # type: ignore[override]
        self, name: str, *args: Any, **kwargs: Any
    ) -> AbstractContextManager[Span]:
        return self.real.start_as_current_span(name, *args, **kwargs)
