"""Shared fixtures: a migrated database per test on SQLite and (when configured) PostgreSQL,
a real OpenTelemetry SDK tracer provider with an in-memory exporter, and a report generator.

PostgreSQL tests run when ``D6_TEST_POSTGRES_URL`` is set; each test gets its own schema (via
``search_path``) so tests never see each other's rows. With ``D6_TEST_REQUIRE_POSTGRES=1`` (CI)
an unreachable server fails the run instead of skipping.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from d6_reports import db
from d6_reports.generator import ReportGenerator
from d6_reports.seed import seed_demo

# In-process CLI tests (CliRunner) run the service's commands, whose start-up would otherwise
# configure OpenTelemetry for the whole test process: a global provider, a lineage pipeline and
# its listener, the SQLAlchemy create_engine patch, all leaking into every later test. With a
# provider already installed the start-up configures nothing (as under opentelemetry-instrument),
# and D6_ALLOW_NO_LINEAGE lets those commands run. The start-up itself is tested for real in
# subprocesses (tests/integration/test_documented_commands.py), which get a clean environment.
trace.set_tracer_provider(TracerProvider())

PG_URL = os.environ.get("D6_TEST_POSTGRES_URL")
REQUIRE_PG = os.environ.get("D6_TEST_REQUIRE_POSTGRES") == "1"
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def _postgres_schema_url() -> Iterator[str]:
    if not PG_URL:
        if REQUIRE_PG:
            pytest.fail("D6_TEST_REQUIRE_POSTGRES=1 but D6_TEST_POSTGRES_URL is not set")
        pytest.skip("D6_TEST_POSTGRES_URL not set")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:
        admin.dispose()
        if REQUIRE_PG:
            pytest.fail(f"PostgreSQL unreachable at {PG_URL}: {exc}")
        pytest.skip(f"PostgreSQL unreachable: {exc}")
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{sep}options={quote(f'-csearch_path={schema}')}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(autouse=True)
def outbox_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own lineage outbox directory (never the repository's ./var)."""
    directory = tmp_path / "outbox"
    monkeypatch.setenv("OTEL_LINEAGE_OUTBOX", str(directory))
    monkeypatch.setenv("D6_ALLOW_NO_LINEAGE", "true")  # see the provider installed above
    return directory


@pytest.fixture(params=BACKENDS)
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database URL with no tables, on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
    else:
        yield from _postgres_schema_url()


@pytest.fixture
def db_url(empty_db_url: str) -> str:
    """A database URL migrated to head."""
    db.upgrade(empty_db_url)
    return empty_db_url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = db.make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return db.make_session_factory(engine)


@pytest.fixture
def business_ids(sessions: sessionmaker[Session]) -> list[int]:
    with sessions() as session:
        return seed_demo(session, count=6)


@pytest.fixture
def span_exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer_provider(span_exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    yield provider
    provider.shutdown()


@pytest.fixture
def generator(
    sessions: sessionmaker[Session], tmp_path: Path, tracer_provider: TracerProvider
) -> Iterator[ReportGenerator]:
    generator = ReportGenerator(sessions, tmp_path / "reports", tracer_provider=tracer_provider)
    yield generator
    generator.close()


class _Receiver(BaseHTTPRequestHandler):
    bodies: list[bytes]

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        self.server.bodies.append(self.rfile.read(length))  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()
        self.wfile.write(b"")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def otlp_receiver() -> Iterator[tuple[str, list[bytes]]]:
    """A real HTTP server on 127.0.0.1 that keeps every OTLP request body it receives."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.bodies = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1/traces", server.bodies  # type: ignore[attr-defined]
    server.shutdown()
    server.server_close()
