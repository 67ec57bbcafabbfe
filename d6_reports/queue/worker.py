"""``d6-reports worker``: a Celery prefork worker that brings OpenTelemetry up in each child.

Celery's prefork pool forks its children from the parent after the parent imported
everything. Threads do not survive a fork: a tracer provider, its ``BatchSpanProcessor`` and
the lineage writer started in the parent would be dead objects in every child. And with
``--max-tasks-per-child`` a child exits as soon as its last task returns, taking whatever its
span processors still buffer with it (opentelemetry-python-contrib issue 4916). So:

- The parent never starts OpenTelemetry. It only imports the modules (copy-on-write pages make
  each child's start fast) and runs ``otel-lineage outbox flush`` when it starts and stops
  (``adoption``): what a dead or recycled child left in its outbox is shipped and its
  unfinished report recorded as abandoned.
- Each child runs ``d6_reports.bootstrap.start_telemetry()`` in ``worker_process_init``, then
  builds its report service. A child that cannot start telemetry (or lineage, unless
  ``D6_ALLOW_NO_LINEAGE=true``) processes nothing: it records the one-line reason where the
  parent can read it (shared memory made before the fork), asks the parent to stop (SIGTERM:
  a warm shutdown, so other children finish their reports) and exits. The parent then prints
  ``error: <reason>`` and ``run_worker`` returns 1. Fail loud: no report without lineage.
- ``worker_process_shutdown`` (in the child, also when it is recycled) closes the service and
  shuts the tracer provider down within ``CHILD_FLUSH_TIMEOUT_S``: the lineage writer ships
  what it can, the export processors flush. A lineage record is durable before its report
  returns (the outbox), so a flush cut short delays lineage, never loses it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import mmap
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from importlib.metadata import entry_points
from typing import Any

from celery import signals
from celery.utils.nodenames import default_nodename, host_format

from d6_reports.batch import flush_telemetry
from d6_reports.bootstrap import TelemetryStartError, start_telemetry
from d6_reports.queue import tasks
from d6_reports.queue.adoption import adopt_dead_outboxes
from d6_reports.queue.app import BROKER_ERRORS, ReportQueueApp, create_app
from d6_reports.queue.config import QueueConfigError, check_queue_name

_log = logging.getLogger(__name__)
#: Exit status of ``run_worker``: bad arguments or settings; the worker failed or a child
#: could not start.
USAGE = 2
FAILED = 1
#: Exit status of a child that could not start (what the parent's log shows for it).
CHILD_START_FAILED = 3
#: Seconds a stopping child spends closing its service and flushing its tracer provider.
CHILD_FLUSH_TIMEOUT_S = 15.0
#: Seconds the parent waits for a new child to say it is up (Celery's default is 4 s: too short
#: for the OpenTelemetry start-up on a loaded two-core machine, and a child killed for it is
#: replaced by one that is killed again).
CHILD_START_TIMEOUT_S = 60.0
#: ``service.name`` of the worker's processes unless the environment names one.
WORKER_SERVICE_NAME = "d6-reports-worker"
#: A worker consumes Celery tasks (their spans are wanted) and serves no FastAPI app.
_UNUSED = ("fastapi",)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_CHATTY_LOGGERS = ("fontTools", "weasyprint.progress")
MAX_CONCURRENCY = 64
_NOTE_SIZE = 1024


class _SharedNote:
    """A page shared by the parent and its forked children: the first child failure's reason,
    and whether a start-up warning was already shown (once per worker, not per child)."""

    def __init__(self) -> None:
        self._page = mmap.mmap(-1, _NOTE_SIZE)  # MAP_SHARED | MAP_ANONYMOUS: survives fork

    def record_failure(self, reason: str) -> bool:
        """Keep ``reason`` unless one is already kept; True when this was the first."""
        if self._page[0]:
            return False
        data = reason.encode("utf-8", "replace")[: _NOTE_SIZE - 3]
        self._page[2 : 2 + len(data)] = data
        self._page[0] = 1
        return True

    def failure(self) -> str | None:
        if not self._page[0]:
            return None
        return self._page[2:].rstrip(b"\x00").decode("utf-8", "replace") or "unknown failure"

    def first_warning(self) -> bool:
        """True the first time it is asked in this worker (any process)."""
        first = not self._page[1]
        self._page[1] = 1
        return first

    def close(self) -> None:
        self._page.close()


class _Supervision:
    """The child-side signal handlers of one ``run_worker`` call."""

    def __init__(self, parent_pid: int) -> None:
        self.parent_pid = parent_pid
        self.note = _SharedNote()

    def on_child_init(self, **_kwargs: Any) -> None:
        """``worker_process_init``: telemetry, then the service, or stop the worker."""
        try:
            start_telemetry(
                warn=self._warn, service_name=WORKER_SERVICE_NAME, unused_instrumentations=_UNUSED
            )
            tasks.worker_service()
        except TelemetryStartError as exc:
            reason = str(exc)
        except Exception as exc:  # a setting the service cannot use (D6_DATABASE_URL...)
            first = (str(exc).strip().splitlines() or [""])[0]
            reason = f"the report service cannot start: {type(exc).__name__}: {first[:300]}"
        else:
            return
        if self.note.record_failure(reason):
            with contextlib.suppress(OSError):
                os.kill(self.parent_pid, signal.SIGTERM)  # warm shutdown of the whole worker
        sys.stderr.flush()
        os._exit(CHILD_START_FAILED)

    def on_child_shutdown(self, **_kwargs: Any) -> None:
        """``worker_process_shutdown`` (in the child): close and flush, bounded."""
        done = threading.Event()

        def close() -> None:
            try:
                tasks.close_worker_service()
                flush_telemetry()
            except Exception as exc:  # a flush that fails leaves records in the outbox
                _log.warning("worker process flush failed: %s", type(exc).__name__)
            finally:
                done.set()

        threading.Thread(target=close, name="d6-flush", daemon=True).start()
        if not done.wait(CHILD_FLUSH_TIMEOUT_S):
            _log.warning(
                "worker process %d: telemetry not flushed within %.0f s; lineage records stay "
                "in its outbox for the next flush",
                os.getpid(),
                CHILD_FLUSH_TIMEOUT_S,
            )

    def on_worker_setup(self, **_kwargs: Any) -> None:
        """``celeryd_after_setup`` (in the parent, logging set up, no child yet): adopt what
        the last run on this host left."""
        adopt_dead_outboxes(when="start")

    def _warn(self, message: str) -> None:
        if self.note.first_warning():
            print(f"warning: {message}", file=sys.stderr, flush=True)


def run_worker(
    *,
    concurrency: int,
    max_tasks_per_child: int | None,
    node_name: str | None,
    loglevel: str = "INFO",
    queues: Sequence[str] | None = None,
    app: ReportQueueApp | None = None,
) -> int:
    """Run a prefork worker until it is stopped (SIGTERM/SIGINT: warm shutdown); exit status.

    ``node_name``: Celery's node name (``name@host``; ``%h`` is this host), one per worker
    process on a host. ``queues``: default the ``D6_QUEUE`` queue. ``app``: default from the
    environment. Every failure is one ``error:`` line on stderr and a non-zero status: 2 for
    bad arguments or settings, 1 when the broker cannot be reached or a pool child could not
    start telemetry (a process that cannot start takes no report).
    """
    try:
        _check(concurrency, max_tasks_per_child, node_name, loglevel)
        for name in queues or ():
            check_queue_name(name, what="--queues")
        app = app or create_app()
    except (QueueConfigError, ValueError) as exc:
        return _error(str(exc), USAGE)
    settings = app.queue_settings
    queue_names = list(queues) if queues else [settings.queue]
    try:
        _wait_for_broker(app)
    except BROKER_ERRORS as exc:
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        return _error(
            f"the broker at {settings.safe_broker_url} cannot be reached ({reason}); "
            f"waited {settings.startup_wait_s:g} s (D6_BROKER_STARTUP_WAIT)",
            FAILED,
        )
    app.conf.worker_proc_alive_timeout = CHILD_START_TIMEOUT_S
    _quiet_libraries(loglevel)
    _preload_telemetry_modules()
    supervision = _Supervision(os.getpid())
    try:
        with _connected(supervision):
            worker = app.Worker(
                hostname=host_format(default_nodename(node_name or "")),
                pool_cls="prefork",
                concurrency=concurrency,
                max_tasks_per_child=max_tasks_per_child,
                loglevel=loglevel,
                queues=queue_names,
                # No revoke lists or clock sync between nodes: the database decides what ran.
                without_mingle=True,
                without_gossip=True,
            )
            worker.start()
            status = int(worker.exitcode or 0)
        adopt_dead_outboxes(when="stop")
        failure = supervision.note.failure()
    finally:
        supervision.note.close()
    if failure is not None:
        return _error(f"a worker process could not start: {failure}; the worker stopped", FAILED)
    return status


def _check(
    concurrency: int, max_tasks_per_child: int | None, node_name: str | None, loglevel: str
) -> None:
    if isinstance(concurrency, bool) or not 1 <= concurrency <= MAX_CONCURRENCY:
        raise ValueError(f"--concurrency must be from 1 to {MAX_CONCURRENCY}")
    if max_tasks_per_child is not None and not 1 <= max_tasks_per_child <= 1_000_000:
        raise ValueError("--max-tasks-per-child must be from 1 to 1000000")
    if node_name is not None and (
        not node_name or len(node_name) > 200 or not node_name.isprintable() or " " in node_name
    ):
        raise ValueError("--hostname must be 1 to 200 printable characters without spaces")
    if loglevel.upper() not in LOG_LEVELS:
        raise ValueError(f"--loglevel must be one of {', '.join(LOG_LEVELS)}")


def _wait_for_broker(app: ReportQueueApp) -> None:
    """Connect once, waiting up to ``startup_wait_s`` (a broker that is still starting)."""
    wait = math.ceil(app.queue_settings.startup_wait_s)
    with app.connection_for_read() as connection:
        connection.ensure_connection(
            # With a deadline, retries are bounded by time; without one, one attempt.
            max_retries=1_000_000 if wait > 0 else 0,
            interval_start=1,
            interval_step=1,
            interval_max=5,
            timeout=wait if wait > 0 else None,
        )


def _preload_telemetry_modules() -> None:
    """Import (never start) what each child's start-up needs, so a child starts in a blink.

    With ``--max-tasks-per-child 1`` every report forks a fresh child: importing the SDK, the
    exporters and every instrumentor there each time would cost more than the report.
    Best effort: a module that fails to import here fails, loudly, in the child.
    """
    modules = (
        "opentelemetry.sdk.trace",
        "opentelemetry.sdk.metrics",
        "opentelemetry.sdk._configuration",
        "opentelemetry.instrumentation.auto_instrumentation",
        "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    )
    for name in modules:
        with contextlib.suppress(Exception):
            __import__(name)
    groups = (
        "opentelemetry_distro",
        "opentelemetry_configurator",
        "opentelemetry_instrumentor",
        "opentelemetry_traces_sampler",
        "d6_reports.startup_checks",
    )
    for group in groups:
        for entry_point in entry_points(group=group):
            with contextlib.suppress(Exception):
                entry_point.load()


@contextlib.contextmanager
def _connected(supervision: _Supervision) -> Iterator[None]:
    signals.celeryd_after_setup.connect(supervision.on_worker_setup, weak=False)
    signals.worker_process_init.connect(supervision.on_child_init, weak=False)
    signals.worker_process_shutdown.connect(supervision.on_child_shutdown, weak=False)
    try:
        yield
    finally:
        signals.celeryd_after_setup.disconnect(supervision.on_worker_setup)
        signals.worker_process_init.disconnect(supervision.on_child_init)
        signals.worker_process_shutdown.disconnect(supervision.on_child_shutdown)


def _quiet_libraries(loglevel: str) -> None:
    """Below DEBUG, silence the PDF libraries' INFO chatter: WeasyPrint's progress steps and
    fontTools' subsetting lines, which list the glyphs a report used (derived from its text)."""
    if loglevel.upper() != "DEBUG":
        for name in _CHATTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


def _error(message: str, status: int) -> int:
    print(f"error: {' '.join(message.split())}", file=sys.stderr, flush=True)
    return status
