"""The queue commands (``enqueue``, ``enqueue-all``, ``worker``, ``status``) under bad input, a
bad or unreachable broker and an unmigrated database: one ``error:`` line, a non-zero exit, no
traceback, no password, and no ``pending`` row left behind for a task that was never sent.

With the real broker (RabbitMQ, and Redis: ``D6_TEST_BROKER_URL``/``D6_TEST_REDIS_URL``,
default the local servers) ``enqueue`` is checked down to the message: its task id is the
generation id and it carries ids and names only. Without a broker those tests skip, unless
``D6_TEST_REQUIRE_BROKER=1`` (CI). Real workers are tested in tests/queue/.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, create_engine, func, insert, select
from typer.testing import CliRunner

from d6_reports import db
from d6_reports.cli import app as d6_app
from d6_reports.models import ReportGeneration
from d6_reports.queue.app import TASK_NAME, create_app
from d6_reports.queue.config import QueueSettings
from d6_reports.seed import seed_demo
from otel_lineage.delivery.schema import report_lineage
from tests.integration.test_cli_bad_input import assert_one_line_error, insert_lineage

runner = CliRunner()
AMQP_URL = os.environ.get("D6_TEST_BROKER_URL") or "amqp://guest:guest@127.0.0.1:5672//"
REDIS_URL = os.environ.get("D6_TEST_REDIS_URL") or "redis://127.0.0.1:6379/0"
REQUIRE_BROKER = os.environ.get("D6_TEST_REQUIRE_BROKER") == "1"
SECRET = "hunter2"
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _rows(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        table = ReportGeneration.__table__
        return [dict(r) for r in conn.execute(select(table)).mappings()]


def _broker(url: str) -> str:
    app = create_app(QueueSettings(broker_url=url, queue="d6-test-probe"))
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=5)
    except Exception as exc:
        reason = f"broker {url} unreachable: {type(exc).__name__}"
        if REQUIRE_BROKER:
            pytest.fail(f"{reason} (D6_TEST_REQUIRE_BROKER=1)")
        pytest.skip(reason)
    finally:
        app.close()
    return url


@pytest.fixture
def env(
    db_url: str, engine: Engine, business_ids: list[int], monkeypatch: pytest.MonkeyPatch
) -> Engine:
    """A migrated report database with six businesses; the queue and broker left to tests."""
    monkeypatch.setenv("D6_DATABASE_URL", db_url)
    monkeypatch.delenv("OTEL_LINEAGE_DATABASE_URL", raising=False)
    monkeypatch.setenv("D6_QUEUE", f"d6-test-{uuid.uuid4().hex[:10]}")
    monkeypatch.setenv("D6_BROKER_STARTUP_WAIT", "0")
    for name in ("D6_BROKER_URL", "D6_RESULT_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    return engine


@pytest.fixture
def sqlite_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    """``env`` on SQLite only, for the slow tests that gain nothing from a second backend."""
    url = f"sqlite:///{tmp_path / 'reports.db'}"
    db.upgrade(url)
    engine = db.make_engine(url)
    with db.make_session_factory(engine)() as session:
        seed_demo(session, count=2)
    monkeypatch.setenv("D6_DATABASE_URL", url)
    monkeypatch.delenv("OTEL_LINEAGE_DATABASE_URL", raising=False)
    monkeypatch.setenv("D6_QUEUE", f"d6-test-{uuid.uuid4().hex[:10]}")
    monkeypatch.setenv("D6_BROKER_STARTUP_WAIT", "0")
    for name in ("D6_BROKER_URL", "D6_RESULT_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    yield engine
    engine.dispose()


def _down_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("D6_BROKER_URL", f"amqp://guest:{SECRET}@127.0.0.1:{_free_port()}//")


# -- bad input: nothing is written ------------------------------------------------------------

ENQUEUE_USAGE = [
    ["enqueue"],
    ["enqueue", "--business-id", "0"],
    ["enqueue", "--business-id", "-1"],
    ["enqueue", "--business-id", "abc"],
    ["enqueue", "--business-id", str(2**31)],
    ["enqueue", "--business-id", "99999999999999999999"],
    ["enqueue", "--business-id", "1", "--template", "no_such_template"],
    ["enqueue", "--business-id", "1", "--template", "../etc"],
    ["enqueue", "--business-id", "1", "--version", "9.9.9"],
    ["enqueue", "--business-id", "1", "--template", "x" * 300],
    ["enqueue", "--business-id", "1", "--template", "[/][bold]x"],
    ["enqueue-all", "--template", "no_such_template"],
    ["enqueue-all", "--version", "0.0.0-nope"],
]


@pytest.mark.parametrize("args", ENQUEUE_USAGE, ids=lambda a: " ".join(a)[:60])
def test_bad_enqueue_arguments(args: list[str], sqlite_env: Engine) -> None:
    result = runner.invoke(d6_app, args)
    assert_one_line_error(result, 2)
    assert _rows(sqlite_env) == []


def test_an_unknown_business_is_refused_before_anything_is_queued(sqlite_env: Engine) -> None:
    result = runner.invoke(d6_app, ["enqueue", "--business-id", "123456"])
    line = assert_one_line_error(result, 1)
    assert "business 123456 does not exist" in line
    assert _rows(sqlite_env) == []


@pytest.mark.parametrize(
    "url",
    [
        "http://rabbit:5672",
        f"amqp://guest:{SECRET}@rabbit:99999//",
        f"redis://:{SECRET}@cache/name",
        "memory://",
    ],
)
@pytest.mark.parametrize("command", ["enqueue", "enqueue-all", "worker"])
def test_a_bad_broker_url(
    url: str, command: str, sqlite_env: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("D6_BROKER_URL", url)
    args = [command, "--business-id", "1"] if command == "enqueue" else [command]
    line = assert_one_line_error(runner.invoke(d6_app, args), 2)
    assert line.startswith("error: D6_BROKER_URL")
    assert SECRET not in line
    assert _rows(sqlite_env) == []


@pytest.mark.parametrize(
    ("name", "value"),
    [("D6_QUEUE", "two words"), ("D6_TASK_MAX_RETRIES", "-1"), ("D6_RESULT_BACKEND", "x")],
)
def test_bad_queue_settings(
    name: str, value: str, sqlite_env: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(name, value)
    line = assert_one_line_error(runner.invoke(d6_app, ["enqueue", "--business-id", "1"]), 2)
    assert line.startswith(f"error: {name}=")


def test_the_broker_down_is_one_line_fast_and_leaves_no_row(
    env: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    _down_broker(monkeypatch)
    for args in (["enqueue", "--business-id", "1"], ["enqueue-all"]):
        started = time.monotonic()
        line = assert_one_line_error(runner.invoke(d6_app, args), 1)
        assert time.monotonic() - started < 15
        assert "did not take the task" in line and "Connection refused" in line
        assert "guest:***@127.0.0.1" in line and SECRET not in line
        assert "0 of" in line
        assert _rows(env) == []  # the pending rows of tasks never sent are deleted again


def test_an_unmigrated_database(empty_db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("D6_DATABASE_URL", empty_db_url)
    for args in (["enqueue", "--business-id", "1"], ["enqueue-all"], ["status", "0d78"]):
        line = assert_one_line_error(runner.invoke(d6_app, args), 2)
        assert "d6-reports db upgrade" in line


# -- worker: refused before Celery starts -----------------------------------------------------

WORKER_USAGE = [
    ["worker", "--concurrency", "0"],
    ["worker", "--concurrency", "65"],
    ["worker", "--concurrency", "two"],
    ["worker", "--max-tasks-per-child", "0"],
    ["worker", "--loglevel", "LOUD"],
    ["worker", "--hostname", "two words"],
    ["worker", "--queues", " , "],
    ["worker", "--queues", "ok,no/slash"],
]


@pytest.mark.parametrize("args", WORKER_USAGE, ids=lambda a: " ".join(a))
def test_bad_worker_arguments(args: list[str], sqlite_env: Engine) -> None:
    assert_one_line_error(runner.invoke(d6_app, args), 2)


def test_a_worker_without_its_broker_exits_with_one_line(
    sqlite_env: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    _down_broker(monkeypatch)
    started = time.monotonic()
    line = assert_one_line_error(runner.invoke(d6_app, ["worker", "--concurrency", "1"]), 1)
    assert time.monotonic() - started < 15
    assert "cannot be reached" in line and "D6_BROKER_STARTUP_WAIT" in line
    assert SECRET not in line


# -- status ------------------------------------------------------------------------------------

GID = "0d781f9c-f15e-4280-9ee0-540589557e64"


def _insert_generation(engine: Engine, generation_id: str, **values: object) -> None:
    row: dict[str, object] = {
        "id": generation_id,
        "business_id": 1,
        "template_name": "audit_report",
        "template_version": None,
        "status": "pending",
        "attempts": 0,
        "requested_at": datetime(2026, 12, 1, tzinfo=UTC),
    }
    row.update(values)
    with engine.begin() as conn:
        conn.execute(insert(ReportGeneration.__table__).values(**row))


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("not-an-id", 2),
        ("0D78 ", 1),  # case and spaces are forgiven: then simply unknown
        ("x" * 40, 2),
        ("0d78%", 2),
        ("ffffffff", 1),
        ("0d781f9c-f15e-4280-9ee0-540589557e64-0", 2),
    ],
)
def test_status_of_bad_or_unknown_ids(text: str, code: int, env: Engine) -> None:
    line = assert_one_line_error(runner.invoke(d6_app, ["status", text]), code)
    if code == 1:
        assert "no report generation" in line


def test_status_of_an_ambiguous_prefix(env: Engine) -> None:
    _insert_generation(env, "0d781f9c-0000-4000-8000-000000000001")
    _insert_generation(env, "0d781f9c-0000-4000-8000-000000000002")
    line = assert_one_line_error(runner.invoke(d6_app, ["status", "0d78"]), 1)
    assert "matches 2 generations" in line


def test_status_of_a_pending_report(env: Engine) -> None:
    _insert_generation(env, GID)
    result = runner.invoke(d6_app, ["status", GID[:8]])
    assert result.exit_code == 0, result.output
    assert f"generation {GID}" in result.stdout
    assert "status:   pending (attempts: 0)" in result.stdout
    assert "lineage:  not yet" in result.stdout
    document = orjson.loads(runner.invoke(d6_app, ["status", GID, "--json"]).stdout)
    assert document["status"] == "pending" and document["attempts"] == 0
    assert document["lineage"] == [] and document["lineage_present"] is False


def test_status_of_a_redelivered_report_names_its_attempts(env: Engine) -> None:
    done_trace, dead_trace = uuid.uuid4().hex, uuid.uuid4().hex
    _insert_generation(
        env,
        GID,
        status="completed",
        attempts=2,
        trace_id=done_trace,
        pdf_path="/r/x.pdf",
        pdf_pages=3,
        pdf_bytes=2048,
    )
    insert_lineage(
        env, GID, trace_id=dead_trace, status="failed", error_type="abandoned", attempt=1
    )
    insert_lineage(env, GID, trace_id=done_trace, attempt=2, business_name="Jane Doe Ltd")
    result = runner.invoke(d6_app, ["status", GID])
    assert result.exit_code == 0, result.output
    assert "status:   completed (attempts: 2)" in result.stdout
    assert "pdf:      /r/x.pdf (3 pages, 2048 bytes)" in result.stdout
    assert f"trace:    {done_trace}" in result.stdout
    assert "lineage:  yes (2 rows: attempt 1 failed (abandoned); attempt 2 completed)" in (
        result.stdout
    )
    assert "Jane" not in result.stdout
    document = orjson.loads(runner.invoke(d6_app, ["status", GID, "--json"]).stdout)
    assert document["lineage_present"] is True
    assert [a["attempt"] for a in document["lineage"]] == [1, 2]


def test_status_of_a_failed_report_shows_the_description_not_the_message(env: Engine) -> None:
    _insert_generation(
        env,
        GID,
        status="failed",
        attempts=1,
        error_type="TemplateRenderError",
        error_message="cannot render 'jane@example.com'",
    )
    result = runner.invoke(d6_app, ["status", GID])
    assert result.exit_code == 0, result.output
    assert "error:    TemplateRenderError: the template could not be rendered" in result.stdout
    assert "jane" not in result.stdout
    assert "lineage:  no" in result.stdout


def test_status_when_the_lineage_table_cannot_be_read(
    env: Engine, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    elsewhere = f"sqlite:///{tmp_path / 'empty-lineage.db'}"
    create_engine(elsewhere).dispose()
    monkeypatch.setenv("OTEL_LINEAGE_DATABASE_URL", elsewhere)
    _insert_generation(env, GID, status="completed", attempts=1, trace_id=uuid.uuid4().hex)
    result = runner.invoke(d6_app, ["status", GID])
    assert result.exit_code == 0, result.output
    assert "lineage:  unknown (the lineage table cannot be read" in result.stdout
    document = orjson.loads(runner.invoke(d6_app, ["status", GID, "--json"]).stdout)
    assert document["lineage_present"] is None and document["lineage_error"]


# -- a real broker: the message itself --------------------------------------------------------


@pytest.fixture(params=["amqp", "redis"])
def live_broker(
    request: pytest.FixtureRequest, env: Engine, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    url = _broker(AMQP_URL if request.param == "amqp" else REDIS_URL)
    monkeypatch.setenv("D6_BROKER_URL", url)
    yield os.environ["D6_QUEUE"]
    _delete_queue(url, os.environ["D6_QUEUE"])


def _delete_queue(url: str, queue: str) -> None:
    """Purge and delete ``queue``. On Redis, kombu's ``queue_delete`` only deletes what this
    connection declared: the list and the binding keys are deleted by name."""
    app = create_app(QueueSettings(broker_url=url, queue=queue))
    try:
        with app.connection_for_write() as conn:
            channel = conn.default_channel
            channel.queue_purge(queue)
            channel.queue_delete(queue)
            if url.startswith("redis"):
                channel.client.delete(  # type: ignore[attr-defined]
                    queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}"
                )
    finally:
        app.close()


def _messages(queue: str) -> list[Any]:
    app = create_app()
    try:
        with app.connection_for_read() as conn:
            simple = conn.SimpleQueue(queue, no_ack=True)
            found = []
            while True:
                try:  # published with confirms: every message is there already
                    found.append(simple.get(timeout=2 if not found else 0.3))
                except simple.Empty:
                    return found
    finally:
        app.close()


def test_enqueue_returns_the_id_of_a_pending_row_and_sends_ids_only(
    live_broker: str, env: Engine
) -> None:
    started = time.monotonic()
    result = runner.invoke(d6_app, ["enqueue", "--business-id", "2"])
    assert result.exit_code == 0, result.output
    assert time.monotonic() - started < 10
    generation_id = result.stdout.strip()
    uuid.UUID(generation_id)
    (row,) = _rows(env)
    assert row["id"] == generation_id and row["business_id"] == 2
    assert (row["status"], row["attempts"], row["trace_id"]) == ("pending", 0, None)
    assert row["template_name"] == "audit_report" and row["template_version"] is None
    (message,) = _messages(live_broker)
    assert message.headers["id"] == generation_id and message.headers["task"] == TASK_NAME
    args, kwargs, _embed = message.decode()
    assert args == [generation_id, 2, "audit_report", None] and kwargs == {}
    assert message.content_type == "application/json"


def test_enqueue_all_queues_every_business(live_broker: str, env: Engine) -> None:
    result = runner.invoke(d6_app, ["enqueue-all", "--json", "--template", "summary"])
    assert result.exit_code == 0, result.output
    document = orjson.loads(result.stdout)
    assert document["queued"] == 6 and document["queue"] == live_broker
    assert document["template"] == "summary"
    sent = {r["generation_id"]: r["business_id"] for r in document["reports"]}
    rows = _rows(env)
    assert {r["id"]: r["business_id"] for r in rows} == sent
    assert {(r["status"], r["template_name"]) for r in rows} == {("pending", "summary")}
    assert {m.headers["id"] for m in _messages(live_broker)} == set(sent)
    plain = runner.invoke(d6_app, ["enqueue", "--business-id", "1", "--json"])
    assert orjson.loads(plain.stdout)["generation_id"] in {r["id"] for r in _rows(env)}
    with env.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(report_lineage)) == 0


# -- the worker parent's outbox adoption (the plugin's own command, for real) -----------------


def test_adoption_ships_what_a_dead_process_left(
    env: Engine, outbox_dir: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from d6_reports.queue.adoption import adopt_dead_outboxes

    outbox_dir.mkdir(parents=True, exist_ok=True)
    with caplog.at_level("INFO"):
        result = adopt_dead_outboxes(when="start")
    assert result is not None and result.ok, result
    assert result.message.startswith("adopted 0 records from dead processes")
    assert "lineage outboxes at worker start: adopted 0" in caplog.text


def test_adoption_with_the_lineage_database_down_is_a_warning(
    env: Engine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from d6_reports.queue.adoption import adopt_dead_outboxes

    monkeypatch.setenv(
        "OTEL_LINEAGE_DATABASE_URL", f"postgresql+psycopg://nobody@127.0.0.1:{_free_port()}/x"
    )
    result = adopt_dead_outboxes(when="stop")
    assert result is not None and not result.ok
    assert "not adopted" in caplog.text and "stay on disk" in caplog.text


def test_no_adoption_for_an_outbox_in_memory_or_without_the_plugin_command(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from d6_reports.queue import adoption

    monkeypatch.setenv("OTEL_LINEAGE_OUTBOX", "Memory")
    assert adoption.adopt_dead_outboxes(when="start") is None
    monkeypatch.setenv("OTEL_LINEAGE_OUTBOX", "/nonexistent/outbox")
    monkeypatch.setattr(adoption, "_command", lambda: None)
    assert adoption.adopt_dead_outboxes(when="start") is None
    assert "otel-lineage not found" in caplog.text


# -- fail loud: a worker whose pool processes cannot start lineage takes no report ----------


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("OTEL_TRACES_SAMPLER", "bogus", "OTEL_TRACES_SAMPLER='bogus' is not a known sampler"),
        ("OTEL_LINEAGE_BATCH_SIZE", "0", "OTEL_LINEAGE_BATCH_SIZE='0' is out of range"),
    ],
)
def test_a_worker_that_cannot_start_lineage_exits_with_one_line(
    variable: str, value: str, says: str, sqlite_env: Engine, tmp_path: Any
) -> None:
    env = sqlite_env
    broker = _broker(AMQP_URL)
    queue = os.environ["D6_QUEUE"]
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "D6_"))}
    child_env = {
        **clean,
        "D6_DATABASE_URL": os.environ["D6_DATABASE_URL"],
        "D6_BROKER_URL": broker,
        "D6_QUEUE": queue,
        "OTEL_LINEAGE_OUTBOX": str(tmp_path / "outbox"),
        variable: value,
    }
    enqueued = runner.invoke(
        d6_app, ["enqueue", "--business-id", "1"], env={"D6_BROKER_URL": broker}
    )
    assert enqueued.exit_code == 0, enqueued.output
    try:
        done = subprocess.run(
            [str(BIN / "d6-reports"), "worker", "--concurrency", "2", "--hostname", f"{queue}@%h"],
            env=child_env,
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 1, done.stderr[-3000:]
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, done.stderr[-3000:]
        assert errors[0].startswith("error: a worker process could not start: ")
        assert says in errors[0] and errors[0].endswith("; the worker stopped")
        assert "Traceback" not in done.stderr
        (row,) = _rows(env)
        assert (row["status"], row["attempts"]) == ("pending", 0)  # still queued, untouched
        assert [m.headers["id"] for m in _messages(queue)] == [row["id"]]
    finally:
        _delete_queue(broker, queue)


def test_a_refused_login_is_one_line_without_the_password(
    sqlite_env: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = _broker(AMQP_URL)
    user, _, rest = url.removeprefix("amqp://").partition(":")
    host = rest.partition("@")[2]
    monkeypatch.setenv("D6_BROKER_URL", f"amqp://{user}:{SECRET}@{host}")
    line = assert_one_line_error(runner.invoke(d6_app, ["enqueue", "--business-id", "1"]), 1)
    assert "ACCESS_REFUSED" in line and SECRET not in line
    assert _rows(sqlite_env) == []
    line = assert_one_line_error(runner.invoke(d6_app, ["worker", "-c", "1"]), 1)
    assert "ACCESS_REFUSED" in line and SECRET not in line
