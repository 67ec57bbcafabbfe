"""No record or file can block delivery: undecodable outbox records and unreadable outbox files
are quarantined (kept, counted) and every good record still reaches ``report_lineage``.

Fuzzed with hypothesis: random and truncated bytes in place of records and of whole files, on
SQLite and PostgreSQL, through the real outbox, writer and store.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import tempfile
import uuid
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select

from otel_lineage.delivery.outbox import (
    OutboxHandOff,
    inspect_outboxes,
    inspect_quarantine,
    open_reports,
    pending_generation_ids,
)
from otel_lineage.delivery.schema import lineage_counters, report_lineage
from otel_lineage.delivery.stats import LineageStats
from otel_lineage.delivery.store import LineageStore
from otel_lineage.delivery.writer import BackgroundWriter
from otel_lineage.record import LineageRecord
from otel_lineage.startup.configuration import create_lineage_engine
from tests.integration.test_writer import _record

FUZZ = settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
#: What a record blob is replaced with: random bytes, a truncation, nothing, a text value.
corruption = st.one_of(
    st.binary(max_size=300).map(lambda b: ("random", b)),
    st.floats(0, 0.999).map(lambda f: ("truncate", f)),
    st.just(("empty", b"")),
    st.just(("text", "not a record")),
)


def _trace_ids(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.scalars(select(report_lineage.c.trace_id)))


def _fresh(record: LineageRecord) -> LineageRecord:
    """A copy of ``record`` under new trace and report ids (records are costly to fold)."""
    return dataclasses.replace(
        record, trace_id=uuid.uuid4().hex, report_generation_id=str(uuid.uuid4())
    )


def _crash(box: OutboxHandOff) -> None:
    """The owner dies: its file and lock stay behind, the lock is no longer held."""
    box._conn.close()
    box._lock_file.close()


def _deliver(directory: Path, url: str) -> tuple[LineageStats, OutboxHandOff]:
    """A new process on ``directory``: its writer adopts, ships, and quarantines."""
    stats = LineageStats()
    box = OutboxHandOff(directory)
    writer = BackgroundWriter(box, LineageStore(create_lineage_engine(url)), stats, linger_s=0)
    writer.start()
    try:
        assert writer.flush(60)
    finally:
        writer.stop()
        writer.store.engine.dispose()
    return stats, box


@FUZZ
@given(plan=st.lists(st.one_of(st.none(), corruption), min_size=1, max_size=8))
def test_undecodable_records_are_quarantined_and_every_good_one_arrives(
    db_url: str, engine: Engine, plan: list[tuple[str, object] | None]
) -> None:
    template = _record()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        box = OutboxHandOff(directory)
        records = [_fresh(template) for _ in plan]
        for record in records:
            assert box.put(record)
        for seq, damage in enumerate(plan, start=1):
            if damage is not None:
                kind, value = damage
                data = records[seq - 1].to_bytes()
                if kind == "truncate":
                    assert isinstance(value, float)
                    value = data[: int(len(data) * value)]
                box._conn.execute("UPDATE outbox SET record = ? WHERE seq = ?", (value, seq))
        _crash(box)  # a dead process's outbox, as a new process finds it
        stats, live = _deliver(directory, db_url)

        good = {r.trace_id for r, damage in zip(records, plan, strict=True) if damage is None}
        bad = sum(damage is not None for damage in plan)
        assert good <= _trace_ids(engine)
        quarantined = inspect_quarantine(directory)
        assert [q.kind for q in quarantined] == ["record"] * bad
        assert stats.snapshot().quarantined == bad
        assert all(q.reason and "not a record" not in q.reason for q in quarantined)
        assert live.pending() == 0
        assert list(directory.glob("outbox-*")) == []  # delivered, and nothing blocked


@FUZZ
@given(
    files=st.lists(
        st.one_of(
            st.just("good"),
            st.binary(max_size=5000).map(lambda b: ("random", b)),
            st.floats(0, 0.99).map(lambda f: ("truncate", f)),
            st.just(("empty", b"")),
        ),
        min_size=1,
        max_size=5,
    )
)
def test_unreadable_outbox_files_are_quarantined_and_never_stop_recovery(
    db_url: str, engine: Engine, files: list[str | tuple[str, object]]
) -> None:
    template = _record()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        must_arrive: set[str] = set()
        at_risk: dict[str, set[str]] = {}  # file name -> trace ids, when a file is damaged
        for spec in files:
            box = OutboxHandOff(directory)
            records = [_fresh(template) for _ in range(3)]
            for record in records:
                assert box.put(record)
            path = box.path
            _crash(box)
            ids = {r.trace_id for r in records}
            if spec == "good":
                must_arrive |= ids
                continue
            kind, value = spec  # type: ignore[misc]
            data = path.read_bytes()
            if kind == "truncate" and int(len(data) * value):
                data = data[: int(len(data) * value)]
            else:  # nothing of the good records is left in this file
                data = value if kind != "truncate" else b""
                ids = set()
            Path(f"{path}-wal").unlink(missing_ok=True)
            path.write_bytes(data)
            at_risk[path.name] = ids
        # Reading the directory never fails, whatever is in it.
        assert len(inspect_outboxes(directory)) == len(files)
        pending_generation_ids(directory)
        open_reports(directory)

        stats, _ = _deliver(directory, db_url)
        arrived = _trace_ids(engine)
        assert must_arrive <= arrived
        items = inspect_quarantine(directory)
        files_held = {q.path.name.split("-", 2)[2] for q in items if q.kind == "file"}
        records_held = sum(q.kind == "record" for q in items)
        # Damaged: delivered, or kept in quarantine (the whole file, or the records SQLite
        # returned damaged from a file that still passes its integrity check).
        lost = [i for name, ids in at_risk.items() if name not in files_held for i in ids]
        assert len(set(lost) - arrived) <= records_held
        assert all(q.reason for q in items)
        assert stats.snapshot().quarantined == len(items)
        assert list(directory.glob("outbox-*.db")) == []


def test_weird_files_next_to_the_outbox_never_stop_recovery(
    db_url: str, engine: Engine, outbox_dir: Path
) -> None:
    outbox_dir.mkdir(parents=True)
    (outbox_dir / "outbox-dir.lock").mkdir()  # a lock that cannot be opened: skipped
    (outbox_dir / "outbox-dir.db").write_bytes(b"SQLite format 3\0" + b"\xff" * 200)
    (outbox_dir / "outbox-nolock.db").write_bytes(b"garbage, no lock beside it")
    box = OutboxHandOff(outbox_dir)
    good = _record()
    assert box.put(good)
    _crash(box)
    assert {f.path.name: f.error is not None for f in inspect_outboxes(outbox_dir)} == {
        "outbox-dir.db": True,
        "outbox-nolock.db": True,
        box.path.name: False,
    }
    _deliver(outbox_dir, db_url)
    assert good.trace_id in _trace_ids(engine)
    (item,) = inspect_quarantine(outbox_dir)
    assert item.path.name.endswith("outbox-nolock.db") and "DatabaseError" in item.reason
    assert (outbox_dir / "outbox-dir.db").exists()  # owner unknown: left alone, not lost


def test_a_bad_record_in_a_live_outbox_does_not_stop_its_own_writer(
    db_url: str, engine: Engine, outbox_dir: Path
) -> None:
    stats = LineageStats()
    # No record kept in memory: the writer reads every one from the file, the damaged one too.
    box = OutboxHandOff(outbox_dir, memory_bytes=0)
    store = LineageStore(create_lineage_engine(db_url))
    writer = BackgroundWriter(box, store, stats, linger_s=0, counters_every_s=0)
    first, second = _record(), _fresh(_record())
    assert box.put(first)
    # The KeyError of issue 9: a record blob without its 'inputs_snapshot' key.
    broken = b"\x00\x00\x00\x02{}"
    box._conn.execute("UPDATE outbox SET record = ?, size = ? WHERE seq = 1", (broken, 6))
    writer.start()
    try:
        assert box.put(second)
        assert writer.flush(30)
    finally:
        writer.stop()
    assert second.trace_id in _trace_ids(engine)
    assert first.trace_id not in _trace_ids(engine)
    (item,) = inspect_quarantine(outbox_dir)
    assert item.path.read_bytes() == broken and "KeyError" in item.reason
    with engine.connect() as conn:
        assert conn.scalar(select(lineage_counters.c.quarantined)) == 1
    store.engine.dispose()


def test_a_record_left_in_place_when_quarantine_is_unwritable(outbox_dir: Path) -> None:
    box = OutboxHandOff(outbox_dir, memory_bytes=0)  # the record is read from the file
    assert box.put(_record())
    box._conn.execute("UPDATE outbox SET record = x'00' WHERE seq = 1")
    (outbox_dir / "quarantine").write_text("a file where the quarantine directory should be")
    assert box.take(10, 0) == []  # not delivered, not blocking
    assert box.pending() == 0
    path = box.path
    box.close()
    assert path.exists()  # the undecodable row is never deleted with its file
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM outbox").fetchone() == (1,)
