"""The report task: run a queued generation in a worker process, retry only what may pass.

A message carries ids and names only: ``(generation_id, business_id, template_name,
template_version)``. The task hands them to the same ``ReportGenerator`` as every other entry
point, with ``generation_id`` (the row ``enqueue_report`` created) and the task id; the
generator claims the row for this attempt, so a redelivered message resumes the same
generation and a finished one is never run twice.

Retries are for infrastructure only: a result that says ``retryable`` (the report database
was unreachable) is retried with a doubling delay (``QueueSettings.retry_delay``) up to
``max_retries`` times; a report that failed on its own account (unknown business, template
error) is final, and so is a malformed message. The task's return value is a small mapping of
ids and the outcome, never the report's inputs.

The generator is built once per worker process, after that process started OpenTelemetry
(``d6_reports.queue.worker``), and never in the worker's parent. Test seam:
``converter_factory``, set in the worker process before ``run_worker`` (the pool's children
inherit it), replaces the PDF converter (e.g. ``tests.fast_pdf.FastPDFConverter``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from celery.exceptions import InvalidTaskError, Reject, Retry
from celery.worker.strategy import default as default_strategy
from sqlalchemy import update
from sqlalchemy.exc import SQLAlchemyError

from d6_reports.config import Settings
from d6_reports.db import make_engine, make_session_factory
from d6_reports.errors import DatabaseUnavailableError
from d6_reports.generator import GENERATION_ID, GenerationOptions, GenerationResult, ReportGenerator
from d6_reports.models import ReportGeneration
from d6_reports.pdf import PDFConverter
from d6_reports.queue.app import TASK_NAME, ReportQueueApp
from d6_reports.service import ReportService

_log = logging.getLogger(__name__)

#: Builds the PDF converter of this process's generator (None: the real WeasyPrint one).
converter_factory: Callable[[], PDFConverter] | None = None

_service: ReportService | None = None
_service_pid: int | None = None


def register(app: ReportQueueApp) -> None:
    """Register the report task on ``app`` (``create_app`` does it for every app)."""
    app.task(
        name=TASK_NAME,
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
        max_retries=app.queue_settings.max_retries,
        ignore_result=app.queue_settings.result_backend is None,
        Strategy="d6_reports.queue.tasks:guarded_strategy",
    )(generate_queued_report)


def guarded_strategy(task: Any, app: Any, consumer: Any, **options: Any) -> Any:
    """Celery's own task strategy, behind a guard for messages it cannot even read.

    Celery turns a message into a request in the worker's parent, before any task code runs;
    a body or header of the wrong shape (not ``[args, kwargs, embed]``, an ETA or time limit
    that is not a number) raises there, and an exception other than ``InvalidTaskError`` is
    "unrecoverable": the worker stops, the message goes back to the queue, and every worker
    that takes it stops too. The guard drops such a message (rejected without requeue), logs
    that it did without any of its contents (a stranger's message may hold anything), and the
    worker goes on.
    """
    handle = default_strategy(task, app, consumer, **options)

    def task_message_handler(
        message: Any, body: Any, ack: Any, reject: Any, *args: Any, **kw: Any
    ) -> Any:
        try:
            _check_headers(message.headers)
            return handle(message, body, ack, reject, *args, **kw)
        except Exception as exc:
            _log.error(
                "unreadable report task message dropped (%s); its contents are not logged",
                type(exc).__qualname__,
            )
            try:
                message.reject(requeue=False)
            except Exception as reject_exc:  # already acknowledged, or the connection is gone
                _log.debug("rejecting the unreadable message failed", exc_info=reject_exc)
            return None

    return task_message_handler


def _check_headers(headers: object) -> None:
    """The headers Celery trusts before any task code runs, as ``enqueue`` sends them.

    A task id that is not a generation id (Celery logs it on receipt), and a time limit, ETA,
    expiry or retry count that is not what it should be (Celery fails on them later, in the
    pool, and stops the worker), make the message unreadable: ``InvalidTaskError``.
    """
    if not isinstance(headers, dict):
        raise InvalidTaskError("no headers")
    task_id = headers.get("id")
    if not (isinstance(task_id, str) and GENERATION_ID.fullmatch(task_id)):  # enqueue sends these
        raise InvalidTaskError("the task id is not a generation id")
    limits = headers.get("timelimit")
    if limits is not None and not (
        isinstance(limits, list | tuple)
        and len(limits) == 2
        and all(v is None or (_number(v) and v > 0) for v in limits)
    ):
        raise InvalidTaskError("the time limits are not two positive numbers")
    for name in ("eta", "expires"):
        value = headers.get(name)
        if value is not None:
            if not isinstance(value, str) or len(value) > 64:
                raise InvalidTaskError(f"the {name} is not a time")
            try:
                datetime.fromisoformat(value)
            except ValueError:
                raise InvalidTaskError(f"the {name} is not a time") from None
    retries = headers.get("retries", 0)
    if not (isinstance(retries, int) and not isinstance(retries, bool) and retries >= 0):
        raise InvalidTaskError("the retry count is not a count")


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def generate_queued_report(task: Any, *args: Any, **kwargs: Any) -> dict[str, object]:
    """The task body: generate the queued report named by the message, retry if infrastructure.

    ``*args``: a message that is not what ``enqueue`` sends is logged (without its contents)
    and dropped here, instead of failing in Celery's argument check with its values in a log.

    Returns ``{"generation_id", "status", "attempt", "already_finished", "error_type"}``.
    """
    request = _parse(args, kwargs)
    if request is None:
        return {"generation_id": None, "status": "rejected", "error_type": "malformed_message"}
    generation_id, business_id, options = request
    if task.request.id != generation_id:
        # enqueue sends every task with its generation id as task id; anything else is not ours
        # (and a task id is logged and traced: it must never be a stranger's text).
        _log.error("report task message dropped: its task id is not its generation id")
        return {"generation_id": None, "status": "rejected", "error_type": "malformed_message"}
    try:
        result = worker_service().generator.generate_report_sync(
            business_id, options, generation_id=generation_id, task_id=task.request.id
        )
    except (TypeError, ValueError):  # the generator refused the arguments: nothing was written
        _log.error("malformed report task message dropped (invalid ids or template name)")
        return {"generation_id": None, "status": "rejected", "error_type": "malformed_message"}
    if result.retryable and not result.success:
        _retry(task, result)
    _log_outcome(result)
    return summary(result)


def summary(result: GenerationResult) -> dict[str, object]:
    """What a task returns and a result backend may store: ids and the outcome only."""
    return {
        "generation_id": result.generation_id,
        "status": "completed" if result.success else "failed",
        "attempt": result.attempt,
        "already_finished": result.already_finished,
        "error_type": result.error_type,
    }


def worker_service() -> ReportService:
    """This process's service (engine, sessions, generator), built on first use.

    A service inherited through ``fork`` is never used: its engine's connections and its
    generator's threads belong to the parent.
    """
    global _service, _service_pid
    if _service is None or _service_pid != os.getpid():
        settings = Settings.from_env()
        engine = make_engine(settings.database_url)
        sessions = make_session_factory(engine)
        converter = converter_factory() if converter_factory is not None else None
        # One report at a time per process (prefetch 1): a few threads are plenty.
        generator = ReportGenerator(sessions, settings.reports_dir, converter=converter, workers=2)
        _service = ReportService(
            settings=settings, engine=engine, sessions=sessions, generator=generator
        )
        _service_pid = os.getpid()
    return _service


def close_worker_service() -> None:
    """Stop this process's generator threads and close its database connections."""
    global _service, _service_pid
    service, owner = _service, _service_pid
    _service = _service_pid = None
    if service is not None and owner == os.getpid():
        service.close()


def _parse(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[str, int, GenerationOptions] | None:
    """The message's arguments, or None (logged) when they are not what ``enqueue`` sends."""
    names = ("generation_id", "business_id", "template_name", "template_version")
    values = dict(zip(names, args, strict=False)) | kwargs
    generation_id = values.get("generation_id")
    business_id = values.get("business_id")
    template = values.get("template_name")
    version = values.get("template_version")
    well_formed = (
        len(args) <= len(names)
        and set(values) <= set(names)
        and isinstance(generation_id, str)
        and isinstance(business_id, int)
        and not isinstance(business_id, bool)
        and isinstance(template, str)
        and (version is None or isinstance(version, str))
    )
    if not well_formed:
        # Nothing of the message is logged: it is not ours, so it may hold anything.
        _log.error("malformed report task message dropped (arguments are not ids and names)")
        return None
    assert isinstance(generation_id, str) and isinstance(business_id, int)
    assert isinstance(template, str) and (version is None or isinstance(version, str))
    return generation_id, business_id, GenerationOptions(template, version)


def _retry(task: Any, result: GenerationResult) -> None:
    """Retry later, or give up when the retries are spent. Raises ``Retry`` to retry.

    Giving up is recorded on the row (failed, ``database_unavailable``); a row left pending
    would wait for ever with no task to run it. While the database cannot take even that
    write, the task keeps retrying at the longest delay instead: the message is never
    acknowledged for a report that nothing records.
    """
    settings = task.app.queue_settings
    retries = int(task.request.retries or 0)
    limit = settings.max_retries
    if retries >= settings.max_retries:
        if _record_give_up(result.generation_id, retries):
            _log.error(
                "report %s: %s; gave up after %d retries (recorded on its row)",
                result.generation_id,
                result.error_description,
                retries,
            )
            return
        limit = retries + 1
        _log.error(
            "report %s: %s; retries spent, but the database cannot record it: retrying",
            result.generation_id,
            result.error_description,
        )
    delay = settings.retry_delay(retries)
    _log.warning(
        "report %s attempt %s: %s; retry %d of %d in %.0f s",
        result.generation_id,
        result.attempt if result.attempt is not None else "-",
        result.error_description,
        retries + 1,
        limit,
        delay,
    )
    try:
        raise task.retry(countdown=delay, max_retries=limit)
    except Retry:
        raise
    except Exception as exc:
        # The retry could not be published (the broker is down too): hand the message back
        # instead of acknowledging a report nothing will run again.
        _log.error(
            "report %s: retry not published (%s); message returned to the queue",
            result.generation_id,
            type(exc).__qualname__,
        )
        raise Reject(reason="retry not published", requeue=True) from None


def _record_give_up(generation_id: str, retries: int) -> bool:
    """Mark the unfinished row failed (the database was unreachable); False if it cannot."""
    rows = ReportGeneration
    try:
        with worker_service().engine.begin() as conn:
            conn.execute(
                update(rows)
                .where(rows.id == generation_id)
                .where(rows.status.in_(("pending", "generating")))
                .values(
                    status="failed",
                    error_type=DatabaseUnavailableError.error_type,
                    error_message=(
                        f"gave up after {retries} retries: the report database could not be reached"
                    ),
                    completed_at=datetime.now(UTC),
                )
            )
    except SQLAlchemyError as exc:
        _log.debug("recording the give-up failed", exc_info=exc)
        return False
    return True


def _log_outcome(result: GenerationResult) -> None:
    attempt = result.attempt if result.attempt is not None else "-"
    if result.already_finished:
        _log.info(
            "report %s was already %s: nothing run",
            result.generation_id,
            "completed" if result.success else "finished (failed)",
        )
    elif result.success:
        _log.info("report %s completed (attempt %s)", result.generation_id, attempt)
    else:
        _log.warning(
            "report %s failed (attempt %s): %s",
            result.generation_id,
            attempt,
            result.error_description,
        )
