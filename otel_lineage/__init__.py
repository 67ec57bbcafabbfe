"""otel_lineage: report lineage as a byproduct of OpenTelemetry tracing.

``configure()`` (or zero-code ``opentelemetry-instrument``) adds a ``LineageSampler`` and a
``LineageSpanProcessor`` to the SDK; each finished report trace becomes one ``report_lineage``
row. See docs/architecture.md.

The package is grouped by stage, and imports point one way: ``startup`` wires ``capture`` (on
the application's threads) to ``delivery`` (outbox, writer, store); ``reading`` (queries,
exports, verify) and ``cli`` sit on ``delivery``; ``record``, ``semconv``, ``settings`` and
``ratelimit`` at the root are shared by all.
"""

from otel_lineage.capture.fold import fold
from otel_lineage.capture.processor import LineageSpanProcessor
from otel_lineage.capture.sampler import LineageSampler
from otel_lineage.record import LineageRecord
from otel_lineage.settings import LineageConfigError
from otel_lineage.startup.configuration import Lineage, LineageStartError, configure

__all__ = [
    "Lineage",
    "LineageConfigError",
    "LineageRecord",
    "LineageSampler",
    "LineageSpanProcessor",
    "LineageStartError",
    "configure",
    "fold",
]
