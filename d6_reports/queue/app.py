"""The Celery application of the report service, configured for at-least-once delivery.

Every choice here serves one promise: a report that was enqueued is generated, once, whatever
happens to the process running it.

- ``task_acks_late`` + ``task_reject_on_worker_lost``: a message is acknowledged only after its
  task returned; if the worker process dies mid-report (SIGKILL, out of memory) the message
  goes back to the queue and another process resumes the same generation row (the generator
  claims it for a new attempt, see ``ReportGenerator.generate_report(generation_id=...)``).
- ``worker_prefetch_multiplier=1``: a process holds one unacknowledged report at a time, so a
  dying process strands (and a slow one delays) at most one.
- Persistent messages on a durable queue, with publisher confirms on RabbitMQ: an enqueued
  report survives a broker restart, and ``enqueue`` returns only once the broker has it.
- JSON only: a message is ids and names, never a pickled object (a queue is not a place to
  execute what a message says).
- No result backend by default: a report's outcome is its ``report_generation`` row.
- Bounded connection attempts when publishing, so a command whose broker is down says so in
  seconds instead of hanging.

The task itself (``d6_reports.queue.tasks``) is registered on every app made here.
"""

from __future__ import annotations

import functools
from typing import Any

from amqp.exceptions import AMQPError
from celery import Celery
from kombu.exceptions import KombuError
from redis.exceptions import RedisError

from d6_reports.queue.config import QueueSettings

APP_NAME = "d6_reports"
#: The registered name of the report task (what a message names; keep it stable).
TASK_NAME = "d6_reports.generate_report"
#: Retries of a single publish when the broker connection fails: one reconnect, then the
#: error (``enqueue`` is interactive; the worker reconnects by itself).
PUBLISH_RETRY_POLICY: dict[str, float] = {
    "max_retries": 1,
    "interval_start": 0.0,
    "interval_step": 0.5,
    "interval_max": 0.5,
}


#: What a broker that is down, unreachable or refusing us raises (kombu wraps most of it, not
#: all: py-amqp's refused login or unknown vhost, say, come through as they are).
BROKER_ERRORS: tuple[type[Exception], ...] = (KombuError, OSError, AMQPError, RedisError)


class ReportQueueApp(Celery):
    """A ``Celery`` app that also carries the ``QueueSettings`` it was made from."""

    queue_settings: QueueSettings


def create_app(settings: QueueSettings | None = None) -> ReportQueueApp:
    """A new Celery app for ``settings`` (default: from the environment), task registered.

    Raises ``QueueConfigError`` for a bad setting. Making the app connects to nothing.
    """
    settings = settings or QueueSettings.from_env()
    app = ReportQueueApp(APP_NAME, set_as_current=False)
    app.queue_settings = settings
    app.conf.update(celery_config(settings))
    from d6_reports.queue import tasks

    tasks.register(app)
    return app


@functools.cache
def default_app() -> ReportQueueApp:
    """The process's app from the environment, made on first use (``enqueue_report(app=None)``)."""
    return create_app()


def celery_config(settings: QueueSettings) -> dict[str, Any]:
    """The Celery settings for ``settings`` (a plain mapping: tested without a broker)."""
    transport_options: dict[str, Any] = {}
    if settings.transport == "amqp":
        transport_options["confirm_publish"] = True
    else:
        transport_options["socket_connect_timeout"] = settings.connect_timeout_s
        # Redis has no acknowledgements: an unacknowledged message returns to the queue after
        # this long. It must outlast the longest task plus its retry delay, or a running report
        # would be handed to a second worker.
        transport_options["visibility_timeout"] = max(
            3600.0, 2 * (settings.time_limit_s + settings.retry_delay_max_s)
        )
    return {
        "broker_url": settings.broker_url,
        "broker_connection_timeout": settings.connect_timeout_s,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": transport_options,
        "result_backend": settings.result_backend,
        "task_ignore_result": settings.result_backend is None,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "task_time_limit": settings.time_limit_s,
        "task_default_queue": settings.queue,
        "task_default_routing_key": settings.queue,
        "task_create_missing_queues": True,
        "task_routes": {TASK_NAME: {"queue": settings.queue, "routing_key": settings.queue}},
        "task_default_delivery_mode": "persistent",
        "task_publish_retry": True,
        "task_publish_retry_policy": dict(PUBLISH_RETRY_POLICY),
        # A running report whose broker connection drops keeps running: the broker redelivers
        # its message, and the generator's claim lets only one attempt complete the row.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "worker_hijack_root_logger": True,
        "worker_redirect_stdouts": False,
        "enable_utc": True,
    }
