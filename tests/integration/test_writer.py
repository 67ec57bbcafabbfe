"""The writer and store: idempotent upserts, outages, flush deadlines, fork, metrics."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy import Engine, func, select, text

from d6_reports import db
from otel_lineage import LineageSampler, LineageSpanProcessor, semconv
from otel_lineage.capture.sampler import sampler_from_name
from otel_lineage.delivery.handoff import MemoryHandOff
from otel_lineage.delivery.schema import lineage_counters, report_lineage
from otel_lineage.delivery.stats import LineageStats
from otel_lineage.delivery.store import LineageStore
from otel_lineage.delivery.writer import BackgroundWriter
from otel_lineage.record import LineageRecord
from otel_lineage.startup.configuration import create_lineage_engine
from tests.lineage_support import lineage_rows
from tests.unit.test_fold_and_processor import _fold, _report, _tracer


def _record() -> LineageRecord:
    provider, exporter = _tracer()
    _report(provider)
    return _fold(exporter)


def test_upsert_is_idempotent(db_url: str, engine: Engine) -> None:
    store = LineageStore(create_lineage_engine(db_url))
    record = _record()
    store.upsert([record])
    store.upsert([record])  # a replay
    record.status = "failed"
    store.upsert([record])  # a corrected record replaces, never duplicates
    rows = lineage_rows(engine)
    assert len(rows) == 1 and rows[0]["status"] == "failed"
    store.engine.dispose()


def _refuse_generation(engine: Engine, generation_id: str) -> None:
    """Make the database reject (a constraint error) any lineage row of ``generation_id``."""
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(
                text(
                    "CREATE TRIGGER refuse BEFORE INSERT ON report_lineage "
                    f"WHEN NEW.report_generation_id = '{generation_id}' "
                    "BEGIN SELECT RAISE(ABORT, 'refused'); END"
                )
            )
        else:
            conn.execute(
                text(
                    "ALTER TABLE report_lineage ADD CONSTRAINT refuse "
                    f"CHECK (report_generation_id IS DISTINCT FROM '{generation_id}')"
                )
            )


def test_a_rejected_record_does_not_block_the_others(db_url: str, engine: Engine) -> None:
    _refuse_generation(engine, "refused")
    processor, provider = _pipeline(db_url)
    _report(provider, generation_id="same")
    _report(provider, generation_id="refused")  # the database rejects this one
    _report(provider)
    assert processor.force_flush(10_000)
    assert len(lineage_rows(engine)) == 2
    counts = processor.stats.snapshot()
    assert (counts.written, counts.dropped) == (2, 1)
    processor.shutdown()


def test_two_attempts_of_one_generation_are_two_rows(db_url: str, engine: Engine) -> None:
    """A redelivered queued task is a second trace of the same generation: both are kept."""
    processor, provider = _pipeline(db_url)
    _report(provider, generation_id="same")
    _report(provider, generation_id="same")
    assert processor.force_flush(10_000)
    rows = lineage_rows(engine)
    assert [r["report_generation_id"] for r in rows] == ["same", "same"]
    assert len({r["trace_id"] for r in rows}) == 2
    assert (processor.stats.snapshot().written, processor.stats.snapshot().dropped) == (2, 0)
    processor.shutdown()


def _pipeline(url: str, **writer_kwargs: float) -> tuple[LineageSpanProcessor, TracerProvider]:
    stats = LineageStats()
    handoff = MemoryHandOff()
    writer = BackgroundWriter(
        handoff, LineageStore(create_lineage_engine(url)), stats, **writer_kwargs
    )
    processor = LineageSpanProcessor(handoff, writer, stats=stats)
    provider = TracerProvider(sampler=LineageSampler(sampler_from_name("always_off")))
    provider.add_span_processor(processor)
    return processor, provider


def test_outage_delays_but_does_not_lose_lineage(empty_db_url: str) -> None:
    """No tables at first (the database is 'down' for lineage), then it comes back."""
    processor, provider = _pipeline(empty_db_url, min_backoff_s=0.05, max_backoff_s=0.2)
    for _ in range(5):
        _report(provider)  # never blocked, never failed by lineage
    assert not processor.force_flush(300)  # honours its deadline while the database is down
    assert processor.handoff.pending() == 5
    # The writer keeps trying meanwhile (on a loaded machine its first try may come later).
    deadline = time.monotonic() + 30
    while processor.stats.snapshot().errors < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert processor.stats.snapshot().errors >= 1
    assert processor.handoff.pending() == 5
    db.upgrade(empty_db_url)
    assert processor.force_flush(10_000)
    engine = create_lineage_engine(empty_db_url)
    assert len(lineage_rows(engine)) == 5
    processor.shutdown()
    with engine.connect() as conn:
        saved = conn.execute(select(lineage_counters)).mappings().one()
    assert (saved["folded"], saved["written"], saved["pending"]) == (5, 5, 0)
    engine.dispose()


def test_force_flush_deadline_with_unreachable_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'missing-dir' / 'nope' / 'x.db'}"
    processor, provider = _pipeline(url)
    _report(provider)
    started = time.monotonic()
    assert not provider.force_flush(200)
    assert time.monotonic() - started < 2.0
    processor.shutdown()
    assert processor.stats.snapshot().dropped == 1  # lost with the process, and counted


def test_fork_child_starts_clean_with_a_live_writer(db_url: str, engine: Engine) -> None:
    processor, provider = _pipeline(db_url)
    tracer = provider.get_tracer("t")
    open_root = tracer.start_span(semconv.SPAN_GENERATE)  # in flight at fork time
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        ok = processor._buffers == {} and processor.writer is not None
        _report(provider)
        ok = ok and processor.force_flush(10_000)
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    open_root.end()
    assert processor.force_flush(10_000)
    processor.shutdown()
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(report_lineage)) == 2


def test_counters_are_exported_as_metrics(db_url: str) -> None:
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    stats = LineageStats()
    stats.register_metrics(lambda: 3, meter_provider)
    stats.add("folded", 2)
    stats.add("late")
    data = reader.get_metrics_data()
    assert data is not None
    values = {
        metric.name: metric.data.data_points[0].value
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
    }
    assert values["otel_lineage.folded"] == 2
    assert values["otel_lineage.late"] == 1
    assert values["otel_lineage.pending"] == 3
    meter_provider.shutdown()


@pytest.mark.parametrize("value", ["false", "0", "off", "no", " FALSE "])
def test_flag_values(value: str) -> None:
    from otel_lineage.settings import lineage_enabled

    assert not lineage_enabled({"ENABLE_REPORT_LINEAGE": value})
    assert lineage_enabled({})


@pytest.mark.parametrize(
    "empty_db_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_a_database_that_never_answers_cannot_wedge_the_writer(db_url: str, engine: Engine) -> None:
    """Black hole mid-run: the watchdog breaks off the call, the batch is retried, not lost."""
    from urllib.parse import urlsplit, urlunsplit

    from otel_lineage.delivery.engines import create_lineage_engine as bounded_engine
    from tests.tcp_proxy import TCPProxy

    parts = urlsplit(db_url)
    proxy = TCPProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    user = parts.netloc.rsplit("@", 1)[0]
    url = urlunsplit(parts._replace(netloc=f"{user}@127.0.0.1:{proxy.port}"))
    proxy.start()
    stats = LineageStats()
    handoff = MemoryHandOff()
    store = LineageStore(bounded_engine(url, connect_timeout_s=2))
    writer = BackgroundWriter(
        handoff, store, stats, linger_s=0, min_backoff_s=0.05, max_backoff_s=0.2, call_timeout_s=1
    )
    writer.start()
    try:
        first, second = _record(), _record()
        assert handoff.put(first) and writer.flush(30)  # a pooled connection now exists
        proxy.black_hole = True
        assert handoff.put(second)
        assert not writer.flush(0.5)  # flush keeps its deadline while the call hangs
        for _ in range(600):  # the hung call is broken off, and fails like an outage
            if stats.snapshot().errors:
                break
            time.sleep(0.05)
        assert stats.snapshot().errors, "the writer is still inside the hung call"
        proxy.black_hole = False
        assert writer.flush(60)  # ... and its batch was retried
    finally:
        writer.stop(5)
        proxy.stop()
        store.engine.dispose()
    assert {r["trace_id"] for r in lineage_rows(engine)} == {first.trace_id, second.trace_id}


@pytest.mark.parametrize("busy", [False, True], ids=["in-take", "elsewhere"])
@pytest.mark.parametrize("durable", [False, True], ids=["memory", "outbox"])
def test_an_idle_writer_stops_without_waiting_out_its_take(
    db_url: str, tmp_path: Path, durable: bool, busy: bool
) -> None:
    """Every command stops its writer on the way out: an idle one is waiting in ``take`` for
    a first record, and must not make the process wait out that wait (30 s here); nor when
    the stop comes while it is elsewhere (sealing, here) and reaches ``take`` after it."""
    from otel_lineage.delivery.outbox import OutboxHandOff

    def slow_seal() -> bool:
        time.sleep(1.0)
        return False

    handoff = OutboxHandOff(tmp_path / "outbox") if durable else MemoryHandOff()
    writer = BackgroundWriter(
        handoff,
        LineageStore(create_lineage_engine(db_url)),
        LineageStats(),
        idle_wait_s=30.0,
        sealer=slow_seal if busy else None,
    )
    writer.start()
    time.sleep(0.3)  # past start-up: the thread is in its idle take, or in its first seal
    started = time.monotonic()
    writer.stop()
    assert time.monotonic() - started < 5.0
    assert writer.thread_id is None
    handoff.abandon()
