"""Enqueueing reports: the generation id comes back at once, the report is made by a worker.

``enqueue_report`` writes the ``report_generation`` row (status ``pending``, attempts 0) in the
caller's process, then publishes the task with ``task_id`` = the generation id. The row comes
first, so a worker never receives a task whose row does not exist yet, and a caller (a web
request) can answer with the id before any worker has seen the task. The row is a Core
``INSERT``: no ORM event fires, so it is not stamped with the caller's trace; the attempt that
runs it stamps it with the report's own trace (the caller's trace travels in the message
headers, through the Celery instrumentation, and is recorded as the report's caller trace).

When the broker refuses the message, the rows of the reports that were not sent are deleted
again before ``QueueUnavailableError`` is raised: a ``pending`` row that no task will ever run
would wait forever and count as a report without lineage.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table, delete, insert
from sqlalchemy.orm import Session, sessionmaker

from d6_reports.config import Settings
from d6_reports.db import make_engine, make_session_factory
from d6_reports.generator import GenerationOptions, validate_request
from d6_reports.models import GenerationStatus, ReportGeneration
from d6_reports.queue.app import (
    BROKER_ERRORS,
    PUBLISH_RETRY_POLICY,
    TASK_NAME,
    ReportQueueApp,
    default_app,
)

_log = logging.getLogger(__name__)
#: Rows inserted, and tasks published, per transaction / producer checkout.
CHUNK = 500
_TABLE: Table = ReportGeneration.__table__  # type: ignore[assignment]


class QueueUnavailableError(RuntimeError):
    """The broker could not be reached or refused the message; the message is one line.

    ``enqueued`` lists the generation ids that were sent before the failure (they will run).
    """

    def __init__(self, message: str, enqueued: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.enqueued = list(enqueued)


def enqueue_report(
    business_id: int,
    options: GenerationOptions | None = None,
    *,
    sessions: sessionmaker[Session] | None = None,
    app: ReportQueueApp | None = None,
) -> str:
    """Queue one report; returns its generation id (the ``ReportGeneration`` row's id).

    ``sessions``: the report database (default: ``D6_DATABASE_URL``); ``app``: the Celery app
    (default: from the ``D6_*`` queue variables). Raises ``TypeError``/``ValueError`` for a bad
    business id or template, ``QueueConfigError`` for bad queue settings and
    ``QueueUnavailableError`` when the broker does not take the task.
    """
    return enqueue_many([business_id], options, sessions=sessions, app=app)[0]


def enqueue_many(
    business_ids: Iterable[int],
    options: GenerationOptions | None = None,
    *,
    sessions: sessionmaker[Session] | None = None,
    app: ReportQueueApp | None = None,
    on_enqueued: Callable[[str], None] | None = None,
) -> list[str]:
    """Queue one report per business id, in order; returns their generation ids.

    Every argument is checked before anything is written. ``on_enqueued`` is called with each
    generation id once its task is published (a progress bar). On a broker failure the
    reports already published stay queued (``QueueUnavailableError.enqueued``).
    """
    ids = list(business_ids)
    options = options or GenerationOptions()
    for business_id in ids:  # what the generator would refuse, refused before any row exists
        validate_request(business_id, options)
    sessions = sessions or _default_sessions(Settings.from_env().database_url)
    app = app or default_app()
    sent: list[str] = []
    for start in range(0, len(ids), CHUNK):
        rows = _pending_rows(ids[start : start + CHUNK], options)
        with sessions() as session:
            session.execute(insert(_TABLE), rows)
            session.commit()
        try:
            _publish(app, rows, sent, on_enqueued)
        except Exception as exc:
            published = set(sent)
            _forget(sessions, [str(r["id"]) for r in rows if r["id"] not in published])
            if not isinstance(exc, BROKER_ERRORS):
                raise
            raise QueueUnavailableError(
                f"the broker at {app.queue_settings.safe_broker_url} did not take the task "
                f"({_reason(exc)}); {len(sent)} of {len(ids)} reports were queued",
                sent,
            ) from exc
    return sent


def _publish(
    app: ReportQueueApp,
    rows: list[dict[str, Any]],
    sent: list[str],
    on_enqueued: Callable[[str], None] | None,
) -> None:
    queue = app.queue_settings.queue
    with app.producer_or_acquire() as producer:
        for row in rows:
            generation_id = str(row["id"])
            app.send_task(
                TASK_NAME,
                args=[
                    generation_id,
                    row["business_id"],
                    row["template_name"],
                    row["template_version"],
                ],
                task_id=generation_id,
                queue=queue,
                routing_key=queue,
                producer=producer,
                retry=True,
                retry_policy=dict(PUBLISH_RETRY_POLICY),
            )
            sent.append(generation_id)
            if on_enqueued is not None:
                on_enqueued(generation_id)


def _pending_rows(business_ids: list[int], options: GenerationOptions) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    return [
        {
            "id": str(uuid.uuid4()),
            "business_id": business_id,
            "template_name": options.template_name,
            "template_version": options.template_version,
            "status": GenerationStatus.PENDING.value,
            "attempts": 0,
            "requested_at": now,
        }
        for business_id in business_ids
    ]


def _forget(sessions: sessionmaker[Session], generation_ids: list[str]) -> None:
    """Delete the pending rows of reports that were never published (best effort: the
    broker's error is the one the caller must see)."""
    if not generation_ids:
        return
    try:
        with sessions() as session:
            session.execute(
                delete(_TABLE)
                .where(_TABLE.c.id.in_(generation_ids))
                .where(_TABLE.c.status == GenerationStatus.PENDING.value)
            )
            session.commit()
    except Exception as exc:
        _log.error(
            "%d pending report rows of unsent tasks could not be deleted (%s); they stay pending",
            len(generation_ids),
            type(exc).__qualname__,
        )


@functools.cache
def _default_sessions(database_url: str) -> sessionmaker[Session]:
    """One engine per database URL and process, for callers that pass no ``sessions``."""
    return make_session_factory(make_engine(database_url))


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200] if text else type(exc).__qualname__
