"""The writer writes at once when idle, batches under load, and bounds calls without a thread
per call; the store writes a batch holding one trace twice as one row."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, text

from otel_lineage.delivery.handoff import MemoryHandOff
from otel_lineage.delivery.stats import LineageStats
from otel_lineage.delivery.store import LineageStore
from otel_lineage.delivery.writer import BackgroundWriter
from otel_lineage.record import LineageRecord
from otel_lineage.startup.configuration import create_lineage_engine
from tests.integration.test_writer import _record
from tests.lineage_support import lineage_rows


class RecordingStore(LineageStore):
    """The real store, which also remembers the size of every batch it was given and can be
    held at the door of its next write (``gate``), to stand for a slow database."""

    def __init__(self, url: str) -> None:
        super().__init__(create_lineage_engine(url))
        self.batches: list[int] = []
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def upsert(self, records: Sequence[LineageRecord]) -> None:
        self.batches.append(len(records))
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(30), "the test never opened the gate"
        super().upsert(records)


@pytest.fixture
def store(db_url: str) -> Iterator[RecordingStore]:
    store = RecordingStore(db_url)
    yield store
    store.engine.dispose()


def _writer(store: LineageStore, **kwargs: float) -> tuple[BackgroundWriter, MemoryHandOff]:
    handoff = MemoryHandOff()
    writer = BackgroundWriter(handoff, store, LineageStats(), **kwargs)
    writer.start()
    return writer, handoff


def test_an_idle_writer_writes_each_record_at_once(store: RecordingStore, engine: Engine) -> None:
    """Records further apart than the pacing interval are written one by one as they come,
    with no flush asking for it: nothing waits for company when the system is idle."""
    writer, handoff = _writer(store, batch_size=500, linger_s=0.2)
    try:
        for written in range(1, 6):
            time.sleep(0.3)  # a quiet period longer than the interval
            assert handoff.put(_record())
            _wait_for(lambda n=written: len(lineage_rows(engine)) == n)
    finally:
        writer.stop(10)
    assert store.batches == [1, 1, 1, 1, 1]


def test_under_steady_load_writes_are_paced_into_batches(
    store: RecordingStore, engine: Engine
) -> None:
    """A record every 10 ms for a second: about one write per interval, not one per record."""
    writer, handoff = _writer(store, batch_size=500, linger_s=0.2)
    try:
        for _ in range(100):
            assert handoff.put(_record())
            time.sleep(0.01)
        assert writer.flush(30)
    finally:
        writer.stop(10)
    assert sum(store.batches) == 100 == len(lineage_rows(engine))
    assert len(store.batches) <= 20, store.batches  # about 7 on an unloaded machine


def _wait_for(condition: Callable[[], bool], budget_s: float = 5.0) -> None:
    """Poll ``condition`` for a generous budget (never a tight bound on a shared machine)."""
    deadline = time.monotonic() + budget_s
    while not condition():
        assert time.monotonic() < deadline, "not written within the budget"
        time.sleep(0.005)


def test_records_that_arrive_during_a_write_form_the_next_batch(
    store: RecordingStore, engine: Engine
) -> None:
    store.gate = threading.Event()
    writer, handoff = _writer(store, batch_size=500)
    try:
        assert handoff.put(_record())
        assert store.entered.wait(10)  # the writer is inside a (slow) write of that one record
        for _ in range(50):
            assert handoff.put(_record())
        store.gate.set()
        assert writer.flush(30)
    finally:
        writer.stop(10)
    assert store.batches == [1, 50]
    assert len(lineage_rows(engine)) == 51


def test_a_batch_holding_one_trace_twice_writes_its_last_version(
    db_url: str, engine: Engine
) -> None:
    """A replayed record can meet its newer version in one batch: one row, the last one."""
    store = LineageStore(create_lineage_engine(db_url))
    first, other = _record(), _record()
    store.upsert([first])
    again = dataclasses.replace(first, status="failed", error_type="TimeoutError")
    store.upsert([first, other, again, other])
    store.engine.dispose()
    rows = {r["trace_id"]: r for r in lineage_rows(engine)}
    assert len(rows) == 2
    assert (rows[first.trace_id]["status"], rows[first.trace_id]["error_type"]) == (
        "failed",
        "TimeoutError",
    )


def test_a_batch_stores_each_value_as_the_record_has_it(db_url: str, engine: Engine) -> None:
    """Blobs, times, numbers and JSON survive the batch statement (PostgreSQL: one JSON
    parameter for the whole batch); a JSON column without a value holds JSON null."""
    store = LineageStore(create_lineage_engine(db_url))
    records = [_record() for _ in range(3)]
    records[1] = dataclasses.replace(records[1], renderer=None, duration_ms=7)
    store.upsert(records)
    store.engine.dispose()
    rows = {r["trace_id"]: r for r in lineage_rows(engine)}
    for record in records:
        row = rows[record.trace_id]
        expected = record.as_row()
        for name in ("span_tree", "started_at", "ended_at", "created_at", "steps", "renderer"):
            assert _comparable(row[name]) == expected[name], name
        assert row["duration_ms"] == pytest.approx(expected["duration_ms"])
        assert row["inputs_snapshot_shared"] is True  # the snapshot went to lineage_snapshots
    with engine.connect() as conn:
        nulls = conn.scalar(text("SELECT count(*) FROM report_lineage WHERE renderer IS NULL"))
    assert nulls == 0  # JSON null, as the one-row statement stores it, not SQL NULL


def _comparable(value: object) -> object:
    """A value as read back, in the record's terms (SQLite gives naive UTC times)."""
    if isinstance(value, memoryview):
        return bytes(value)
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


class HangingStore(LineageStore):
    """The real SQLite store whose first write runs a query that would take hours."""

    hung = False

    def upsert(self, records: Sequence[LineageRecord]) -> None:
        if not self.hung:
            self.hung = True
            with self.engine.connect() as conn:
                conn.execute(
                    text(
                        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n "
                        "WHERE i < 10000000000) SELECT count(*) FROM n"
                    )
                )
        super().upsert(records)


@pytest.mark.parametrize("empty_db_url", ["sqlite"], indirect=True)
def test_the_watchdog_breaks_off_a_hung_call_and_starts_no_thread_per_call(
    db_url: str, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = HangingStore(create_lineage_engine(db_url))
    stats = LineageStats()
    handoff = MemoryHandOff()
    writer = BackgroundWriter(
        handoff, store, stats, min_backoff_s=0.05, max_backoff_s=0.2, call_timeout_s=0.5
    )
    writer.start()
    started: list[threading.Thread] = []
    original_start = threading.Thread.start

    def counting_start(thread: threading.Thread) -> None:
        started.append(thread)
        original_start(thread)

    try:
        assert handoff.put(_record())
        assert writer.flush(30)  # the hung first call was interrupted, its batch retried
        assert stats.snapshot().errors >= 1
        records = [_record() for _ in range(30)]  # folding here may use threads of its own
        before = set(threading.enumerate())
        monkeypatch.setattr(threading.Thread, "start", counting_start)
        for record in records:
            assert handoff.put(record)
            assert writer.flush(5)
        assert started == []  # one long-lived watchdog, not a timer thread per store call
        assert set(threading.enumerate()) == before
    finally:
        monkeypatch.undo()
        writer.stop(10)
        store.engine.dispose()
    assert len(lineage_rows(engine)) == 31
    assert stats.snapshot().written == 31
