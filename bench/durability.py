"""Issue-4 figures: our lineage path against the designs a user would otherwise pick.

Per report, on the report's own thread (the latency a report pays):
- (a) ``sync_insert``: the generator inserts the lineage row itself, one transaction per report;
- (b) ``openlineage_http``: the OpenLineage Python client emits START and COMPLETE RunEvents over
  its HTTP transport to a local endpoint;
- (c) ``ours``: span hooks + fold + the durable outbox insert (the database write happens later,
  on the writer thread).
Plus the writer's sustained batch upsert rate into the lineage database, the outbox insert cost,
and how long after ``generate_report`` returns the row is visible in the database.
"""

from __future__ import annotations

import hashlib
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from sqlalchemy import Engine, create_engine, func, insert, select, text

import otel_lineage
from bench.common import TimedProcessor, pct, summary
from d6_reports import db
from d6_reports.generator import GenerationOptions, ReportGenerator
from d6_reports.pdf import PDFConverter
from d6_reports.seed import seed_demo
from otel_lineage.delivery.engines import create_lineage_engine
from otel_lineage.delivery.outbox import OutboxHandOff
from otel_lineage.delivery.schema import report_lineage
from otel_lineage.delivery.store import RECORD_FIELDS, LineageStore
from otel_lineage.record import LineageRecord, compress


class _Accept(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(201)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def local_endpoint() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Accept)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def postgres_schema(url: str) -> Iterator[str]:
    """A scratch schema on the PostgreSQL server, migrated, dropped afterwards."""
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    scoped = f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"
    try:
        db.upgrade(scoped)
        yield scoped
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def _openlineage_events(client: Any, record: LineageRecord) -> None:
    from openlineage.client.event_v2 import (
        InputDataset,
        Job,
        OutputDataset,
        Run,
        RunEvent,
        RunState,
    )

    run = Run(runId=str(uuid.uuid4()))
    job = Job(namespace="d6-reports", name=f"{record.template_name}.{record.template_version}")
    inputs = [InputDataset(namespace="postgres://db", name=t) for t in record.input_tables]
    outputs = [OutputDataset(namespace="file://reports", name=str(record.output_uri))]
    for state, when in ((RunState.START, record.started_at), (RunState.COMPLETE, record.ended_at)):
        client.emit(
            RunEvent(
                eventType=state,
                eventTime=(when or record.started_at).isoformat(),
                run=run,
                job=job,
                producer="https://example.invalid/d6-reports",
                inputs=inputs,
                outputs=outputs,
            )
        )


def design_comparison(
    url: str, reports: Path, n: int, converter: PDFConverter | None = None
) -> dict[str, Any]:
    """``converter``: the PDF converter (default WeasyPrint; bench.overhead passes the fast one)."""
    from openlineage.client import OpenLineageClient
    from openlineage.client.transport.http import HttpConfig, HttpTransport

    engine, business, lineage, generator = _report_pipeline(url, reports, converter)
    assert lineage.processor is not None
    lineage.processor.__class__ = TimedProcessor
    naive = create_lineage_engine(url)
    out: dict[str, list[float]] = {"sync_insert": [], "openlineage_http": [], "ours": []}
    with local_endpoint() as endpoint:
        client = OpenLineageClient(transport=HttpTransport(HttpConfig(url=endpoint)))
        generator.generate_report_sync(business, GenerationOptions("summary"))  # warm-up
        lineage.flush(30)
        template = lineage_rows_one(url)
        for _ in range(n):
            TimedProcessor.hook_ns = 0
            generator.generate_report_sync(business, GenerationOptions("summary"))
            out["ours"].append(TimedProcessor.hook_ns / 1e6)
            record = replace(template, trace_id=uuid.uuid4().hex, report_generation_id=None)
            started = time.perf_counter()
            with naive.begin() as conn:
                conn.execute(insert(report_lineage), [record.as_row()])
            out["sync_insert"].append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            _openlineage_events(client, record)
            out["openlineage_http"].append((time.perf_counter() - started) * 1000)
        client.close()
    _close(engine, lineage)
    naive.dispose()
    return {name: summary(values) for name, values in out.items()}


def _report_pipeline(
    url: str, reports: Path, converter: PDFConverter | None = None
) -> tuple[Engine, int, otel_lineage.Lineage, ReportGenerator]:
    """A seeded database, lineage at a 0.1 export ratio, and a generator traced by it."""
    engine = db.make_engine(url)
    sessions = db.make_session_factory(engine)
    with sessions() as session:
        business = seed_demo(session)[0]
    provider = TracerProvider(
        sampler=otel_lineage.LineageSampler(ParentBased(TraceIdRatioBased(0.1)))
    )
    lineage = otel_lineage.configure(tracer_provider=provider, database_url=url, set_global=False)
    generator = ReportGenerator(sessions, reports, converter=converter, tracer_provider=provider)
    return engine, business, lineage, generator


def _close(engine: Engine, lineage: otel_lineage.Lineage) -> None:
    lineage.shutdown()
    lineage.provider.shutdown()
    engine.dispose()


def lineage_rows_one(url: str) -> LineageRecord:
    """One real folded record from the database, to give the other designs the same payload."""
    engine = create_lineage_engine(url)
    with engine.connect() as conn:
        row = conn.execute(select(report_lineage).limit(1)).mappings().one()
    engine.dispose()
    return LineageRecord(**{name: row[name] for name in RECORD_FIELDS})


def writer_throughput(
    url: str, records: int, batch: int, snapshot: bytes | None = None
) -> dict[str, Any]:
    """Rows/s of the writer's batch upsert. A stored row's snapshot lives in the shared table,
    so the template row has none: ``snapshot`` gives every record its own (a distinct variant,
    compressed, with its digest), as records of different reports would have."""
    template = lineage_rows_one(url)
    store = LineageStore(create_lineage_engine(url))
    rows = []
    for index in range(records):
        row = replace(template, trace_id=uuid.uuid4().hex, report_generation_id=str(uuid.uuid4()))
        if snapshot is not None:
            variant = b'{"n":%d,' % index + snapshot[1:]
            row = replace(
                row,
                inputs_snapshot=compress(variant),
                inputs_codec="zstd",
                inputs_sha256=hashlib.sha256(variant).hexdigest(),
                inputs_bytes=len(variant),
            )
        rows.append(row)
    started = time.perf_counter()
    for index in range(0, records, batch):
        store.upsert(rows[index : index + batch])
    elapsed = time.perf_counter() - started
    with store.engine.connect() as conn:
        stored = conn.scalar(select(func.count()).select_from(report_lineage))
    store.engine.dispose()
    return {
        "records": records,
        "batch": batch,
        "seconds": round(elapsed, 3),
        "rows_per_s": round(records / elapsed),
        "rows_in_table": stored,
        "record_bytes": len(rows[0].to_bytes()),
    }


def outbox_put_cost(tmp: Path, url: str, n: int) -> dict[str, float]:
    template = lineage_rows_one(url)
    box = OutboxHandOff(tmp / "bench-outbox", max_records=n + 1)
    records = [replace(template, trace_id=uuid.uuid4().hex) for _ in range(n)]
    costs = []
    for record in records:
        started = time.perf_counter()
        box.put(record)
        costs.append((time.perf_counter() - started) * 1e6)
    box.ack(box.take(n, 0))
    box.close()
    return {
        "n": n,
        "median_us": round(statistics.median(costs), 1),
        "p99_us": round(sorted(costs)[int(0.99 * (n - 1))], 1),
    }


def row_visibility_gap(
    url: str,
    reports: Path,
    n: int,
    converter: PDFConverter | None = None,
    pause_s: float = 0.5,
) -> dict[str, float]:
    """Seconds from ``generate_report`` returning to its lineage row being readable (polled
    every 5 ms, so figures are up to 5 ms late), on an idle system: ``pause_s`` between
    reports, longer than the writer's pacing interval (0.2 s), as reports that trickle in."""
    engine, business, lineage, generator = _report_pipeline(url, reports, converter)
    gaps = []
    for _ in range(n):
        time.sleep(pause_s)
        result = generator.generate_report_sync(business, GenerationOptions("summary"))
        returned = time.perf_counter()
        query = select(func.count()).where(
            report_lineage.c.report_generation_id == result.generation_id
        )
        while True:
            with engine.connect() as conn:
                if conn.scalar(query):
                    break
            time.sleep(0.005)
        gaps.append(time.perf_counter() - returned)
    _close(engine, lineage)
    return {
        "n": n,
        "median_s": round(statistics.median(gaps), 3),
        "p50_s": round(pct(gaps, 0.50), 3),
        "p99_s": round(pct(gaps, 0.99), 3),
        "max_s": round(max(gaps), 3),
    }
