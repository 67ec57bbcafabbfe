"""The machinery of the queue tests: a PostgreSQL database, worker "hosts", polling, the CLIs.

Every worker node is a separate ``python -m tests.queue.worker_main`` process (its own Celery
node name, its own outbox directory: one host each) in a session of its own, so a test can
stop it, kill one of its pool children, or kill the whole process group at teardown. Child
processes get an environment built from scratch for the OpenTelemetry and service variables
(nothing of the test process's ``OTEL_*``/``D6_*`` leaks in, ``D6_ALLOW_NO_LINEAGE`` included:
a worker that cannot capture lineage must refuse to run).
"""

from __future__ import annotations

import contextlib
import gzip
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
from sqlalchemy import Engine, create_engine, func, select, text
from sqlalchemy.engine import make_url

from d6_reports import db
from d6_reports.models import ReportGeneration
from d6_reports.seed import seed_demo
from otel_lineage.delivery.schema import lineage_counters, report_lineage
from tests.tcp_proxy import TCPProxy

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672//"
#: Database 15 of the local Redis: away from whatever else uses database 0.
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/15"
generations = ReportGeneration.__table__
#: Everything a worker logs at INFO per task is ids and timings, never report content.
LOG_TAIL_LINES = 40


# -- processes -----------------------------------------------------------------------------------


def base_env() -> dict[str, str]:
    """The test process's environment without any OpenTelemetry or service setting."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "D6_"))}


def telemetry_env(**overrides: str) -> dict[str, str]:
    """No export by default (lineage does not need it), 1% export sampling as in production."""
    return {
        "OTEL_SERVICE_NAME": "d6-reports-worker",
        "OTEL_TRACES_SAMPLER": "lineage_parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.01",
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        **overrides,
    }


def children_of(pid: int) -> list[int]:
    """Live child process ids of ``pid`` (from /proc: no psutil here)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return sorted(found)


@dataclass
class Node:
    """One worker node standing for one host."""

    name: str
    home: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def outbox(self) -> Path:
        return Path(self.env["OTEL_LINEAGE_OUTBOX"])

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def ready_or_exited(self) -> bool:
        return f"{self.name} ready." in self.log() or self.process.poll() is not None

    def children(self) -> list[int]:
        return children_of(self.process.pid)

    def succeeded(self) -> int:
        """Tasks this node's log reports as succeeded."""
        return sum(" succeeded in " in line for line in self.log().splitlines())

    def stop(self, timeout: float = 30) -> int | None:
        """Warm shutdown (SIGTERM to the node's main process), then kill the process group."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
        self.kill()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL to the whole process group (the node and every pool child)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)


# -- the database -------------------------------------------------------------------------------


@dataclass
class QueueDatabase:
    """A PostgreSQL database of its own (reports and lineage), migrated and seeded."""

    url: str
    engine: Engine
    business_ids: list[int]

    def truncate(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(text("TRUNCATE report_generation, report_lineage, lineage_counters"))

    def generations(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(select(generations)).mappings()]

    def lineage(self) -> list[dict[str, Any]]:
        columns = [c for c in report_lineage.c if c.name not in ("inputs_snapshot", "span_tree")]
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(select(*columns)).mappings()]

    def status_counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(generations.c.status, func.count()).group_by(generations.c.status)
            )
            return {str(status): int(n) for status, n in rows}

    def completed(self) -> int:
        return self.status_counts().get("completed", 0)

    def completed_lineage(self) -> int:
        with self.engine.connect() as conn:
            query = (
                select(func.count())
                .select_from(report_lineage)
                .where(report_lineage.c.status == "completed")
            )
            return int(conn.scalar(query) or 0)

    def lineage_processes(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(lineage_counters)) or 0)

    def summary(self) -> str:
        """Counts only (never report content), for failure messages."""
        lineage = Counter((r["status"], r["error_type"]) for r in self.lineage())
        return f"generations {self.status_counts()}, lineage {dict(lineage)}"


@contextlib.contextmanager
def postgres_database(admin_url: str, businesses: int) -> Iterator[QueueDatabase]:
    """CREATE DATABASE, migrate, seed; DROP it (connections forced out) afterwards."""
    name = f"d6q_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    engine = db.make_engine(url)
    try:
        db.upgrade(url)
        with db.make_session_factory(engine)() as session:
            ids = seed_demo(session, count=businesses)
        yield QueueDatabase(url=url, engine=engine, business_ids=ids)
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def via_proxy(url: str, proxy: TCPProxy) -> str:
    """``url`` with its host and port replaced by the proxy's (credentials kept)."""
    parts = urlsplit(url)
    userinfo, _, _ = parts.netloc.rpartition("@")
    host = f"127.0.0.1:{proxy.port}"
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{host}" if userinfo else host))


def proxy_for(url: str, default_port: int) -> TCPProxy:
    parts = urlsplit(url)
    return TCPProxy(parts.hostname or "127.0.0.1", parts.port or default_port)


# -- waiting ------------------------------------------------------------------------------------


def wait_until(
    predicate: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    details: Callable[[], str] = lambda: "",
    interval: float = 0.2,
) -> None:
    """Poll ``predicate`` until true; fail with ``what`` and ``details()`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{details()}")
        time.sleep(interval)


# -- the cluster ---------------------------------------------------------------------------------


@dataclass
class CLIResult:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return orjson.loads(self.stdout)


@dataclass
class Cluster:
    """Worker nodes on one queue, the report database, and the commands a user would run."""

    database: QueueDatabase
    broker_url: str
    queue: str
    workdir: Path
    nodes: list[Node] = field(default_factory=list)
    proxies: list[TCPProxy] = field(default_factory=list)

    @property
    def reports_dir(self) -> Path:
        return self.workdir / "reports"

    def env(
        self,
        host: str,
        *,
        broker_url: str | None = None,
        database_url: str | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> dict[str, str]:
        """The environment of a process on ``host``: its own outbox directory."""
        url = database_url or self.database.url
        return {
            **base_env(),
            **telemetry_env(),
            "PYTHONUNBUFFERED": "1",
            "D6_DATABASE_URL": url,
            "OTEL_LINEAGE_DATABASE_URL": url,
            "D6_REPORTS_DIR": str(self.reports_dir),
            "D6_BROKER_URL": broker_url or self.broker_url,
            "D6_QUEUE": self.queue,
            "OTEL_LINEAGE_OUTBOX": str(self.workdir / host / "outbox"),
            **(extra or {}),
        }

    def start(
        self,
        count: int,
        *,
        concurrency: int = 2,
        max_tasks_per_child: int | None = None,
        real_pdf: bool = False,
        exit_without_flush: bool = False,
        broker_url: str | None = None,
        database_url: str | None = None,
        extra: Mapping[str, str] | None = None,
        ready_timeout: float = 60,
    ) -> list[Node]:
        """Start ``count`` nodes (one host each) and wait until every one is consuming."""
        started = []
        for _ in range(count):
            index = len(self.nodes) + 1
            host = f"host{index}"
            name = f"w{index}-{self.queue}@{host}"
            home = self.workdir / host
            home.mkdir(parents=True, exist_ok=True)
            args = [sys.executable, "-m", "tests.queue.worker_main", "--hostname", name]
            args += ["--concurrency", str(concurrency)]
            if max_tasks_per_child is not None:
                args += ["--max-tasks-per-child", str(max_tasks_per_child)]
            if real_pdf:
                args.append("--real-pdf")
            if exit_without_flush:
                args.append("--exit-without-flush")
            log_path = home / "worker.log"
            env = self.env(host, broker_url=broker_url, database_url=database_url, extra=extra)
            with log_path.open("wb") as log:
                process = subprocess.Popen(
                    args,
                    env=env,
                    cwd=ROOT,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group: killpg at teardown
                )
            node = Node(name=name, home=home, env=env, process=process, log_path=log_path)
            self.nodes.append(node)
            started.append(node)
        for node in started:
            wait_until(
                node.ready_or_exited,
                timeout=ready_timeout,
                what=f"worker {node.name} to be ready",
                details=node.log_tail,
            )
            assert node.process.poll() is None, f"worker {node.name} exited:\n{node.log_tail()}"
        return started

    def stop_all(self, timeout: float = 30) -> None:
        for node in self.nodes:
            if node.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    node.process.send_signal(signal.SIGTERM)
        for node in self.nodes:
            node.stop(timeout)

    def proxy(self, url: str, default_port: int) -> tuple[TCPProxy, str]:
        """A started TCP proxy to the server of ``url``, and ``url`` through it."""
        proxy = proxy_for(url, default_port)
        proxy.start()
        self.proxies.append(proxy)
        return proxy, via_proxy(url, proxy)

    def teardown(self) -> None:
        for node in self.nodes:
            node.kill()
        for proxy in self.proxies:
            proxy.stop()
        delete_queue(self.broker_url, self.queue)

    # -- commands ------------------------------------------------------------------------------

    def run(
        self,
        args: Sequence[str],
        *,
        host: str = "client",
        timeout: float = 120,
        extra: Mapping[str, str] | None = None,
    ) -> CLIResult:
        done = subprocess.run(
            list(args),
            env=self.env(host, extra=extra),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return CLIResult(done.returncode, done.stdout, done.stderr)

    def enqueue_all(self, extra: Mapping[str, str] | None = None) -> CLIResult:
        """``d6-reports enqueue-all --json``: a report for every business."""
        done = self.run([str(BIN / "d6-reports"), "enqueue-all", "--json"], extra=extra)
        assert done.returncode == 0, done.stderr[-2000:]
        return done

    def enqueue(self, business_ids: Sequence[int]) -> list[str]:
        """The Python API (``enqueue_many``) in a client process: the generation ids."""
        script = (
            "import sys, orjson\n"
            "from d6_reports.queue import enqueue_many\n"
            "ids = enqueue_many([int(a) for a in sys.argv[1:]])\n"
            "print(orjson.dumps(list(ids)).decode())\n"
        )
        done = self.run([sys.executable, "-c", script, *map(str, business_ids)])
        assert done.returncode == 0, done.stderr[-2000:]
        ids = orjson.loads(done.stdout.strip().splitlines()[-1])
        assert isinstance(ids, list) and len(ids) == len(business_ids)
        return [str(i) for i in ids]

    def audit(self, host: str = "host1") -> dict[str, Any]:
        """``otel-lineage audit --json`` on ``host`` (its outbox explains what is missing)."""
        done = self.run([str(BIN / "otel-lineage"), "audit", "--json"], host=host)
        assert done.returncode in (0, 1), done.stderr[-2000:]
        report: dict[str, Any] = done.json()
        report["exit_code"] = done.returncode
        return report

    def outbox_flush(self, host: str) -> CLIResult:
        done = self.run([str(BIN / "otel-lineage"), "outbox", "flush"], host=host)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        return done

    def logs(self) -> str:
        return "\n".join(f"--- {n.name}\n{n.log_tail()}" for n in self.nodes)

    def details(self) -> str:
        return f"{self.database.summary()}\n{self.logs()}"

    def wait_completed(self, count: int, timeout: float, *, lineage: bool = True) -> None:
        """Wait for ``count`` completed generations (and as many completed lineage rows)."""
        wait_until(
            lambda: self.database.completed() >= count,
            timeout=timeout,
            what=f"{count} completed reports",
            details=self.details,
        )
        if lineage:
            wait_until(
                lambda: self.database.completed_lineage() >= count,
                timeout=timeout,
                what=f"{count} completed lineage rows",
                details=self.details,
            )


def _broker_app(broker_url: str, queue: str = "d6-test-probe") -> Any:
    from d6_reports.queue.app import create_app
    from d6_reports.queue.config import QueueSettings

    return create_app(QueueSettings(broker_url=broker_url, queue=queue))


def delete_queue(broker_url: str, queue: str) -> None:
    """Delete the test's queue (and whatever is left in it) and its exchange from the broker."""
    app = _broker_app(broker_url, queue)
    try:
        with contextlib.suppress(Exception), app.connection_for_write() as conn:
            for step in _deletions(app.queue_settings.transport, queue):
                with contextlib.suppress(Exception):  # each step on its own
                    step(conn.default_channel)
    finally:
        app.close()


def _deletions(transport: str, queue: str) -> list[Callable[[Any], object]]:
    steps: list[Callable[[Any], object]] = [lambda channel: channel.queue_delete(queue)]
    if transport == "amqp":  # Celery declared a direct exchange of the same name
        steps.append(lambda channel: channel.exchange_delete(queue))
    else:  # kombu's queue_delete only drops bindings this channel made: delete the keys
        lists = [queue, *(f"{queue}\x06\x16{priority}" for priority in (3, 6, 9))]
        steps.append(lambda channel: channel.client.delete(*lists))
        steps.append(lambda channel: channel.client.delete(f"_kombu.binding.{queue}"))
        steps.append(lambda channel: channel.client.delete(f"_kombu.binding_permanent.{queue}"))
    return steps


def broker_reachable(broker_url: str) -> str | None:
    """None when the broker accepts a connection, else why not (one line)."""
    app = _broker_app(broker_url)
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=5)
    except Exception as exc:
        return f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    finally:
        app.close()
    return None


# -- OTLP ------------------------------------------------------------------------------------------


def otlp_root_spans(bodies: Sequence[bytes], name: str) -> dict[str, int]:
    """Root spans called ``name`` the OTLP/HTTP receiver got, by ``service.name``."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    traces: dict[str, set[bytes]] = defaultdict(set)
    for body in bodies:
        if body[:2] == b"\x1f\x8b":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest.FromString(body)
        for resource in request.resource_spans:
            service = next(
                (
                    a.value.string_value
                    for a in resource.resource.attributes
                    if a.key == "service.name"
                ),
                "",
            )
            for scope in resource.scope_spans:
                for span in scope.spans:
                    if span.name == name and not span.parent_span_id:
                        traces[service].add(span.trace_id)
    return {service: len(ids) for service, ids in traces.items()}
