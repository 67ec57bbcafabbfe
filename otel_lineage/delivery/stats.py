"""Counters about the lineage pipeline itself, as OpenTelemetry metrics and for the audit.

Incremented on the hot path (one lock, a few times per report), read by the writer, which
persists them to ``lineage_counters`` so ``otel-lineage audit`` sees every process's losses,
and by observable counters when a meter provider is configured.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation


@dataclass(slots=True)
class Counts:
    folded: int = 0  # records made from finished report traces
    written: int = 0  # records upserted into the lineage database
    dropped: int = 0  # records the hand-off could not keep (lost: counted)
    evicted: int = 0  # traces whose root did not end within the TTL or over the cap
    late: int = 0  # spans that ended after their report was folded
    incomplete: int = 0  # records folded with incomplete_reasons
    errors: int = 0  # failed hook calls and failed write attempts
    quarantined: int = 0  # undecodable outbox records and unreadable files moved aside (kept)


COUNTER_NAMES = tuple(f.name for f in fields(Counts))


class LineageStats:
    def __init__(self) -> None:
        self._counts = Counts()
        self._lock = threading.Lock()

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            setattr(self._counts, name, getattr(self._counts, name) + amount)

    def snapshot(self) -> Counts:
        with self._lock:
            return Counts(**{n: getattr(self._counts, n) for n in COUNTER_NAMES})

    def reset(self) -> None:
        with self._lock:
            self._counts = Counts()
        self._lock = threading.Lock()

    def register_metrics(
        self,
        pending: Callable[[], int],
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        """Expose the counters (and the hand-off backlog) as OpenTelemetry instruments."""
        meter = metrics.get_meter("otel_lineage", meter_provider=meter_provider)
        for name in COUNTER_NAMES:
            meter.create_observable_counter(
                f"otel_lineage.{name}",
                callbacks=[self._observer(name)],
                description=f"lineage records/spans {name}",
            )
        meter.create_observable_gauge(
            "otel_lineage.pending",
            callbacks=[lambda _options: [Observation(pending())]],
            description="lineage records handed off and not yet written",
        )

    def _observer(self, name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(_options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(getattr(self.snapshot(), name))]

        return observe
