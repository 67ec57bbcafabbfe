"""The durable hand-off: a local outbox, one SQLite file (WAL) per process.

``put`` inserts the folded record (about 50-100 µs) before ``generate_report`` returns, so a
record survives a database outage *and* a crash of the process. The writer ships batches to the
lineage database and deletes what was written; delivery is idempotent (upsert by trace id), so a
record shipped twice is still one row.

Each process owns its own file, ``outbox-<uuid>.db``, and holds an exclusive ``flock`` on
``outbox-<uuid>.lock`` for as long as it lives: processes never contend on the hot path, and a
file whose lock can be taken belongs to a dead process. ``recover()`` adopts such orphans (copies
their rows into the live outbox in one transaction, then deletes them), so records of a crashed
process are shipped by the next process that starts with the same directory; ``otel-lineage
outbox flush`` does it from the command line.

Overflow policy: past ``max_records`` or ``max_bytes`` new records are refused: ``put`` returns
False and the processor counts them as ``dropped`` (visible in ``audit``). A disk that is full or
an outbox that cannot be written is handled the same way: the report never fails for it.
"""

from __future__ import annotations

import fcntl
import logging
import sqlite3
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from otel_lineage.handoff import Pending
from otel_lineage.ratelimit import RateLimitedLogger
from otel_lineage.record import LineageRecord

_log = RateLimitedLogger(logging.getLogger(__name__))
_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    trace_id TEXT NOT NULL,
    report_generation_id TEXT,
    created_at REAL NOT NULL,
    size INTEGER NOT NULL,
    record BLOB NOT NULL
)
"""
_COLUMNS = "trace_id, report_generation_id, created_at, size, record"
#: Connections and lock files a forked child inherited: kept referenced, never used or closed
#: by the child (closing a SQLite connection across fork can corrupt the parent's file).
_INHERITED: list[object] = []


@dataclass(frozen=True, slots=True)
class OutboxFile:
    path: Path
    records: int
    bytes: int
    oldest: float | None
    owner_alive: bool


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
    conn.execute(_SCHEMA)
    return conn


class OutboxHandOff:
    """``HandOff`` backed by a per-process SQLite outbox under ``directory``."""

    def __init__(
        self, directory: Path, *, max_records: int = 100_000, max_bytes: int = 1 << 30
    ) -> None:
        self.directory = directory
        self._max_records = max_records
        self._max_bytes = max_bytes
        self._open()

    def _open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"outbox-{uuid.uuid4().hex}"
        self.path = self.directory / f"{name}.db"
        self._lock_path = self.directory / f"{name}.lock"
        self._lock_file: IO[str] = open(self._lock_path, "w")  # noqa: SIM115 - held for life
        fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._conn = _connect(self.path)
        self._cond = threading.Condition()
        self._retry: deque[Pending] = deque()
        self._cursor = 0
        self._count = 0
        self._bytes = 0
        self._in_flight = 0
        self._closed = False

    # -- HandOff ----------------------------------------------------------------------------

    def put(self, record: LineageRecord) -> bool:
        data = record.to_bytes()
        with self._cond:
            if self._closed:
                return False
            if self._count >= self._max_records or self._bytes + len(data) > self._max_bytes:
                _log.warning(
                    "lineage outbox full (%d records, %d bytes): refusing new records",
                    self._count,
                    self._bytes,
                )
                return False
            try:
                self._conn.execute(
                    f"INSERT INTO outbox ({_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
                    (record.trace_id, record.report_generation_id, time.time(), len(data), data),
                )
            except sqlite3.Error:
                _log.exception("lineage outbox %s not writable", self.path)
                return False
            self._count += 1
            self._bytes += len(data)
            self._cond.notify()
            return True

    def take(self, max_items: int, timeout_s: float) -> list[Pending]:
        with self._cond:
            if not self._retry and self._count - self._in_flight <= 0:
                self._cond.wait(timeout_s)
            batch: list[Pending] = []
            while self._retry and len(batch) < max_items:
                batch.append(self._retry.popleft())
            if len(batch) < max_items and not self._closed:
                rows = self._conn.execute(
                    "SELECT seq, record FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
                    (self._cursor, max_items - len(batch)),
                ).fetchall()
                for seq, data in rows:
                    batch.append(Pending(seq, LineageRecord.from_bytes(data)))
                    self._cursor = seq
            self._in_flight += len(batch)
            return batch

    def ack(self, items: list[Pending]) -> None:
        with self._cond:
            self._in_flight -= len(items)
            if self._closed or not items:
                return
            keys = [item.key for item in items]
            where = f"seq IN ({','.join('?' * len(keys))})"
            self._conn.execute("BEGIN")
            try:
                sizes = self._conn.execute(
                    f"SELECT coalesce(sum(size), 0) FROM outbox WHERE {where}", keys
                ).fetchone()[0]
                self._conn.execute(f"DELETE FROM outbox WHERE {where}", keys)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            self._count -= len(items)
            self._bytes -= int(sizes)

    def release(self, items: list[Pending]) -> None:
        with self._cond:
            self._in_flight -= len(items)
            self._retry.extendleft(reversed(items))
            self._cond.notify()

    def pending(self) -> int:
        with self._cond:
            return self._count

    def abandon(self) -> int:
        """Nothing is lost: unwritten records stay in the file for the next process."""
        self.close()
        return 0

    def recover(self) -> int:
        """Adopt the outboxes of dead processes in this directory; returns records adopted."""
        adopted = 0
        for lock_path in sorted(self.directory.glob("outbox-*.lock")):
            if lock_path == self._lock_path:
                continue
            db_path = lock_path.with_suffix(".db")
            with open(lock_path, "a") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its owner is alive
                if db_path.exists():
                    adopted += self._adopt(db_path)
                _remove(db_path, lock_path)
        return adopted

    def _adopt(self, db_path: Path) -> int:
        with self._cond:
            self._conn.execute("ATTACH DATABASE ? AS orphan", (str(db_path),))
            try:
                self._conn.execute(_SCHEMA.replace("outbox", "orphan.outbox", 1))
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.execute(
                    f"INSERT INTO main.outbox ({_COLUMNS}) "
                    f"SELECT {_COLUMNS} FROM orphan.outbox ORDER BY seq"
                )
                count, size = self._conn.execute(
                    "SELECT count(*), coalesce(sum(size), 0) FROM orphan.outbox"
                ).fetchone()
                self._conn.execute("COMMIT")
            finally:
                self._conn.execute("DETACH DATABASE orphan")
            self._count += count
            self._bytes += size
            if count:
                self._cond.notify()
        _log.warning("adopted %d lineage records from %s", count, db_path.name)
        return int(count)

    def reset_after_fork(self) -> None:
        # The parent keeps its file, lock and connection; the child opens its own outbox.
        _INHERITED.extend((self._conn, self._lock_file))
        self._open()

    # -- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the outbox; an empty one is deleted, a non-empty one is left for recovery."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            empty = self._count == 0
            self._conn.close()
        if empty:
            _remove(self.path)
        fcntl.flock(self._lock_file, fcntl.LOCK_UN)
        self._lock_file.close()
        if empty:
            _remove(self._lock_path)


def inspect_outboxes(directory: Path) -> list[OutboxFile]:
    """What each outbox file under ``directory`` holds, and whether its owner is alive."""
    found = []
    for db_path in sorted(directory.glob("outbox-*.db")):
        lock_path = db_path.with_suffix(".lock")
        alive = False
        if lock_path.exists():
            with open(lock_path, "a") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    alive = True
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        try:
            records, size, oldest = conn.execute(
                "SELECT count(*), coalesce(sum(size), 0), min(created_at) FROM outbox"
            ).fetchone()
        except sqlite3.Error:
            records, size, oldest = 0, 0, None
        finally:
            conn.close()
        found.append(OutboxFile(db_path, int(records), int(size), oldest, alive))
    return found


def pending_generation_ids(directory: Path) -> dict[str, Path]:
    """Report ids with a record waiting in some outbox under ``directory``."""
    pending: dict[str, Path] = {}
    for db_path in sorted(directory.glob("outbox-*.db")):
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        try:
            for (report_id,) in conn.execute(
                "SELECT report_generation_id FROM outbox WHERE report_generation_id IS NOT NULL"
            ):
                pending[str(report_id)] = db_path
        except sqlite3.Error:
            continue
        finally:
            conn.close()
    return pending


def _remove(*paths: Path) -> None:
    for path in paths:
        for candidate in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            candidate.unlink(missing_ok=True)
