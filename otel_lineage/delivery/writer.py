"""The background writer: drains the hand-off into the lineage database in batches.

All database I/O of the plugin happens on this thread, never on the thread that ended a span.
Writes are paced, at most one per ``linger_s`` (0.2 s): a record that arrives after a quiet
period is written at once, alone (its row is visible milliseconds after its report), while
records arriving sooner after a write wait for the interval to end and go in one batch. A write
costs far more than a record (a one-record SQLite transaction with the snapshot table: about
0.2 ms of CPU against 0.05 ms a record in a batch of 40), so under load batches grow with the
rate and the cost per report stays low; idle, nothing waits. A failed batch goes back to the
hand-off and is retried with exponential backoff, so a database outage delays lineage but does
not lose it (within the hand-off's bounds) and never blocks or fails a report. Every database
call has a deadline (``call_timeout_s``): a watchdog breaks off a call a silent server never
answers, and the batch is retried like any outage.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator

from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, StatementError

from otel_lineage.delivery.handoff import HandOff, Pending
from otel_lineage.delivery.stats import LineageStats
from otel_lineage.delivery.store import LineageStore, untraced
from otel_lineage.ratelimit import RateLimitedLogger

_log = RateLimitedLogger(logging.getLogger(__name__))


#: For this long after start a missing lineage schema is expected (a command that migrates
#: the database after tracing came up, like ``d6-reports demo``): waited for quietly.
SCHEMA_GRACE_S = 60.0
#: Seals (of up to 50,000 rows each) one writer makes in a row before writing again.
_MAX_SEALS_PER_ROUND = 20


def is_missing_schema(exc: BaseException) -> bool:
    """The lineage tables do not exist (yet): SQLite "no such table", PostgreSQL 42P01."""
    orig = getattr(exc, "orig", None)
    if getattr(orig, "sqlstate", None) == "42P01":
        return True
    return "no such table" in str(orig if orig is not None else exc).lower()


def is_rejection(exc: BaseException) -> bool:
    """True when the database refused the data (retrying cannot help), not when it is down.

    Constraint and data errors, values a driver cannot encode, and statement errors raised
    before reaching the database are rejections; connection, missing-table and every other
    database error are transient.
    """
    if isinstance(exc, IntegrityError | DataError):
        return True
    if isinstance(exc, ValueError | TypeError | OverflowError):
        return True  # a driver refusing a value it cannot encode (text, an integer too big)
    return isinstance(exc, StatementError) and not isinstance(exc, DBAPIError)


class _Watchdog:
    """One long-lived thread that interrupts a store call still running at its deadline.

    Arming and disarming cost a lock, not a thread start: the writer makes a store call per
    report when reports trickle in. The thread sleeps at most ``timeout_s`` at a time, so a
    deadline armed while it sleeps (``timeout_s`` from then) is never missed, and arming
    needs no wake-up.
    """

    def __init__(self, timeout_s: float, interrupt: Callable[[], None]) -> None:
        self._timeout = timeout_s
        self._interrupt = interrupt
        self._lock = threading.Lock()
        self._expires_at: float | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="otel-lineage-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop and wait for the thread: a shut-down writer leaves nothing running that holds
        its store."""
        self._stopped.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)

    @contextlib.contextmanager
    def deadline(self) -> Iterator[None]:
        with self._lock:
            self._expires_at = time.monotonic() + self._timeout
        try:
            yield
        finally:
            with self._lock:
                self._expires_at = None

    def _run(self) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                expired = self._expires_at is not None and now >= self._expires_at
                if expired:
                    self._expires_at = None  # one interrupt per call
                wait = self._timeout if self._expires_at is None else self._expires_at - now
            if expired:
                try:
                    self._interrupt()
                except Exception:  # the watchdog must outlive a failed interrupt
                    _log.exception("interrupting a lineage database call failed")
            if self._stopped.wait(wait):
                return


class BackgroundWriter:
    _watchdog: _Watchdog  # started with the writer thread, stopped when it ends

    def __init__(
        self,
        handoff: HandOff,
        store: LineageStore,
        stats: LineageStats,
        *,
        batch_size: int = 500,
        idle_wait_s: float = 0.2,
        linger_s: float = 0.2,
        min_backoff_s: float = 0.2,
        max_backoff_s: float = 30.0,
        counters_every_s: float = 2.0,
        recover_every_s: float = 60.0,
        call_timeout_s: float = 60.0,
        sealer: Callable[[], bool] | None = None,
        seal_every_s: float = 60.0,
    ) -> None:
        self.handoff = handoff
        self.store = store
        self._stats = stats
        self._batch_size = batch_size
        self._idle_wait = idle_wait_s
        self._linger = linger_s
        self._min_backoff = min_backoff_s
        self._max_backoff = max_backoff_s
        self._counters_every = counters_every_s
        self._recover_every = recover_every_s
        self._call_timeout = call_timeout_s
        # Periodic tamper-evident seals (``otel_lineage.evidence``, injected by startup so
        # delivery imports nothing above it): True from the sealer means more rows wait.
        self._sealer = sealer
        self._seal_every = seal_every_s
        self._init_thread_state()

    def _init_thread_state(self) -> None:
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._backoff = 0.0
        self._counters_saved_at = 0.0
        self._recovered_at = 0.0
        self._sealed_at = 0.0
        self._last_write = float("-inf")  # no write yet: the first record goes at once
        self._started_at = time.monotonic()

    def start(self) -> None:
        if self._thread is None:
            # Adopt what dead processes left before anything else, on the starting thread: it
            # is local file work only, and a flush right after start must already count it.
            self._recover()
            self._watchdog = _Watchdog(self._call_timeout, self.store.interrupt)
            self._thread = threading.Thread(
                target=self._run, name="otel-lineage-writer", daemon=True
            )
            self._thread.start()

    @property
    def thread_id(self) -> int | None:
        """The writer thread's native id while it runs (for per-thread CPU accounting)."""
        thread = self._thread
        return thread.native_id if thread is not None else None

    def _run(self) -> None:
        try:
            with untraced():  # nothing this thread does may ever create a span
                self._work()
        finally:
            self._watchdog.stop()

    def _work(self) -> None:
        """Write until stopped, then drain what the database and the hand-off allow."""
        while not self._stop.is_set():
            try:
                self._recover()
                self._seal()
                self._cycle()
            except Exception:  # the writer must outlive any failure of its parts
                self._stats.add("errors")
                _log.exception("lineage writer cycle failed")
                self._stop.wait(self._max_backoff / 10)
        with contextlib.suppress(Exception):
            while self.handoff.pending() and self._write_once():
                pass  # drain on stop, as long as the database and hand-off allow
        lost = self.handoff.abandon()
        if lost:
            self._stats.add("dropped", lost)
            _log.warning("lineage writer stopped with %d records unwritten", lost)
        self._count_quarantined()
        self._save_counters(force=True)

    def _recover(self) -> None:
        """Adopt what dead processes left behind: at start, then every ``recover_every_s``."""
        now = time.monotonic()
        if self._recovered_at and now - self._recovered_at < self._recover_every:
            return
        self._recovered_at = now
        try:
            self.handoff.recover()
        except Exception:
            _log.exception("recovering orphaned lineage records failed")
        self._count_quarantined()

    def _seal(self) -> None:
        """Seal the rows written since the last seal, every ``seal_every_s``. A failure is
        logged (rate-limited) and tried again next time: sealing never holds up writing."""
        now = time.monotonic()
        if self._sealer is None or (self._sealed_at and now - self._sealed_at < self._seal_every):
            return
        self._sealed_at = now
        try:
            for _ in range(_MAX_SEALS_PER_ROUND):
                with self._deadline():
                    more = self._sealer()
                if not more or self._stop.is_set():
                    break
        except Exception:
            if not self._schema_missing_says():
                _log.exception(
                    "sealing lineage rows failed; tried again in %.0f s", self._seal_every
                )

    def _count_quarantined(self) -> None:
        moved = self.handoff.take_quarantined()
        if moved:
            self._stats.add("quarantined", moved)

    def _cycle(self) -> None:
        if self._backoff:
            self._wake.wait(self._backoff)
            self._wake.clear()
        if not self._write_once():
            self._backoff = min(max(self._backoff * 2, self._min_backoff), self._max_backoff)
        else:
            self._backoff = 0.0
        self._count_quarantined()
        self._save_counters()

    def _write_once(self) -> bool:
        """Write what is waiting, at once (waiting up to ``idle_wait_s`` for a first record);
        False when the write failed."""
        items = self.handoff.take(self._batch_size, self._idle_wait)
        if not items:
            return True
        self._pace(items)
        self._wake.clear()
        self._last_write = time.monotonic()
        try:
            with self._deadline():
                self.store.upsert([item.record for item in items])
        except Exception as exc:
            if not is_rejection(exc):
                return self._retry_later(items)
            # The database rejected the data itself: retrying the batch would block every
            # record behind it forever. Write one by one; drop (and count) only the rejected.
            self._write_individually(items)
            return True
        self.handoff.ack(items)
        self._stats.add("written", len(items))
        return True

    def _pace(self, items: list[Pending]) -> None:
        """Wait until ``linger_s`` after the previous write started, then take what arrived
        meanwhile, in one go (a flush or a stop cuts the wait short). The wait is a sleep, not
        a take per arriving record: waking at every report would cost each report a turn of
        the writer at the hand-off's lock. After a quiet period that moment has passed, and
        the record is written at once."""
        remaining = self._last_write + self._linger - time.monotonic()
        if remaining <= 0 or len(items) >= self._batch_size:
            return
        self._wake.wait(remaining)
        items.extend(self.handoff.take(self._batch_size - len(items), 0))

    def _retry_later(self, items: list[Pending]) -> bool:
        self.handoff.release(items)
        self._stats.add("errors")
        if not self._schema_missing_says():
            _log.exception("lineage write failed; %d records kept for retry", len(items))
        return False

    def _schema_missing_says(self) -> bool:
        """For a missing schema: wait quietly during the grace period, then one clear line.
        True when the current exception was such a case (and has been dealt with)."""
        exc = sys.exc_info()[1]
        if exc is None or not is_missing_schema(exc):
            return False
        if time.monotonic() - self._started_at > SCHEMA_GRACE_S:
            _log.warning(
                "the lineage tables do not exist: run `d6-reports db upgrade`; records wait "
                "in the outbox until then"
            )
        return True

    def _write_individually(self, items: list[Pending]) -> None:
        for item in items:
            try:
                with self._deadline():
                    self.store.upsert([item.record])
            except Exception as exc:
                if not is_rejection(exc):
                    self.handoff.release([item])  # transient after all: keep it for the retry
                    self._stats.add("errors")
                    continue
                self._stats.add("dropped")
                _log.exception(
                    "lineage record of trace %s rejected by the database; dropped",
                    item.record.trace_id,
                )
            else:
                self._stats.add("written")
            self.handoff.ack([item])

    def _save_counters(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._counters_saved_at < self._counters_every:
            return
        self._counters_saved_at = now
        try:
            with self._deadline():
                self.store.save_counters(self._stats.snapshot(), self.handoff.pending())
        except Exception:
            if not self._schema_missing_says():
                _log.exception("saving lineage counters failed")

    def _deadline(self) -> contextlib.AbstractContextManager[None]:
        """Bound one store call: at the deadline the watchdog interrupts it (it then fails
        like an outage: retried), whatever the driver's own timeouts are."""
        return self._watchdog.deadline()

    def flush(self, timeout_s: float) -> bool:
        """Wait until everything handed off is written; False at the deadline."""
        deadline = time.monotonic() + timeout_s
        self._wake.set()  # one immediate attempt, then the backoff applies again
        while self.handoff.pending():
            if time.monotonic() >= deadline or self._thread is None:
                return False
            time.sleep(0.002)
        return True

    def stop(self, timeout_s: float = 30.0) -> None:
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        self._wake.set()
        self.handoff.wake()  # an idle writer waits in ``take`` for a first record: not 0.2 s more
        thread.join(timeout_s)
        self._thread = None
        if thread.is_alive():  # a call is still inside its deadline: nothing waits for it
            _log.warning(
                "lineage writer still busy after %.1f s; %d records not yet written "
                "(a durable outbox keeps them for the next process)",
                timeout_s,
                self.handoff.pending(),
            )

    def restart_after_fork(self) -> None:
        """In a forked child the writer thread does not exist: start a fresh one."""
        self._init_thread_state()
        self.handoff.reset_after_fork()
        self.store.reset_after_fork()
        self.start()
