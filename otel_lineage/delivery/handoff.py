"""The hand-off between the span processor (hot path) and the background writer.

This is the seam where durability lives. The processor calls ``begin`` when a report trace
starts (so a durable hand-off can tell a report its process never finished) and ``put`` when it
ends; the writer ``take``s batches, writes them and ``ack``s, or ``release``s them for a retry.
The in-memory implementation here is bounded and counts what it must drop; a durable
implementation (a local outbox that survives crashes) plugs into the same protocol.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from otel_lineage.record import LineageRecord


@dataclass(frozen=True, slots=True)
class ReportStart:
    """What a report's open marker remembers besides its ids, so that a report whose process
    died is recorded with its business, template and attempt (never any input value)."""

    business_id: int | None = None
    template_name: str | None = None
    template_version: str | None = None
    attempt: int | None = None


@dataclass(frozen=True, slots=True)
class Pending:
    """A record taken for writing; ``key`` identifies it to ``ack``/``release``."""

    key: int
    record: LineageRecord


class HandOff(Protocol):
    def begin(
        self, trace_id: str, report_generation_id: str | None, start: ReportStart | None = None
    ) -> None:
        """A report trace started: remember it until its record is ``put`` (cheap, no sync).

        A durable hand-off keeps the marker so that a report whose process dies before the
        report ends is recovered as "abandoned" instead of vanishing."""

    def put(self, record: LineageRecord) -> bool:
        """Accept a record; False when it could not be kept (the caller counts the loss)."""

    def take(self, max_items: int, timeout_s: float) -> list[Pending]:
        """Up to ``max_items`` records, waiting at most ``timeout_s`` for the first."""

    def wake(self) -> None:
        """The writer is stopping: a ``take`` waiting for a first record returns now, and no
        later ``take`` waits (a wake-up that came while the writer was elsewhere is kept)."""

    def ack(self, items: list[Pending]) -> None:
        """The records are in the lineage database: forget them."""

    def release(self, items: list[Pending]) -> None:
        """Writing failed: keep the records for the next attempt, oldest first."""

    def pending(self) -> int:
        """Records accepted and not yet acknowledged."""

    def take_quarantined(self) -> int:
        """Undecodable records and unreadable files moved aside since the last call."""

    def abandon(self) -> int:
        """The process is stopping: how many pending records are lost with it."""

    def recover(self) -> int:
        """Take over records left behind by dead processes; how many were taken."""

    def reset_after_fork(self) -> None:
        """Drop process-local state a forked child must not inherit."""


class MemoryHandOff:
    """A bounded in-memory queue. Survives database outages, not process crashes."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._capacity = capacity
        self._queue: deque[Pending] = deque()
        self._in_flight = 0
        self._seq = 0
        self._cond = threading.Condition()
        self._woken = False

    def begin(
        self, trace_id: str, report_generation_id: str | None, start: ReportStart | None = None
    ) -> None:
        """Nothing to do: a memory queue dies with its process, markers and all."""

    def put(self, record: LineageRecord) -> bool:
        with self._cond:
            if len(self._queue) + self._in_flight >= self._capacity:
                return False
            self._seq += 1
            self._queue.append(Pending(self._seq, record))
            self._cond.notify()
            return True

    def take(self, max_items: int, timeout_s: float) -> list[Pending]:
        with self._cond:
            if not self._queue and not self._woken:
                self._cond.wait(timeout_s)
            batch = [self._queue.popleft() for _ in range(min(max_items, len(self._queue)))]
            self._in_flight += len(batch)
            return batch

    def wake(self) -> None:
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    def ack(self, items: list[Pending]) -> None:
        with self._cond:
            self._in_flight -= len(items)

    def release(self, items: list[Pending]) -> None:
        with self._cond:
            self._in_flight -= len(items)
            self._queue.extendleft(reversed(items))
            self._cond.notify()

    def pending(self) -> int:
        with self._cond:
            return len(self._queue) + self._in_flight

    def take_quarantined(self) -> int:
        return 0  # records in memory are never decoded, so never undecodable

    def recover(self) -> int:
        return 0  # memory dies with its process: there is nothing to recover

    def abandon(self) -> int:
        with self._cond:
            lost = len(self._queue) + self._in_flight
            self._queue.clear()
            return lost

    def reset_after_fork(self) -> None:
        # The child starts empty: the parent still owns (and will write) what it queued.
        self._queue = deque()
        self._in_flight = 0
        self._cond = threading.Condition()
        self._woken = False
