"""The durable hand-off: a local outbox, one SQLite file (WAL) per process.

``put`` inserts the folded record (one insert) before ``generate_report`` returns, so a
record survives a database outage *and* a crash of the process. The writer ships batches to the
lineage database and deletes what was written; delivery is idempotent (upsert by trace id), so a
record shipped twice is still one row.

Each process owns its own file, ``outbox-<uuid>.db``, and holds an exclusive ``flock`` on
``outbox-<uuid>.lock`` for as long as it lives: processes never contend on the hot path, and a
file whose lock can be taken belongs to a dead process. ``recover()`` adopts such orphans (copies
their rows into the live outbox in one transaction, then deletes them), so records of a crashed
process are shipped by the next process that starts with the same directory; ``otel-lineage
outbox flush`` does it from the command line.

Open-report markers: ``begin`` inserts a marker when a report trace starts; a marker whose
record is in the file is a report that ended (``put`` is one insert on the report's thread, and
``ack`` deletes the record and its marker in one transaction), so a dead process's marker
without a record is a report that never ended; ``recover()`` turns it into an "abandoned"
failed record (``otel_lineage.delivery.recovery``). ``open_reports()`` tells a report in
progress from an abandoned one.

Nothing blocks delivery: a record that cannot be decoded, and an orphan file SQLite cannot read,
are moved to ``<directory>/quarantine/`` (never deleted), counted (``take_quarantined``) and
logged without their contents; every other record and file goes on.

Overflow policy: past ``max_records`` or ``max_bytes`` new records are refused: ``put`` returns
False and the processor counts them as ``dropped`` (visible in ``audit``). A disk that is full or
an outbox that cannot be written is handled the same way: the report never fails for it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import math
import os
import sqlite3
import stat
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from otel_lineage.delivery import checkpoint
from otel_lineage.delivery.handoff import Pending, ReportStart
from otel_lineage.delivery.recovery import (
    QuarantinedItem,
    abandoned_record,
    inspect_quarantine,
    quarantine_file,
    quarantine_record,
)
from otel_lineage.delivery.store import clean_record
from otel_lineage.ratelimit import RateLimitedLogger
from otel_lineage.record import LineageRecord

__all__ = [
    "OutboxFile",
    "OutboxHandOff",
    "QuarantinedItem",
    "dead_attempts",
    "inspect_outboxes",
    "inspect_quarantine",
    "open_reports",
    "pending_generation_ids",
]

_log = RateLimitedLogger(logging.getLogger(__name__))
_OUTBOX_TABLE = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    trace_id TEXT NOT NULL,
    report_generation_id TEXT,
    created_at REAL NOT NULL,
    size INTEGER NOT NULL,
    record BLOB NOT NULL
)
"""
_MARKER_TABLE = """
CREATE TABLE IF NOT EXISTS open_report (
    trace_id TEXT PRIMARY KEY,
    report_generation_id TEXT,
    started_at REAL NOT NULL,
    business_id INTEGER,
    template_name TEXT,
    template_version TEXT,
    attempt INTEGER
)
"""
#: Marker columns added after the first version: an orphan outbox of an older version lacks
#: them, and its abandoned reports are recorded without them.
_MARKER_DETAIL = ("business_id", "template_name", "template_version", "attempt")
_COLUMNS = "trace_id, report_generation_id, created_at, size, record"
_INSERT = f"INSERT INTO main.outbox ({_COLUMNS}) VALUES (?, ?, ?, ?, ?)"
_ADOPT_CHUNK = 500
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
    #: Why the file could not be read (it will be quarantined when its owner is dead).
    error: str | None = None


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
    # The ``Checkpointer`` copies the WAL back; this connection's own automatic checkpoint
    # (1,000 pages) then has little left to copy, and bounds the WAL when it cannot keep up.
    conn.execute(f"PRAGMA journal_size_limit={checkpoint.WAL_SIZE_LIMIT}")
    conn.execute(_OUTBOX_TABLE)
    conn.execute(_MARKER_TABLE)
    return conn


class OutboxHandOff:
    """``HandOff`` backed by a per-process SQLite outbox under ``directory``."""

    def __init__(
        self,
        directory: Path,
        *,
        max_records: int = 100_000,
        max_bytes: int = 1 << 30,
        memory_bytes: int = 32 << 20,
    ) -> None:
        """``memory_bytes``: records up to this size in all are also kept in memory for the
        writer, which then takes them without reading and decoding the file (see ``take``)."""
        self.directory = directory
        self._max_records = max_records
        self._max_bytes = max_bytes
        self._memory_bytes = memory_bytes
        self._open()

    def _open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"outbox-{uuid.uuid4().hex}"
        self.path = self.directory / f"{name}.db"
        self._lock_path = self.directory / f"{name}.lock"
        self._lock_file: IO[str] = open(self._lock_path, "w")  # noqa: SIM115 - held for life
        fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._conn = _connect(self.path)
        self._checkpointer = checkpoint.Checkpointer(self.path)
        self._cond = threading.Condition()
        self._retry: deque[Pending] = deque()
        # The records put since the file was last read through, in seq order, with their sizes:
        # while ``_from_memory``, they are exactly the file's rows after ``_cursor``.
        self._fresh: deque[tuple[Pending, int]] = deque()
        self._fresh_bytes = 0
        self._from_memory = True
        self._cursor = 0
        self._count = 0
        self._bytes = 0
        self._in_flight = 0
        self._closed = False
        self._woken = False  # the writer is stopping: ``take`` no longer waits
        self._open_traces: set[str] = set()
        self._quarantined = 0
        self._stuck = 0  # undecodable rows that could not be moved to quarantine either
        #: (report id, trace id) of dead processes' reports that ``recover()`` found abandoned.
        self.abandoned: list[tuple[str, str]] = []
        #: Outbox files the last ``recover()`` could not adopt (left in place, said in the log).
        self.skipped: list[str] = []

    # -- HandOff ----------------------------------------------------------------------------

    def begin(
        self, trace_id: str, report_generation_id: str | None, start: ReportStart | None = None
    ) -> None:
        """One insert, no extra sync: the marker rides the WAL like the records do."""
        start = start or ReportStart()
        with self._cond:
            if self._closed:
                return
            try:
                self._conn.execute(
                    "INSERT OR REPLACE INTO open_report VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        trace_id,
                        report_generation_id,
                        time.time(),
                        start.business_id,
                        start.template_name,
                        start.template_version,
                        start.attempt,
                    ),
                )
            except (sqlite3.Error, ValueError):
                _log.exception("lineage outbox %s not writable", self.path)
                return
            self._open_traces.add(trace_id)
            self._checkpointer.wrote()

    def put(self, record: LineageRecord) -> bool:
        serialised = _serialise(record)
        with self._cond:
            if self._closed:
                return False
            if serialised is None:
                self._clear_marker(record.trace_id)
                return False
            data, record = serialised
            if self._count >= self._max_records or self._bytes + len(data) > self._max_bytes:
                _log.warning(
                    "lineage outbox full (%d records, %d bytes): refusing new records",
                    self._count,
                    self._bytes,
                )
                self._clear_marker(record.trace_id)
                return False
            row = (record.trace_id, record.report_generation_id, time.time(), len(data), data)
            try:
                # One statement on the report's thread: a marker with its record in the file
                # is an ended report; ``ack`` deletes both in one transaction.
                seq = self._conn.execute(_INSERT, row).lastrowid
            except (sqlite3.Error, ValueError):
                _log.exception("lineage outbox %s not writable", self.path)
                return False
            self._open_traces.discard(record.trace_id)
            self._count += 1
            self._bytes += len(data)
            self._checkpointer.wrote(len(data))
            self._keep_in_memory(seq, record, len(data))
            self._cond.notify()
            return True

    def _keep_in_memory(self, seq: int | None, record: LineageRecord, size: int) -> None:
        """Hand ``record`` to the writer as it is, beside its row; past the memory budget (or
        without a seq) the writer reads the file from where it is instead."""
        if not self._from_memory:
            return
        if seq is None or self._fresh_bytes + size > self._memory_bytes or not _round_trips(record):
            self._read_file_from_cursor()
            return
        self._fresh.append((Pending(seq, record), size))
        self._fresh_bytes += size

    def _read_file_from_cursor(self) -> None:
        """Rows were added that memory does not hold (an adoption, the budget): the writer
        reads the file after ``_cursor``, which still holds every record in ``_fresh``."""
        self._from_memory = False
        self._fresh.clear()
        self._fresh_bytes = 0

    def take(self, max_items: int, timeout_s: float) -> list[Pending]:
        """The records ``put`` handed over, from memory: the file is only their durable copy.
        After an adoption or past the memory budget the file is read instead, until it has
        been read through. Rows are read under the lock and decoded outside it: ``put`` and
        ``begin`` on the report's thread wait for that lock, and decoding a batch costs far
        more than reading it. Only the writer takes, so nothing else moves the cursor."""
        batch: list[Pending] = []
        with self._cond:
            if not self._retry and self._count - self._in_flight <= 0 and not self._woken:
                self._cond.wait(timeout_s)
            while self._retry and len(batch) < max_items:
                batch.append(self._retry.popleft())
            while self._from_memory and self._fresh and len(batch) < max_items and not self._closed:
                item, size = self._fresh.popleft()
                self._fresh_bytes -= size
                self._cursor = item.key
                batch.append(item)
            self._in_flight += len(batch)
            if self._from_memory:
                return batch
        # Rows that cannot be decoded go to quarantine; read on until the batch is full or
        # the outbox is exhausted, so an empty batch always means "nothing to write".
        while len(batch) < max_items:
            with self._cond:
                if self._closed:
                    break
                rows = self._conn.execute(
                    "SELECT seq, size, record FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
                    (self._cursor, max_items - len(batch)),
                ).fetchall()
                if rows:
                    self._cursor = rows[-1][0]
                else:  # read through, under the lock ``put`` takes: memory holds what follows
                    self._from_memory = True
            if not rows:
                break
            decoded = [(seq, size, data, *_decode(size, data)) for seq, size, data in rows]
            with self._cond:
                if self._closed:  # closed meanwhile: the rows stay in the file
                    break
                for seq, size, data, record, reason in decoded:
                    if record is None:
                        self._quarantine_row(seq, size, data, reason)
                    else:
                        batch.append(Pending(seq, record))
                        self._in_flight += 1
        return batch

    def wake(self) -> None:
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    def ack(self, items: list[Pending]) -> None:
        with self._cond:
            self._in_flight -= len(items)
            if self._closed or not items:
                return
            keys = [item.key for item in items]
            where = f"seq IN ({','.join('?' * len(keys))})"
            with self._transaction():
                sizes = self._conn.execute(
                    f"SELECT coalesce(sum(size), 0) FROM outbox WHERE {where}", keys
                ).fetchone()[0]
                self._conn.execute(
                    f"DELETE FROM open_report WHERE trace_id IN "
                    f"(SELECT trace_id FROM outbox WHERE {where})",
                    keys,
                )
                self._conn.execute(f"DELETE FROM outbox WHERE {where}", keys)
            self._count -= len(items)
            self._bytes -= int(sizes)
            self._checkpointer.wrote()

    def release(self, items: list[Pending]) -> None:
        with self._cond:
            self._in_flight -= len(items)
            self._retry.extendleft(reversed(items))
            self._cond.notify()

    def pending(self) -> int:
        with self._cond:
            return self._count

    def take_quarantined(self) -> int:
        """Records and files moved to quarantine since the last call (for the counters)."""
        with self._cond:
            moved, self._quarantined = self._quarantined, 0
            return moved

    def abandon(self) -> int:
        """Nothing is lost: unwritten records stay in the file for the next process."""
        self.close()
        return 0

    def recover(self) -> int:
        """Adopt the outboxes of dead processes in this directory; returns records adopted.

        One bad file never stops the others: a file SQLite cannot read is quarantined, a lock
        file that cannot even be opened is skipped (its owner cannot be told dead) and logged.
        """
        stems = {p.name.rsplit(".", 1)[0] for p in self.directory.glob("outbox-*.lock")}
        stems |= {p.name.rsplit(".", 1)[0] for p in self.directory.glob("outbox-*.db")}
        adopted = 0
        self.skipped = []
        for stem in sorted(stems - {self.path.stem}):
            try:
                adopted += self._recover_file(self.directory / f"{stem}.lock")
            except Exception:  # whatever one file does, the next one is still recovered
                self.skipped.append(stem)
                _log.exception("recovering lineage outbox %s failed; skipped", stem)
        return adopted

    def _recover_file(self, lock_path: Path) -> int:
        db_path = lock_path.with_suffix(".db")
        if lock_path.exists() and not is_regular_file(lock_path):
            self.skipped.append(lock_path.stem)
            _log.warning("lineage outbox lock %s is not a regular file; skipped", lock_path.name)
            return 0
        try:
            lock = open(lock_path, "a")  # noqa: SIM115 - closed below, after the removal
        except OSError as exc:
            self.skipped.append(lock_path.stem)
            _log.warning("lineage outbox lock %s unusable (%s); skipped", lock_path.name, exc)
            return 0
        with lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0  # its owner is alive
            adopted = 0
            if db_path.exists() or db_path.is_symlink():
                try:
                    if not is_regular_file(db_path):
                        raise sqlite3.DatabaseError("not a regular file")
                    adopted = self._adopt(db_path)
                except (sqlite3.Error, OSError) as exc:
                    reason = f"unreadable outbox file ({type(exc).__name__}: {exc})"
                    quarantine_file(self.directory, db_path, reason=reason)
                    with self._cond:
                        self._quarantined += 1
                    _log.warning("lineage outbox %s quarantined: %s", db_path.name, reason)
            _remove(db_path, lock_path)
        return adopted

    def _adopt(self, db_path: Path) -> int:
        with self._cond:
            self._conn.execute("ATTACH DATABASE ? AS orphan", (str(db_path),))
            try:
                (check,) = self._conn.execute("PRAGMA orphan.quick_check(1)").fetchone()
                if check != "ok":
                    raise sqlite3.DatabaseError(f"integrity check: {check}")
                tables = {
                    name
                    for (name,) in self._conn.execute(
                        "SELECT name FROM orphan.sqlite_master WHERE type = 'table'"
                    )
                }
                with self._transaction("BEGIN IMMEDIATE"):
                    count, size = self._copy_orphan_rows(db_path) if "outbox" in tables else (0, 0)
                    abandoned, abandoned_size = self._abandon_orphan_markers(tables)
            finally:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("DETACH DATABASE orphan")
            self.abandoned += [
                (r.report_generation_id, r.trace_id) for r in abandoned if r.report_generation_id
            ]
            count += len(abandoned)
            size += abandoned_size
            self._count += count
            self._bytes += size
            if count:
                self._read_file_from_cursor()
                self._checkpointer.wrote(size)
                self._cond.notify()
        _log.warning(
            "adopted %d lineage records (%d abandoned reports) from %s",
            count,
            len(abandoned),
            db_path.name,
        )
        return count

    def _copy_orphan_rows(self, db_path: Path) -> tuple[int, int]:
        """Copy the orphan's well-formed rows; quarantine the raw record of the others."""
        count = size = 0
        cursor = self._conn.execute(f"SELECT seq, {_COLUMNS} FROM orphan.outbox ORDER BY seq")
        while chunk := cursor.fetchmany(_ADOPT_CHUNK):
            good = []
            for seq, *row in chunk:
                if _well_formed(row):
                    good.append(row)
                    size += row[3]
                else:
                    self._quarantine_raw(row[4], f"{db_path.stem}-{seq}", "malformed outbox row")
            self._conn.executemany(_INSERT, good)
            count += len(good)
        return count, size

    def _abandon_orphan_markers(self, tables: set[str]) -> tuple[list[LineageRecord], int]:
        """Each marker without a record: a report whose process died before it ended."""
        if "open_report" not in tables:
            return [], 0
        present = {row[1] for row in self._conn.execute("PRAGMA orphan.table_info(open_report)")}
        detail = ", ".join(name if name in present else "NULL" for name in _MARKER_DETAIL)
        unmatched = (
            f"SELECT trace_id, report_generation_id, started_at, {detail} FROM orphan.open_report"
        )
        if "outbox" in tables:
            unmatched += " WHERE trace_id NOT IN (SELECT trace_id FROM orphan.outbox)"
        records = []
        size = 0
        for trace_id, generation_id, started_at, *known in self._conn.execute(unmatched).fetchall():
            try:
                record = abandoned_record(trace_id, generation_id, started_at, ReportStart(*known))
            except (TypeError, ValueError, OverflowError, OSError):
                # A marker holds no customer data: an unreadable one is dropped, said once,
                # and never stops the records of the same file.
                _log.warning("unreadable open-report marker in an orphan outbox; dropped")
                continue
            data = record.to_bytes()
            self._conn.execute(_INSERT, (trace_id, generation_id, time.time(), len(data), data))
            records.append(record)
            size += len(data)
        return records, size

    def _quarantine_row(self, seq: int, size: object, data: object, reason: str) -> None:
        """Move an undecodable row of this outbox to quarantine, then out of the outbox."""
        if self._quarantine_raw(data, f"{self.path.stem}-{seq}", reason):
            try:
                with self._transaction():  # the row's report ended: its marker goes with it
                    self._conn.execute(
                        "DELETE FROM open_report WHERE trace_id IN "
                        "(SELECT trace_id FROM outbox WHERE seq = ?)",
                        (seq,),
                    )
                    self._conn.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
            except sqlite3.Error:  # a copy is safe in quarantine; the next owner retries
                _log.exception("lineage outbox %s: quarantined row not deleted", self.path)
        else:
            self._stuck += 1  # kept in the file (never deleted with it), out of the count
        self._count -= 1
        self._bytes -= size if isinstance(size, int) else 0

    def _quarantine_raw(self, data: object, source: str, reason: str) -> bool:
        try:
            quarantine_record(self.directory, data, source=source, reason=reason)
        except OSError:
            _log.exception("lineage record %s could not be quarantined; left in place", source)
            return False
        self._quarantined += 1
        _log.warning("lineage record %s quarantined: %s", source, reason)
        return True

    def _clear_marker(self, trace_id: str) -> None:
        if trace_id in self._open_traces:
            self._open_traces.discard(trace_id)
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("DELETE FROM open_report WHERE trace_id = ?", (trace_id,))

    @contextlib.contextmanager
    def _transaction(self, begin: str = "BEGIN IMMEDIATE") -> Iterator[None]:
        self._conn.execute(begin)
        try:
            yield
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def reset_after_fork(self) -> None:
        # The parent keeps its file, lock and connections; the child opens its own outbox.
        _INHERITED.extend((self._conn, self._checkpointer, self._lock_file))
        self._open()

    # -- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the outbox. An empty one is deleted; one with records, open-report markers
        or rows it could not quarantine is left for the next process's recovery."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            empty = self._count == 0 and not self._open_traces and not self._stuck
            self._checkpointer.stop()  # first: the last connection to close removes the WAL
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
        alive = _owner_alive(db_path.with_suffix(".lock"))
        error = None
        try:
            rows = _read_only(
                db_path, "SELECT count(*), coalesce(sum(size), 0), min(created_at) FROM outbox"
            )
            records, size, oldest = rows[0]
        except sqlite3.Error as exc:
            records, size, oldest, error = 0, 0, None, f"{type(exc).__name__}: {exc}"
        found.append(
            OutboxFile(
                db_path,
                int(records) if isinstance(records, int) else 0,
                int(size) if isinstance(size, int | float) else 0,
                float(oldest) if isinstance(oldest, int | float) else None,
                alive,
                error,
            )
        )
    return found


def pending_generation_ids(directory: Path) -> dict[str, Path]:
    """Report ids with a record waiting in some outbox under ``directory``."""
    pending: dict[str, Path] = {}
    for db_path in sorted(directory.glob("outbox-*.db")):
        with contextlib.suppress(sqlite3.Error):
            for (report_id,) in _read_only(
                db_path,
                "SELECT report_generation_id FROM outbox WHERE report_generation_id IS NOT NULL",
            ):
                pending[str(report_id)] = db_path
    return pending


def open_reports(directory: Path) -> dict[str, bool]:
    """Report ids whose trace began and has no record yet -> whether their process lives.

    A live owner means "in progress"; a dead one means "abandoned" (the next recovery turns
    it into a failed record). A generation with several attempts (a redelivered task) is in
    progress while any of them is.
    """
    found: dict[str, bool] = {}
    for report_id, _trace_id, alive in _open_markers(directory):
        found[report_id] = found.get(report_id, False) or alive
    return found


def dead_attempts(directory: Path) -> set[tuple[str, str]]:
    """(report id, trace id) of every report begun by a process that is gone."""
    return {(rid, tid) for rid, tid, alive in _open_markers(directory) if not alive}


def _open_markers(directory: Path) -> list[tuple[str, str, bool]]:
    markers: list[tuple[str, str, bool]] = []
    if not directory.is_dir():
        return markers
    for db_path in sorted(directory.glob("outbox-*.db")):
        alive = _owner_alive(db_path.with_suffix(".lock"))
        with contextlib.suppress(sqlite3.Error):
            for report_id, trace_id in _read_only(
                db_path,
                "SELECT report_generation_id, trace_id FROM open_report "
                "WHERE report_generation_id IS NOT NULL "
                "AND trace_id NOT IN (SELECT trace_id FROM outbox)",  # ended, record not shipped
            ):
                markers.append((str(report_id), str(trace_id), alive))
    return markers


def _owner_alive(lock_path: Path) -> bool:
    """True while a process holds the lock; a lock that cannot be opened counts as held."""
    if not lock_path.exists():
        return False
    if not is_regular_file(lock_path):
        return True  # cannot be told dead: never adopted, never opened
    try:
        with open(lock_path, "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
    except OSError:
        return True
    return False


def is_regular_file(path: Path) -> bool:
    """True for a regular file (through symlinks). Opening a FIFO or a device would block or
    read forever: anything else in the outbox directory is never opened."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _read_only(db_path: Path, sql: str) -> list[Any]:
    """Rows of ``sql`` against an outbox opened read-only; ``sqlite3.Error`` if unreadable."""
    if not is_regular_file(db_path):
        raise sqlite3.DatabaseError("not a regular file")
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _serialise(record: LineageRecord) -> tuple[bytes, LineageRecord] | None:
    """The record's bytes, and the record they hold: text an encoder refuses (lone
    surrogates) is cleaned first."""
    try:
        return record.to_bytes(), record
    except (TypeError, ValueError):
        pass
    try:
        cleaned = clean_record(record)
        return cleaned.to_bytes(), cleaned
    except (TypeError, ValueError):
        _log.exception("lineage record of trace %s cannot be serialised", record.trace_id)
        return None


#: The record's float fields: orjson writes a non-finite float as null.
_FLOAT_FIELDS = tuple(f.name for f in dataclasses.fields(LineageRecord) if "float" in str(f.type))


def _round_trips(record: LineageRecord) -> bool:
    """Whether the file's copy of ``record`` decodes to the same values, so that taking it
    from memory stores what taking it from the file would (no fold makes one that does not)."""
    for name in _FLOAT_FIELDS:
        value = getattr(record, name)
        if value is not None and not math.isfinite(value):
            return False
    return True


def _decode(size: object, data: object) -> tuple[LineageRecord | None, str]:
    """The record, or None and why not (the reason never quotes the data)."""
    if not isinstance(data, bytes):
        return None, f"record stored as {type(data).__name__}, not bytes"
    if not isinstance(size, int) or size != len(data):
        written = size if isinstance(size, int) else "an unknown size"
        return None, f"record is {len(data)} bytes, {written} were written"
    try:
        return LineageRecord.from_bytes(data), ""
    except Exception as exc:
        return None, f"undecodable record ({type(exc).__name__})"


def _well_formed(row: list[Any]) -> bool:
    trace_id, generation_id, created_at, size, record = row
    return (
        isinstance(trace_id, str)
        and isinstance(generation_id, str | None)
        and isinstance(created_at, int | float)
        and isinstance(size, int)
        and isinstance(record, bytes)
    )


def _remove(*paths: Path) -> None:
    for path in paths:
        for candidate in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            candidate.unlink(missing_ok=True)
