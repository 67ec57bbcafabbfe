"""The task queue's pure parts: settings from the environment, the Celery configuration they
make, the task's message parsing and result, the worker's argument checks and shared note.

No broker and no database: what needs them is in tests/integration/test_queue_cli.py (the
command line) and tests/queue/ (real workers)."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import NoReturn

import pytest
from celery.exceptions import Reject, Retry
from sqlalchemy import create_engine, insert, select

from d6_reports.bootstrap import TelemetryStartError
from d6_reports.generator import GenerationOptions, GenerationResult
from d6_reports.models import Base, ReportGeneration
from d6_reports.queue import tasks
from d6_reports.queue import worker as worker_module
from d6_reports.queue.app import TASK_NAME, celery_config, create_app
from d6_reports.queue.config import (
    DEFAULT_BROKER_URL,
    DEFAULT_QUEUE,
    QueueConfigError,
    QueueSettings,
    safe_url,
)
from d6_reports.queue.enqueue import enqueue_many
from d6_reports.queue.worker import _check, _SharedNote


def test_defaults_work_on_a_fresh_machine() -> None:
    settings = QueueSettings.from_env({})
    assert settings.broker_url == DEFAULT_BROKER_URL == "amqp://guest:guest@127.0.0.1:5672//"
    assert settings.result_backend is None
    assert settings.queue == DEFAULT_QUEUE == "d6-reports"
    assert settings.transport == "amqp"
    assert settings == QueueSettings()


def test_every_variable_is_read() -> None:
    settings = QueueSettings.from_env(
        {
            "D6_BROKER_URL": " redis://:secret@cache.internal:6380/2 ",
            "D6_RESULT_BACKEND": "redis://cache.internal:6380/3",
            "D6_QUEUE": "reports.eu-1",
            "D6_TASK_TIME_LIMIT": "120",
            "D6_TASK_MAX_RETRIES": "3",
            "D6_TASK_RETRY_DELAY": "0.5",
            "D6_TASK_RETRY_DELAY_MAX": "8",
            "D6_BROKER_CONNECT_TIMEOUT": "2.5",
            "D6_BROKER_STARTUP_WAIT": "0",
        }
    )
    assert settings == QueueSettings(
        broker_url="redis://:secret@cache.internal:6380/2",
        result_backend="redis://cache.internal:6380/3",
        queue="reports.eu-1",
        time_limit_s=120.0,
        max_retries=3,
        retry_delay_s=0.5,
        retry_delay_max_s=8.0,
        connect_timeout_s=2.5,
        startup_wait_s=0.0,
    )
    assert settings.transport == "redis"
    assert settings.safe_broker_url == "redis://:***@cache.internal:6380/2"


@pytest.mark.parametrize(
    "url",
    [
        "amqp://guest:guest@127.0.0.1:5672//",
        "amqps://user:pw@rabbit.example.com:5671/reports",
        "pyamqp://rabbit",
        "redis://127.0.0.1:6379/0",
        "rediss://:pw@redis.example.com:6380",
        "redis://localhost",
    ],
)
def test_supported_broker_urls(url: str) -> None:
    assert QueueSettings.from_env({"D6_BROKER_URL": url}).broker_url == url


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://rabbit:5672", "'http': not a supported broker transport"),
        ("memory://", "'memory': not a supported broker transport"),
        ("rabbit:5672", "not a supported broker transport"),
        ("127.0.0.1:5672", "not a supported broker transport"),
        ("amqp://", "names no host"),
        ("amqp://guest:hunter2@rabbit:99999//", "bad port"),
        ("amqp://guest:hunter2@rabbit:port//", "bad port"),
        ("amqp://guest:hunter2@rabbit:0//", "port 0"),
        ("redis://localhost/cache", "a Redis database is a number"),
        ("amqp://rab bit//", "is not valid"),
        ("amqp://rabbit\n//", "is not valid"),
        ("amqp://rabbit\udcff//", "is not valid"),
    ],
)
def test_bad_broker_urls_are_named_without_their_password(url: str, says: str) -> None:
    with pytest.raises(QueueConfigError) as caught:
        QueueSettings.from_env({"D6_BROKER_URL": url})
    message = str(caught.value)
    assert message.startswith("D6_BROKER_URL")
    assert says in message
    assert "hunter2" not in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("D6_TASK_TIME_LIMIT", "5"),
        ("D6_TASK_TIME_LIMIT", "nan"),
        ("D6_TASK_TIME_LIMIT", "inf"),
        ("D6_TASK_MAX_RETRIES", "-1"),
        ("D6_TASK_MAX_RETRIES", "2.5"),
        ("D6_TASK_MAX_RETRIES", "1001"),
        ("D6_TASK_RETRY_DELAY", "0"),
        ("D6_TASK_RETRY_DELAY", "soon"),
        ("D6_TASK_RETRY_DELAY_MAX", "1e9"),
        ("D6_BROKER_CONNECT_TIMEOUT", "0"),
        ("D6_BROKER_STARTUP_WAIT", "-1"),
    ],
)
def test_bad_numbers_name_the_variable_and_the_range(name: str, value: str) -> None:
    with pytest.raises(QueueConfigError) as caught:
        QueueSettings.from_env({name: value})
    message = str(caught.value)
    assert message.startswith(f"{name}=")
    assert "expected" in message and " from " in message and " to " in message


def test_the_longest_delay_cannot_be_below_the_first() -> None:
    with pytest.raises(QueueConfigError, match="D6_TASK_RETRY_DELAY_MAX=1 is below"):
        QueueSettings.from_env({"D6_TASK_RETRY_DELAY": "5", "D6_TASK_RETRY_DELAY_MAX": "1"})


@pytest.mark.parametrize("queue", ["", "   "])
def test_an_empty_queue_name_is_the_default(queue: str) -> None:
    assert QueueSettings.from_env({"D6_QUEUE": queue}).queue == DEFAULT_QUEUE


@pytest.mark.parametrize("queue", ["-reports", "two words", "x" * 201, "reports/eu", "ré"])
def test_bad_queue_names(queue: str) -> None:
    with pytest.raises(QueueConfigError, match=r"^D6_QUEUE="):
        QueueSettings.from_env({"D6_QUEUE": queue})


@pytest.mark.parametrize(
    "backend", ["redis://localhost/1", "rpc://", "db+postgresql+psycopg://u@h/db"]
)
def test_result_backends(backend: str) -> None:
    assert QueueSettings.from_env({"D6_RESULT_BACKEND": backend}).result_backend == backend


@pytest.mark.parametrize("backend", ["cache+memcached://h/", "postgresql://u:hunter2@h/db", "x"])
def test_bad_result_backends(backend: str) -> None:
    with pytest.raises(QueueConfigError, match=r"^D6_RESULT_BACKEND=") as caught:
        QueueSettings.from_env({"D6_RESULT_BACKEND": backend})
    assert "hunter2" not in str(caught.value)


def test_retry_delays_double_up_to_the_cap_and_outlast_a_database_restart() -> None:
    settings = QueueSettings()
    delays = [settings.retry_delay(n) for n in range(settings.max_retries)]
    assert delays[:5] == [2.0, 4.0, 8.0, 16.0, 32.0]
    assert delays[5:] == [60.0] * (settings.max_retries - 5)
    # A 30 s outage is outlasted many times over before the task gives up.
    assert sum(delays) > 10 * 30
    assert settings.retry_delay(10_000) == 60.0
    with pytest.raises(ValueError):
        settings.retry_delay(-1)


def test_safe_url() -> None:
    assert safe_url("amqp://guest:guest@h:5672//") == "amqp://guest:***@h:5672//"
    assert safe_url("redis://h:6379/0") == "redis://h:6379/0"
    assert safe_url("redis://:p%40ss@h/0") == "redis://:***@h/0"
    assert safe_url("amqp://u:p@h:bad//") == "amqp://u:***@h:bad//"


def test_celery_config_for_at_least_once_delivery() -> None:
    config = celery_config(QueueSettings(queue="q1"))
    assert config["task_acks_late"] is True
    assert config["task_reject_on_worker_lost"] is True
    assert config["worker_prefetch_multiplier"] == 1
    assert config["task_serializer"] == "json"
    assert config["accept_content"] == ["json"] == config["result_accept_content"]
    assert config["task_default_delivery_mode"] == "persistent"
    assert config["task_time_limit"] == 900.0
    assert config["task_default_queue"] == "q1"
    assert config["task_routes"][TASK_NAME]["queue"] == "q1"
    assert config["broker_transport_options"] == {"confirm_publish": True}
    assert config["result_backend"] is None and config["task_ignore_result"] is True
    # Publishing gives up quickly: one reconnect, half a second apart.
    assert config["task_publish_retry_policy"]["max_retries"] == 1


def test_redis_visibility_outlasts_the_longest_task() -> None:
    settings = QueueSettings(broker_url="redis://h/0", time_limit_s=7200)
    options = celery_config(settings)["broker_transport_options"]
    assert options["visibility_timeout"] >= 2 * 7200
    assert options["socket_connect_timeout"] == settings.connect_timeout_s
    assert "confirm_publish" not in options


def test_create_app_registers_the_task_and_connects_nowhere() -> None:
    app = create_app(QueueSettings(broker_url="amqp://nobody@203.0.113.1//", queue="q2"))
    try:
        task = app.tasks[TASK_NAME]
        assert task.acks_late and task.reject_on_worker_lost
        assert task.max_retries == QueueSettings().max_retries
        assert app.queue_settings.queue == "q2"
        assert app.conf.broker_url == "amqp://nobody@203.0.113.1//"
    finally:
        app.close()


def test_create_app_refuses_bad_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("D6_BROKER_URL", "kafka://broker")
    with pytest.raises(QueueConfigError):
        create_app()


# -- the task's message and result -------------------------------------------------------------

GID = "0d781f9c-f15e-4280-9ee0-540589557e64"


def test_a_message_is_ids_and_names() -> None:
    assert tasks._parse((GID, 3, "audit_report", None), {}) == (
        GID,
        3,
        GenerationOptions("audit_report", None),
    )
    assert tasks._parse((GID, 3), {"template_name": "summary", "template_version": "1.0.0"}) == (
        GID,
        3,
        GenerationOptions("summary", "1.0.0"),
    )


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((), {}),
        ((GID,), {}),
        ((GID, "3", "audit_report", None), {}),
        ((GID, True, "audit_report", None), {}),
        ((3, 3, "audit_report", None), {}),
        ((GID, 3, ["audit_report"], None), {}),
        ((GID, 3, "audit_report", 1), {}),
        ((GID, 3, "audit_report", None, "extra"), {}),
        ((GID, 3, "audit_report", None), {"secret": "customer data"}),
    ],
)
def test_a_malformed_message_is_dropped_without_its_contents(
    args: tuple[object, ...], kwargs: dict[str, object], caplog: pytest.LogCaptureFixture
) -> None:
    assert tasks._parse(args, kwargs) is None
    assert "malformed report task message" in caplog.text
    assert "customer data" not in caplog.text


def test_the_task_result_is_ids_and_the_outcome_only() -> None:
    result = GenerationResult(
        success=False,
        generation_id=GID,
        business_id=3,
        template_name="audit_report",
        template_version="2.0.1",
        error_type="TemplateRenderError",
        error_message="value 'Jane Doe <jane@example.com>' does not render",
        error_description="TemplateRenderError: the template could not be rendered",
        attempt=2,
    )
    summary = tasks.summary(result)
    assert summary == {
        "generation_id": GID,
        "status": "failed",
        "attempt": 2,
        "already_finished": False,
        "error_type": "TemplateRenderError",
    }
    assert "jane" not in repr(summary).lower()


def test_the_service_is_per_process(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A service inherited through fork (another pid) is rebuilt, never used."""
    monkeypatch.setenv("D6_DATABASE_URL", f"sqlite:///{tmp_path}/x.db")
    monkeypatch.setattr(tasks, "_service", None)
    monkeypatch.setattr(tasks, "_service_pid", None)
    first = tasks.worker_service()
    try:
        assert tasks.worker_service() is first
        monkeypatch.setattr(tasks, "_service_pid", os.getpid() + 1)
        second = tasks.worker_service()
        assert second is not first
    finally:
        tasks.close_worker_service()
        first.close()
    assert tasks._service is None


# -- enqueue's argument checks (before anything is written) ------------------------------------


@pytest.mark.parametrize(
    ("business_id", "error"),
    [(0, ValueError), (-3, ValueError), (2**31, ValueError), (True, TypeError), ("3", TypeError)],
)
def test_enqueue_checks_business_ids_first(business_id: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        enqueue_many([1, business_id])  # type: ignore[list-item]


@pytest.mark.parametrize(
    "options",
    [
        GenerationOptions("../etc", None),
        GenerationOptions("", None),
        GenerationOptions("audit_report", "1.0/../x"),
        GenerationOptions("audit_report", ""),
    ],
)
def test_enqueue_checks_templates_first(options: GenerationOptions) -> None:
    with pytest.raises(ValueError, match="invalid template"):
        enqueue_many([1], options)  # refused before the database or the broker is asked


# -- the worker ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("concurrency", "max_tasks", "node", "level", "says"),
    [
        (0, None, None, "INFO", "--concurrency"),
        (65, None, None, "INFO", "--concurrency"),
        (1, 0, None, "INFO", "--max-tasks-per-child"),
        (1, None, "", "INFO", "--hostname"),
        (1, None, "two words@h", "INFO", "--hostname"),
        (1, None, None, "LOUD", "--loglevel"),
    ],
)
def test_worker_arguments(
    concurrency: int, max_tasks: int | None, node: str | None, level: str, says: str
) -> None:
    with pytest.raises(ValueError, match=says):
        _check(concurrency, max_tasks, node, level)


def test_worker_arguments_that_are_fine() -> None:
    _check(2, None, "node1@%h", "debug")
    _check(64, 1, None, "WARNING")


def test_the_shared_note_crosses_fork() -> None:
    note = _SharedNote()
    try:
        assert note.failure() is None
        pid = os.fork()
        if pid == 0:  # the child: what a pool child does when its start-up fails
            note.record_failure("tracing cannot start: ünïcode reason")
            note.record_failure("a second failure is not kept")
            os._exit(0)
        os.waitpid(pid, 0)
        assert note.failure() == "tracing cannot start: ünïcode reason"
        assert note.first_warning() is True
        assert note.first_warning() is False
        assert note.record_failure("later") is False
    finally:
        note.close()


def test_a_long_reason_is_cut_not_overflowed() -> None:
    note = _SharedNote()
    try:
        note.record_failure("x" * 5000)
        failure = note.failure()
        assert failure is not None and 900 < len(failure) < 1024
    finally:
        note.close()


# -- the task body, with a stand-in generator ----------------------------------------------------


class _Request:
    def __init__(self, retries: int) -> None:
        self.id = GID
        self.retries = retries


class _Task:
    """What the task body uses of a bound Celery task."""

    def __init__(self, retries: int = 0, *, publish_fails: bool = False) -> None:
        self.request = _Request(retries)
        self.app = create_app(QueueSettings(max_retries=3))
        self.retried: list[tuple[float, int]] = []
        self._publish_fails = publish_fails

    def retry(self, *, countdown: float, max_retries: int) -> Exception:
        if self._publish_fails:
            raise ConnectionRefusedError("broker down")
        self.retried.append((countdown, max_retries))
        raise Retry("retry", when=countdown)


class _Generator:
    def __init__(self, result: GenerationResult | Exception) -> None:
        self.result = result
        self.calls: list[dict[str, object]] = []

    def generate_report_sync(
        self, business_id: int, options: GenerationOptions, **keywords: object
    ) -> GenerationResult:
        self.calls.append({"business_id": business_id, "options": options, **keywords})
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


def _result(**values: object) -> GenerationResult:
    fields: dict[str, object] = {
        "success": True,
        "generation_id": GID,
        "business_id": 3,
        "template_name": "audit_report",
        "template_version": "2.0.1",
        "attempt": 1,
    }
    fields.update(values)
    return GenerationResult(**fields)  # type: ignore[arg-type]


@pytest.fixture
def generator(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., _Generator]]:
    engine = create_engine("sqlite://")  # the report table, for what the task records itself
    Base.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            insert(ReportGeneration).values(
                id=GID,
                business_id=3,
                template_name="audit_report",
                status="pending",
                attempts=0,
                requested_at=datetime.now(UTC),
            )
        )

    def install(result: GenerationResult | Exception) -> _Generator:
        stub = _Generator(result)
        service = SimpleNamespace(generator=stub, engine=engine)
        monkeypatch.setattr(tasks, "worker_service", lambda: service)
        return stub

    yield install
    engine.dispose()


UNAVAILABLE = {
    "success": False,
    "error_type": "database_unavailable",
    "error_description": "database_unavailable: the report database could not be reached",
    "retryable": True,
}


def test_the_task_runs_the_queued_generation(generator: Callable[..., _Generator]) -> None:
    stub = generator(_result())
    task = _Task()
    outcome = tasks.generate_queued_report(task, GID, 3, "audit_report", None)
    assert outcome["status"] == "completed" and outcome["generation_id"] == GID
    assert stub.calls == [
        {
            "business_id": 3,
            "options": GenerationOptions("audit_report", None),
            "generation_id": GID,
            "task_id": GID,
        }
    ]
    assert task.retried == []


def test_a_database_outage_is_retried_with_backoff(generator: Callable[..., _Generator]) -> None:
    generator(_result(**UNAVAILABLE))
    task = _Task(retries=2)
    with pytest.raises(Retry):
        tasks.generate_queued_report(task, GID, 3, "audit_report", None)
    assert task.retried == [(8.0, 3)]


def test_retries_end(
    generator: Callable[..., _Generator], caplog: pytest.LogCaptureFixture
) -> None:
    generator(_result(**UNAVAILABLE))
    outcome = tasks.generate_queued_report(_Task(retries=3), GID, 3, "audit_report", None)
    assert outcome["status"] == "failed" and outcome["error_type"] == "database_unavailable"
    assert "gave up after 3 retries (recorded on its row)" in caplog.text
    engine = tasks.worker_service().engine
    with engine.connect() as conn:
        row = conn.execute(select(ReportGeneration.status, ReportGeneration.error_type)).one()
    assert tuple(row) == ("failed", "database_unavailable")  # never left pending


def test_a_retry_that_cannot_be_published_goes_back_to_the_queue(
    generator: Callable[..., _Generator],
) -> None:
    generator(_result(**UNAVAILABLE))
    with pytest.raises(Reject) as caught:
        tasks.generate_queued_report(_Task(publish_fails=True), GID, 3, "audit_report", None)
    assert caught.value.requeue is True


def test_a_report_failure_of_its_own_is_final(generator: Callable[..., _Generator]) -> None:
    generator(_result(success=False, error_type="BusinessNotFound", retryable=False))
    task = _Task()
    outcome = tasks.generate_queued_report(task, GID, 3, "audit_report", None)
    assert outcome["status"] == "failed" and task.retried == []


def test_an_already_finished_generation_is_not_run_again(
    generator: Callable[..., _Generator], caplog: pytest.LogCaptureFixture
) -> None:
    generator(_result(already_finished=True, attempt=1))
    with caplog.at_level("INFO"):
        outcome = tasks.generate_queued_report(_Task(), GID, 3, "audit_report", None)
    assert outcome["already_finished"] is True
    assert "was already completed" in caplog.text


@pytest.mark.parametrize("refusal", [ValueError("invalid generation id 'x'"), TypeError("no")])
def test_arguments_the_generator_refuses_are_dropped(
    refusal: Exception, generator: Callable[..., _Generator], caplog: pytest.LogCaptureFixture
) -> None:
    generator(refusal)
    outcome = tasks.generate_queued_report(_Task(), "x", 3, "audit_report", None)
    assert outcome == {
        "generation_id": None,
        "status": "rejected",
        "error_type": "malformed_message",
    }
    assert "'x'" not in caplog.text


def test_a_malformed_message_never_reaches_the_generator(
    generator: Callable[..., _Generator],
) -> None:
    stub = generator(_result())
    assert tasks.generate_queued_report(_Task(), "only one argument")["status"] == "rejected"
    assert stub.calls == []


# -- the pool child's start-up and shutdown ----------------------------------------------------


class _Exited(Exception):
    pass


def _exit(status: int) -> NoReturn:
    raise _Exited(status)


@pytest.mark.parametrize(
    ("failure", "says"),
    [
        (TelemetryStartError("tracing cannot start: bad sampler"), "bad sampler"),
        (
            ValueError("D6_DATABASE_URL names no driver\nsecond line"),
            "the report service cannot start: ValueError: D6_DATABASE_URL names no driver",
        ),
    ],
)
def test_a_child_that_cannot_start_stops_the_worker_and_takes_nothing(
    failure: Exception, says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    killed: list[tuple[int, int]] = []
    supervision = worker_module._Supervision(parent_pid=424242)
    try:

        def start(**_kwargs: object) -> None:
            if isinstance(failure, TelemetryStartError):
                raise failure

        def service() -> None:
            raise failure

        monkeypatch.setattr(worker_module, "start_telemetry", start)
        monkeypatch.setattr(tasks, "worker_service", service)
        monkeypatch.setattr(worker_module.os, "kill", lambda pid, sig: killed.append((pid, sig)))
        monkeypatch.setattr(worker_module.os, "_exit", _exit)
        with pytest.raises(_Exited) as exited:
            supervision.on_child_init()
        assert exited.value.args == (worker_module.CHILD_START_FAILED,)
        assert killed == [(424242, signal.SIGTERM)]
        failure_text = supervision.note.failure()
        assert failure_text is not None and says in failure_text
        assert "second line" not in failure_text
        with pytest.raises(_Exited):  # a second child: the parent is not signalled twice
            supervision.on_child_init()
        assert len(killed) == 1
    finally:
        supervision.note.close()


def test_a_child_that_starts_takes_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    warnings: list[str] = []
    supervision = worker_module._Supervision(parent_pid=424242)
    try:

        def start(
            *, warn: Callable[[str], None], service_name: str, unused_instrumentations: object
        ) -> None:
            assert service_name == worker_module.WORKER_SERVICE_NAME
            assert unused_instrumentations == ("fastapi",)  # Celery spans are wanted here
            warn("lineage is off (ENABLE_REPORT_LINEAGE=false)")
            warnings.append("called")

        monkeypatch.setattr(worker_module, "start_telemetry", start)
        monkeypatch.setattr(tasks, "worker_service", lambda: None)
        monkeypatch.setattr(worker_module.os, "_exit", _exit)
        supervision.on_child_init()
        supervision.on_child_init()  # a recycled child: its warning is not repeated
        assert warnings == ["called", "called"]
        assert supervision.note.failure() is None
    finally:
        supervision.note.close()


def test_the_child_shutdown_closes_and_flushes_within_its_bound(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(tasks, "close_worker_service", lambda: calls.append("close"))
    monkeypatch.setattr(worker_module, "flush_telemetry", lambda: calls.append("flush"))
    supervision = worker_module._Supervision(parent_pid=1)
    try:
        supervision.on_child_shutdown()
        assert calls == ["close", "flush"]
        release = threading.Event()
        monkeypatch.setattr(worker_module, "flush_telemetry", release.wait)
        monkeypatch.setattr(worker_module, "CHILD_FLUSH_TIMEOUT_S", 0.05)
        supervision.on_child_shutdown()
        assert "not flushed within" in caplog.text
        release.set()
    finally:
        supervision.note.close()


def test_the_pdf_libraries_are_quiet_below_debug() -> None:
    for name in worker_module._CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)
    worker_module._quiet_libraries("DEBUG")
    assert logging.getLogger("fontTools").level == logging.NOTSET
    worker_module._quiet_libraries("INFO")
    assert logging.getLogger("fontTools").level == logging.WARNING
    assert logging.getLogger("weasyprint.progress").level == logging.WARNING


def test_the_parent_only_imports_telemetry_it_never_starts_it() -> None:
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    worker_module._preload_telemetry_modules()
    assert trace.get_tracer_provider() is provider


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("D6_TASK_MAX_RETRIES", "\uff11\uff12", "is not valid"),  # full-width digits
        ("D6_TASK_MAX_RETRIES", "1_0", "is not valid"),
        ("D6_QUEUE", "amq.reports", "reserved by RabbitMQ"),
        ("D6_BROKER_URL", "amqp://a:first@h1//;amqp://b:second@h2//", "failover list"),
        ("D6_BROKER_URL", "amqp://a:first@h1//,amqp://b:second@h2//", "failover list"),
    ],
)
def test_settings_a_user_might_try_are_refused_in_one_line(
    variable: str, value: str, says: str
) -> None:
    with pytest.raises(QueueConfigError, match=says) as refused:
        QueueSettings.from_env({variable: value})
    message = str(refused.value)
    assert "first" not in message and "second" not in message  # no password of any URL
    assert "\n" not in message


def test_an_abandoned_row_is_described_in_plain_words() -> None:
    from d6_reports.errors import describe

    assert describe("abandoned") == "abandoned: the process died before the report ended"


@pytest.mark.parametrize(
    "backend", ["db+nope://x", "db+mssql+pymssql://u:secret@h/db", "db+not a url"]
)
def test_a_database_result_backend_is_checked_at_start(backend: str) -> None:
    with pytest.raises(QueueConfigError, match="D6_RESULT_BACKEND") as refused:
        QueueSettings.from_env({"D6_RESULT_BACKEND": backend})
    assert "secret" not in str(refused.value)


def test_a_database_result_backend_with_its_driver_is_taken() -> None:
    url = "db+postgresql+psycopg://u@127.0.0.1/db"
    assert QueueSettings.from_env({"D6_RESULT_BACKEND": url}).result_backend == url
