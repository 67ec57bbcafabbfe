"""otel_lineage: report lineage as a byproduct of OpenTelemetry tracing.

``configure()`` (or zero-code ``opentelemetry-instrument``) adds a ``LineageSampler`` and a
``LineageSpanProcessor`` to the SDK; each finished report trace becomes one ``report_lineage``
row. See docs/architecture.md.
"""

from otel_lineage.configuration import Lineage, configure
from otel_lineage.fold import fold
from otel_lineage.processor import LineageSpanProcessor
from otel_lineage.record import LineageRecord
from otel_lineage.sampler import LineageSampler

__all__ = [
    "Lineage",
    "LineageRecord",
    "LineageSampler",
    "LineageSpanProcessor",
    "configure",
    "fold",
]
