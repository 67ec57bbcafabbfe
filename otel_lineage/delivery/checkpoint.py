"""Copying an outbox's WAL back into its file, on a thread of its own.

SQLite checkpoints automatically inside whichever commit crosses 1,000 WAL pages (4 MB): in the
outbox that is a report's ``put``, which then copied the WAL back and synced it on the report's
thread (more than a 1 MB record's own insert, amortised). This thread checkpoints every second
that saw writes, and at once when ``EVERY_BYTES`` were put, with a connection of its own: a
passive checkpoint runs beside the report's inserts and needs neither the outbox's lock nor its
connection, and it depends on nothing the writer does. The commit that crosses 1,000 pages
then finds the frames already copied and only starts the WAL again from its top; SQLite's own
checkpoint stays in place, so under back-to-back puts that a passive checkpoint cannot catch up
with, the WAL is still bounded (about 4 MB) and a put pays what it paid before, never more.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path
from urllib.parse import quote

from otel_lineage.ratelimit import RateLimitedLogger

_log = RateLimitedLogger(logging.getLogger(__name__))
EVERY_S = 1.0
EVERY_BYTES = 4 << 20
#: The size a reset WAL file is cut back to (``PRAGMA journal_size_limit``).
WAL_SIZE_LIMIT = 4 << 20


class Checkpointer:
    """Checkpoints the outbox file at ``path`` while it is written to, until ``stop``."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._dirty = False
        self._written = 0  # record bytes since the last checkpoint (no lock: a hint)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="otel-lineage-checkpoint", daemon=True
        )
        self._thread.start()

    def wrote(self, size: int = 0) -> None:
        """The outbox committed a change (``size`` bytes of record): checkpoint it soon."""
        self._dirty = True
        self._written += size
        if self._written >= EVERY_BYTES:
            self._wake.set()

    def stop(self) -> None:
        """Stop the thread and close its connection: before the outbox's own connection closes,
        since the last connection to close is the one that removes the WAL."""
        self._stop.set()
        self._wake.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while not self._stop.is_set():
                self._wake.wait(EVERY_S)
                self._wake.clear()
                if self._stop.is_set() or not self._dirty:
                    continue
                self._dirty, self._written = False, 0
                conn = self._checkpoint(conn)
        finally:
            if conn is not None:
                conn.close()

    def _checkpoint(self, conn: sqlite3.Connection | None) -> sqlite3.Connection | None:
        """One passive checkpoint. A failure is harmless: the WAL keeps every record, and the
        next checkpoint, or SQLite's own past the safety size, copies them."""
        try:
            if conn is None:
                # mode=rw: an outbox file removed meanwhile is never created again empty.
                uri = f"file:{quote(str(self._path))}?mode=rw"
                conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=1)
                conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error:
            _log.exception("lineage outbox %s: checkpoint failed", self._path)
        return conn
