"""A web app that generates reports inside traced requests: traces a user can follow.

A real HTTP server (stdlib) handles ``GET /reports/<business>``: its request span continues the
caller's ``traceparent`` when there is one, and the handler generates the report. Export is at
ratio 0.5 over the real OTLP/HTTP exporter to a local receiver; half of the 40 requests carry a
sampled upstream ``traceparent``. Every exported request must have its report trace exported
too, the request span must name its report (event ``report.requested``), and the lineage row
records the requesting trace (``otel-lineage list --caller-trace``).
"""

from __future__ import annotations

import json
import secrets
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

import otel_lineage
from d6_reports import telemetry as t
from d6_reports.generator import ReportGenerator
from otel_lineage import LineageSampler
from otel_lineage.cli import app as lineage_cli
from tests.fast_pdf import FastPDFConverter
from tests.lineage_support import lineage_rows

REQUESTS = 40


def _app(provider: TracerProvider, generator: ReportGenerator) -> type[BaseHTTPRequestHandler]:
    tracer = provider.get_tracer("web-app")
    propagator = TraceContextTextMapPropagator()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            business_id = int(self.path.rsplit("/", 1)[1])
            context = propagator.extract({k.lower(): v for k, v in self.headers.items()})
            with tracer.start_as_current_span(
                "GET /reports/{business}", context=context, kind=SpanKind.SERVER
            ) as span:
                result = generator.generate_report_sync(business_id)
                body = json.dumps(
                    {
                        "generation_id": result.generation_id,
                        "report_trace_id": result.trace_id,
                        "request_trace_id": f"{span.get_span_context().trace_id:032x}",
                        "request_sampled": span.get_span_context().trace_flags.sampled,
                    }
                ).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def web_app(
    db_url: str,
    engine: Engine,
    sessions: sessionmaker[Session],
    business_ids: list[int],
    tmp_path: Path,
    otlp_receiver: tuple[str, list[bytes]],
) -> Iterator[tuple[str, TracerProvider, otel_lineage.Lineage]]:
    url, _bodies = otlp_receiver
    provider = TracerProvider(sampler=LineageSampler(ParentBased(TraceIdRatioBased(0.5))))
    lineage = otel_lineage.configure(
        tracer_provider=provider,
        database_url=db_url,
        exporter=OTLPSpanExporter(endpoint=url),
        engines=[engine],
        set_global=False,
    )
    generator = ReportGenerator(
        sessions, tmp_path / "reports", tracer_provider=provider, converter=FastPDFConverter()
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), _app(provider, generator))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", provider, lineage
    finally:
        server.shutdown()
        server.server_close()
        generator.close()
        lineage.shutdown()
        provider.shutdown()


def _exported_spans(bodies: list[bytes]) -> list[tuple[str, str, list[tuple[str, dict[str, str]]]]]:
    """(name, trace id, events with their string attributes) of every span received."""
    spans = []
    for body in bodies:
        for resource_spans in ExportTraceServiceRequest.FromString(body).resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    events = [
                        (e.name, {a.key: a.value.string_value for a in e.attributes})
                        for e in span.events
                    ]
                    spans.append((span.name, span.trace_id.hex(), events))
    return spans


def test_every_exported_request_has_its_report_exported_and_named(
    web_app: tuple[str, TracerProvider, otel_lineage.Lineage],
    otlp_receiver: tuple[str, list[bytes]],
    engine: Engine,
    business_ids: list[int],
) -> None:
    base, provider, lineage = web_app
    answers = []
    for i in range(REQUESTS):
        request = urllib.request.Request(f"{base}/reports/{business_ids[i % len(business_ids)]}")
        upstream = secrets.token_hex(16) if i % 2 == 0 else None  # a sampled upstream caller
        if upstream:
            request.add_header("traceparent", f"00-{upstream}-{secrets.token_hex(8)}-01")
        with urllib.request.urlopen(request, timeout=60) as response:
            answers.append(json.loads(response.read()))
        if upstream:
            assert answers[-1]["request_trace_id"] == upstream  # the request continued it
    assert provider.force_flush(30_000) and lineage.flush()

    spans = _exported_spans(otlp_receiver[1])
    exported_requests = {trace for name, trace, _ in spans if name.startswith("GET ")}
    exported_reports = {trace for name, trace, _ in spans if name == t.SPAN_GENERATE}
    sampled = [a for a in answers if a["request_sampled"]]
    assert {a["request_trace_id"] for a in sampled} == exported_requests
    assert len(sampled) >= REQUESTS // 2  # every upstream-sampled request, and some others
    assert len(sampled) < REQUESTS  # the ratio really dropped some requests
    # Export follows the requesting span: no "request exported, report dropped".
    for answer in sampled:
        assert answer["report_trace_id"] in exported_reports
    # The request span names its report: generation id and report trace id.
    named = {
        (attrs[t.GENERATION_ID], attrs[t.REPORT_TRACE_ID])
        for name, _trace, events in spans
        if name.startswith("GET ")
        for event_name, attrs in events
        if event_name == t.EVENT_REPORT_REQUESTED
    }
    assert named == {(a["generation_id"], a["report_trace_id"]) for a in sampled}
    # One report = one trace, and lineage for all 40 whatever was exported.
    rows = {r["report_generation_id"]: r for r in lineage_rows(engine)}
    assert len(rows) == REQUESTS
    for answer in answers:
        row = rows[answer["generation_id"]]
        assert row["trace_id"] == answer["report_trace_id"] != answer["request_trace_id"]
        assert row["caller_trace_id"] == answer["request_trace_id"]
        if answer["request_sampled"]:
            assert row["exported"] is True


def test_list_finds_the_reports_of_a_request(
    web_app: tuple[str, TracerProvider, otel_lineage.Lineage],
    business_ids: list[int],
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base, _provider, lineage = web_app
    upstream_trace = secrets.token_hex(16)
    for business_id in business_ids[:2]:
        request = urllib.request.Request(f"{base}/reports/{business_id}")
        request.add_header("traceparent", f"00-{upstream_trace}-{secrets.token_hex(8)}-01")
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()
    assert lineage.flush()
    monkeypatch.setenv("OTEL_LINEAGE_DATABASE_URL", db_url)
    result = CliRunner().invoke(
        lineage_cli, ["list", "--caller-trace", upstream_trace.upper(), "--json"]
    )
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    assert listed["total"] == 2
    assert {r["caller_trace_id"] for r in listed["rows"]} == {upstream_trace}
