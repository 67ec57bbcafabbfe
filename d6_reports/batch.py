"""Generating many reports, in this process or in a pool of worker processes.

Pool processes are *forked* from a process that has not brought telemetry up and runs no other
thread (the ``generate-all`` and ``demo`` commands start their pool first thing): each inherits
the imported renderer, so a process is ready in milliseconds instead of re-importing WeasyPrint
and the service (about 1.5 s here), and no connection, lock or thread crosses the fork. Anywhere
else (an embedding application, ``opentelemetry-instrument``, which starts the SDK before the
command runs, a platform without ``fork``) they are *spawned*. Either way each process builds
its own engine and generator and brings OpenTelemetry up itself. A pool process ends with
``os._exit`` (no ``atexit``), so each registers a multiprocessing finalizer that flushes the
tracer provider it was given (by ``opentelemetry-instrument`` or a lineage configuration):
without it, the last spans of every worker would be lost.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing.util import Finalize
from types import TracebackType

from opentelemetry import metrics, trace

from d6_reports.bootstrap import REPORT_COMMAND_UNUSED, start_telemetry, telemetry_untouched
from d6_reports.generator import GenerationOptions, GenerationResult
from d6_reports.service import ReportService


@dataclass(frozen=True, slots=True)
class BatchItem:
    """What a batch reports per generation (picklable, small)."""

    business_id: int
    success: bool
    generation_id: str
    pages: int | None
    pdf_path: str | None
    error_type: str | None
    #: The error type's fixed description (never the message, which may quote customer data).
    error_description: str | None
    duration_ms: float

    @classmethod
    def failed(cls, business_id: int, exc: BaseException) -> BatchItem:
        """A generation that could not even report its own result (its worker died)."""
        return cls(
            business_id=business_id,
            success=False,
            generation_id="",
            pages=None,
            pdf_path=None,
            error_type=type(exc).__qualname__,
            error_description=f"{type(exc).__qualname__}: the worker process failed",
            duration_ms=0.0,
        )

    @classmethod
    def from_result(cls, result: GenerationResult) -> BatchItem:
        return cls(
            business_id=result.business_id,
            success=result.success,
            generation_id=result.generation_id,
            pages=result.pages,
            pdf_path=str(result.pdf_path) if result.pdf_path else None,
            error_type=result.error_type,
            error_description=result.error_description,
            duration_ms=round(sum(result.timings_ms.values()), 3),
        )


def run_batch(
    business_ids: Sequence[int],
    options: GenerationOptions,
    *,
    pool: WorkerPool | None = None,
    service: ReportService | None = None,
) -> Iterator[BatchItem]:
    """Yield one ``BatchItem`` per business id as generations finish: in this process (with
    ``service``, or one built from the settings), or in ``pool``'s processes (any order).

    One business's failure, even one that kills its worker process, is that business's failed
    item: the batch always goes on to the end.
    """
    if pool is not None:
        yield from pool.run(business_ids, options)
        return
    own = service is None
    service = service or ReportService.from_settings()
    try:
        for business_id in business_ids:
            try:
                result = service.generator.generate_report_sync(business_id, options)
            except Exception as exc:  # invalid id: this business's failure only
                yield BatchItem.failed(business_id, exc)
            else:
                yield BatchItem.from_result(result)
    finally:
        if own:
            service.close()


class WorkerPool:
    """``workers`` report processes, started when the pool is created (a context manager).

    Create it before this process brings telemetry up or starts a thread, and its processes
    are forked from it (see the module docstring); each brings its own telemetry and service
    up at its first report.
    """

    def __init__(self, workers: int) -> None:
        if workers < 2:
            raise ValueError("a worker pool has at least 2 processes")
        self.workers = workers
        self.start_method = _start_method()
        self._executor = self._new_executor()
        # Start every process now (a forking executor starts them all at its first task; a
        # spawning one one per task), before this process has a thread for a fork to copy.
        for _ in range(workers):
            self._executor.submit(_ready)

    def run(self, business_ids: Sequence[int], options: GenerationOptions) -> Iterator[BatchItem]:
        """One item per business id, as generations finish. A process that dies (a report
        that kills it, the OOM killer) breaks the executor and every report still in it: the
        reports it may have been running are then run again alone, each in a new pool, so
        only a report that kills its process again fails; the others go on in a new pool."""
        todo = list(business_ids)
        while todo:
            unfinished, in_flight = yield from self._run_until_broken(todo, options)
            if not unfinished:
                return
            suspects, todo = unfinished[:in_flight], unfinished[in_flight:]
            for business_id in suspects:
                self._restart()
                if (yield from self._run_until_broken([business_id], options))[0]:
                    yield BatchItem.failed(business_id, BrokenProcessPool())
            self._restart()

    def _run_until_broken(
        self, business_ids: Sequence[int], options: GenerationOptions
    ) -> Generator[BatchItem, None, tuple[list[int], int]]:
        """Yield the items that finish; return the ids the broken executor did not finish, in
        submission order (none when it did not break), and how many of the first of them it
        may have been running: the first ``workers`` + 1 (its queue), as it hands reports out
        in submission order, or none when it broke before this call submitted anything (a
        process that died while the command was still starting)."""
        futures: list[tuple[Future[BatchItem], int]] = []
        try:
            for business_id in business_ids:
                futures.append(
                    (self._executor.submit(_generate_in_worker, business_id, options), business_id)
                )
        except BrokenProcessPool:
            pass
        not_sent = list(business_ids[len(futures) :])
        ids = dict(futures)
        broken: set[Future[BatchItem]] = set()
        for future in as_completed(ids):
            try:
                yield future.result()
            except BrokenProcessPool:
                broken.add(future)
            except Exception as exc:  # the report could not even be sent or returned
                yield BatchItem.failed(ids[future], exc)
        unfinished = [b for future, b in futures if future in broken]
        in_flight = min(len(unfinished), self.workers + 1)
        return unfinished + not_sent, in_flight

    def _restart(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        self.start_method = _start_method()
        self._executor = self._new_executor()

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context(self.start_method),
            initializer=_die_with_parent,
            initargs=(os.getpid(),),
        )

    def close(self) -> None:
        """Wait for the processes to finish their reports, flush their telemetry and exit.
        Interrupted (a second Ctrl-C), it stops them instead (``stop``)."""
        try:
            self._executor.shutdown(wait=True, cancel_futures=True)
        except KeyboardInterrupt:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop now: nothing more is started and the processes are terminated. What their
        reports had made durable (each finished report's lineage record is in its outbox)
        is adopted by the next process; a report cut short is an abandoned attempt."""
        # The executor has no public way to end its processes; its ``_processes`` (a dict
        # since Python 3.2) are this pool's only, unlike ``multiprocessing.active_children``.
        processes = list((getattr(self._executor, "_processes", None) or {}).values())
        self._executor.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.terminate()
        deadline = time.monotonic() + _STOP_JOIN_S
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
        for process in processes:
            if process.is_alive():  # stopped (SIGSTOP) or stuck: SIGTERM waits for it
                process.kill()
                process.join(_STOP_JOIN_S)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            self.stop()  # Ctrl-C: the user wants the command to end, not the batch
        else:
            self.close()


def can_fork_workers() -> bool:
    """Whether a ``WorkerPool`` created now forks its processes from this one: this process
    runs no other thread and has brought no telemetry up (see the module docstring). macOS
    is excluded: its system frameworks do not survive a fork."""
    return (
        sys.platform == "linux"
        and "fork" in multiprocessing.get_all_start_methods()
        and threading.active_count() == 1
        and telemetry_untouched()
    )


def _start_method() -> str:
    return "fork" if can_fork_workers() else "spawn"


def _ready() -> None:
    """A first task per process: makes the executor start it now."""


def _die_with_parent(parent: int) -> None:
    """Each pool process's initializer. Ctrl-C is the command's to handle (it stops the
    pool): a terminal sends it to every process of the group, and an idle pool process would
    die of it with a traceback. On Linux, if the command is killed, its processes do not
    live on, holding their outbox locks; SIGTERM ends one like any other stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform != "linux":
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not fatal: the process still ends with its queue
        return
    if os.getppid() != parent:  # the parent died before the call: nobody would signal
        os.kill(os.getpid(), signal.SIGTERM)


#: ``prctl`` option: the signal a process gets when its parent ends (Linux).
_PR_SET_PDEATHSIG = 1
#: Seconds ``stop`` waits for the terminated processes before it kills what is left.
_STOP_JOIN_S = 2.0
_worker_service: ReportService | None = None


def _worker() -> ReportService:
    """This pool process's service, brought up at its first report, once the parent's own
    start-up check has passed (so a bad setting is the parent's one line, not a message per
    process). Forked before the parent's telemetry, or spawned: none of it exists here. A
    failed start fails the report (``TelemetryStartError``) and is tried again at the next."""
    global _worker_service
    if _worker_service is None:
        start_telemetry(warn=lambda _message: None, unused_instrumentations=REPORT_COMMAND_UNUSED)
        _worker_service = ReportService.from_settings()
        Finalize(None, flush_telemetry, exitpriority=10)
    return _worker_service


def _generate_in_worker(business_id: int, options: GenerationOptions) -> BatchItem:
    return BatchItem.from_result(_worker().generator.generate_report_sync(business_id, options))


def flush_telemetry() -> None:
    """Shut down whatever tracer/meter provider is installed (API only: duck-typed)."""
    for provider in (trace.get_tracer_provider(), metrics.get_meter_provider()):
        shutdown: Callable[[], object] | None = getattr(provider, "shutdown", None)
        if shutdown is not None:
            shutdown()
