"""A real lineage service for end-to-end tests: demo data, keys, `otel-lineage serve`.

The browser tests (and the web benchmark) must exercise what an operator runs, not an app
object in the test process: so the service is started as the installed command, in its own
process, on a free loopback port, against a SQLite database whose lineage rows were made by the
real pipeline (real generator, real WeasyPrint PDFs, real OpenTelemetry SDK), and its keys are
created with the `otel-lineage keys create` command an operator would use.

Real PDFs rather than ``tests.fast_pdf``: the browser test clicks *verify*, which re-renders
with WeasyPrint, and must see every digest *matched*. Summary reports are one page (a few
hundred milliseconds each), so the whole build takes a few seconds.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlalchemy import select, update

from d6_reports import db
from d6_reports.generator import GenerationOptions
from d6_reports.models import Business
from d6_reports.seed import seed_demo
from otel_lineage.delivery.schema import report_lineage
from tests.lineage_support import lineage_pipeline, make_generator

BIN = Path(sys.executable).parent
#: A business name that is also markup: every page must show it as text, never run it.
HOSTILE_NAME = "<img src=x onerror=alert(1)>"
#: The API key format of otel_lineage.access.keys: ``d6l_`` and 43 url-safe characters.
KEY_PATTERN = re.compile(r"\bd6l_[A-Za-z0-9_-]{43}\b")
ROLES = ("support", "auditor", "admin")
SUMMARY = GenerationOptions("summary")


@dataclass(frozen=True)
class DemoReport:
    """One generated report and the lineage facts a test checks against."""

    report_id: str
    business_id: int
    business_name: str
    template_version: str
    inputs_sha256: str
    output_sha256: str


@dataclass
class DemoDatabase:
    url: str
    reports_dir: Path
    reports: list[DemoReport] = field(default_factory=list)

    def for_business(self, business_id: int) -> list[DemoReport]:
        return [r for r in self.reports if r.business_id == business_id]

    def named(self, name: str) -> DemoReport:
        return next(r for r in self.reports if r.business_name == name)


def build_demo_database(
    directory: Path, *, per_business: Sequence[int] = (2, 1, 1)
) -> DemoDatabase:
    """A migrated SQLite database with demo businesses and real lineage rows.

    ``per_business[i]`` reports are generated for the i-th business; the second business is
    renamed to ``HOSTILE_NAME`` before anything is generated, so its snapshot carries it.
    """
    directory.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{directory / 'lineage-demo.db'}"
    reports_dir = directory / "reports"
    db.upgrade(url)
    engine = db.make_engine(url)
    sessions = db.make_session_factory(engine)
    with sessions() as session:
        ids = seed_demo(session, count=len(per_business))
        if len(ids) > 1:
            session.execute(update(Business).where(Business.id == ids[1]).values(name=HOSTILE_NAME))
            session.commit()
        names = dict(session.execute(select(Business.id, Business.name)).tuples().all())
    # The pipeline's outbox belongs to this build, never to the repository's ./var; the rows
    # name the report service as a deployment would (the screenshots show it).
    with (
        _environ(
            OTEL_LINEAGE_OUTBOX=str(directory / "build-outbox"), OTEL_SERVICE_NAME="d6-reports"
        ),
        lineage_pipeline(url, engine) as (lineage, _exporter),
    ):
        generator = make_generator(sessions, lineage, reports_dir)
        try:
            for business_id, count in zip(ids, per_business, strict=True):
                for _ in range(count):
                    result = generator.generate_report_sync(business_id, SUMMARY)
                    assert result.success, (result.error_type, result.error_message)
        finally:
            generator.close()
        assert lineage.flush(60), "lineage rows were not written within 60 s"
    demo = DemoDatabase(url, reports_dir)
    with engine.connect() as conn:
        rows = conn.execute(select(report_lineage).order_by(report_lineage.c.started_at))
        for row in rows.mappings():
            demo.reports.append(
                DemoReport(
                    report_id=str(row["report_generation_id"]),
                    business_id=int(row["business_id"]),
                    business_name=names[int(row["business_id"])],
                    template_version=str(row["template_version"]),
                    inputs_sha256=str(row["inputs_sha256"]),
                    output_sha256=str(row["output_sha256"]),
                )
            )
    engine.dispose()
    assert len(demo.reports) == sum(per_business), "every report must have its lineage row"
    return demo


@contextmanager
def _environ(**values: str) -> Iterator[None]:
    """Variables set for the block (the module is also used by bench/, without pytest)."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value


def service_env(
    directory: Path, *, database_url: str, reports_dir: Path, **extra: str
) -> dict[str, str]:
    """The environment an operator would give the service: its databases, its reports, and
    nothing exported (the service's own spans go nowhere, and never become lineage)."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "D6_DATABASE", "D6_REP"))
    }
    env.update(
        D6_DATABASE_URL=database_url,
        D6_REPORTS_DIR=str(reports_dir),
        OTEL_LINEAGE_OUTBOX=str(directory / "service-outbox"),
        OTEL_LINEAGE_WEB_SECRET=secrets.token_urlsafe(32),
        OTEL_TRACES_EXPORTER="none",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
    )
    env.update(extra)
    return env


def create_key(env: Mapping[str, str], *, name: str, role: str, cwd: Path) -> str:
    """``otel-lineage keys create``: the secret it prints once."""
    done = subprocess.run(
        [str(BIN / "otel-lineage"), "keys", "create", "--name", name, "--role", role],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0:
        raise RuntimeError(f"keys create exited with {done.returncode}: {done.stderr.strip()}")
    found = KEY_PATTERN.findall(done.stdout + done.stderr)
    if len(found) != 1:
        raise RuntimeError(f"expected one key in the output of keys create: {done.stdout!r}")
    return str(found[0])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningServer:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def serve(
    env: Mapping[str, str],
    *,
    cwd: Path,
    workers: int = 1,
    extra_args: Sequence[str] = (),
    ready_timeout_s: float = 60.0,
) -> Iterator[RunningServer]:
    """``otel-lineage serve`` in a subprocess on a free 127.0.0.1 port, up until the block ends.

    Ready means ``GET /login`` answers at all (any status: the test decides what is right).
    A server that exits first fails with its own output, not with a connection error.
    """
    port = free_port()
    log = cwd / f"serve-{port}.log"
    command = [
        str(BIN / "otel-lineage"),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        *extra_args,
    ]
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, env=dict(env), cwd=cwd, stdout=sink, stderr=subprocess.STDOUT
        )
    server = RunningServer(f"http://127.0.0.1:{port}", process, log)
    try:
        _wait_ready(server, ready_timeout_s)
        yield server
    finally:
        _stop(process)


def _wait_ready(server: RunningServer, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"otel-lineage serve exited with {server.process.returncode}:\n{server.output()}"
            )
        try:
            httpx.get(f"{server.url}/login", timeout=2.0)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"otel-lineage serve not ready after {timeout_s} s:\n{server.output()}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (uvicorn's graceful shutdown), then SIGKILL if it does not go."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


@dataclass
class DemoSite:
    """A running service over a demo database, with one signed key per role."""

    url: str
    demo: DemoDatabase
    keys: dict[str, str]
    server: RunningServer


@contextmanager
def demo_site(directory: Path) -> Iterator[DemoSite]:
    demo = build_demo_database(directory)
    env = service_env(directory, database_url=demo.url, reports_dir=demo.reports_dir)
    keys = {role: create_key(env, name=f"{role}-e2e", role=role, cwd=directory) for role in ROLES}
    with serve(env, cwd=directory) as server:
        yield DemoSite(server.url, demo, keys, server)
