"""Reports on a task queue: enqueue in the caller's process, generate on Celery workers.

``enqueue_report(business_id)`` writes the generation's row (``pending``) and publishes a task
whose id is the generation id; it returns that id at once. ``d6-reports worker`` (``run_worker``)
runs a Celery prefork worker whose children each bring OpenTelemetry and lineage up themselves
and generate with the same ``ReportGenerator``, claiming the row for each attempt so a report
whose worker died is resumed and completed once. ``generation_state`` reads where a report is.

Modules: ``config`` (settings from ``D6_*`` variables), ``app`` (the Celery app), ``enqueue``,
``tasks`` (the task), ``worker`` (the worker and its children's start-up), ``adoption`` (the
parent's outbox flush), ``status``, ``commands`` (the CLI). docs/scaling.md has the design.
"""

from d6_reports.queue.app import TASK_NAME, ReportQueueApp, create_app
from d6_reports.queue.config import QueueConfigError, QueueSettings
from d6_reports.queue.enqueue import QueueUnavailableError, enqueue_many, enqueue_report
from d6_reports.queue.status import (
    GenerationLookupError,
    GenerationState,
    LineageAttempt,
    generation_state,
)

__all__ = [
    "TASK_NAME",
    "GenerationLookupError",
    "GenerationState",
    "LineageAttempt",
    "QueueConfigError",
    "QueueSettings",
    "QueueUnavailableError",
    "ReportQueueApp",
    "create_app",
    "enqueue_many",
    "enqueue_report",
    "generation_state",
]
