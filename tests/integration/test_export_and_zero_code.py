"""What leaves the process (real OTLP/HTTP to a local receiver) and the zero-code path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

import otel_lineage
from d6_reports.generator import GenerationOptions, ReportGenerator
from d6_reports.models import ReportGeneration
from tests.lineage_support import lineage_rows

BIN = Path(sys.executable).parent


def test_otlp_wire_carries_sampled_traces_without_payloads(
    db_url: str,
    engine: Engine,
    sessions: sessionmaker[Session],
    business_ids: list[int],
    tmp_path: Path,
    otlp_receiver: tuple[str, list[bytes]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    endpoint, bodies = otlp_receiver
    monkeypatch.setenv("OTEL_SERVICE_NAME", "d6-reports-wire")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.version=9.9.9")
    lineage = otel_lineage.configure(
        engines=[engine],
        database_url=db_url,
        sampler=ParentBased(TraceIdRatioBased(0.5)),
        exporter=OTLPSpanExporter(endpoint=endpoint),
        set_global=False,
    )
    try:
        generator = ReportGenerator(sessions, tmp_path, tracer_provider=lineage.provider)
        for business_id in business_ids * 4:
            generator.generate_report_sync(business_id, GenerationOptions("summary"))
        assert lineage.flush(30)
    finally:
        lineage.shutdown()
        lineage.provider.shutdown()

    spans = []
    for body in bodies:
        assert b"d6.report-inputs/1" not in body and b"hello@" not in body  # no snapshot
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            assert resource["service.name"] == "d6-reports-wire"
            assert resource["service.version"] == "9.9.9"
            for scope_spans in resource_spans.scope_spans:
                spans.extend(scope_spans.spans)
    rows = lineage_rows(engine)
    assert len(rows) == 24
    sampled = {str(r["trace_id"]) for r in rows if r["sampled"]}
    assert 0 < len(sampled) < 24
    assert {s.trace_id.hex() for s in spans} == sampled  # exactly the sampled traces
    roots = {s.span_id: s for s in spans if s.name == "report.generate"}
    assert len(roots) == len(sampled)
    for span in spans:
        if span.name.startswith("report.") and span.name != "report.generate":
            assert span.parent_span_id in roots
        for attribute in span.attributes:
            if attribute.key.startswith("report."):  # ids, digests, sizes: never payloads
                assert len(attribute.value.string_value) < 300, attribute.key
    root_keys = {a.key for s in roots.values() for a in s.attributes}
    assert {"report.generation_id", "report.business_id", "report.template.sha256"} <= root_keys
    assert rows[0]["service_name"] == "d6-reports-wire" and rows[0]["service_version"] == "9.9.9"


def _instrumented_env(db_url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(
        D6_DATABASE_URL=db_url,
        D6_REPORTS_DIR=str(tmp_path / "reports"),
        OTEL_SERVICE_NAME="d6-reports-zero-code",
        OTEL_TRACES_SAMPLER="lineage_parentbased_traceidratio",
        OTEL_TRACES_SAMPLER_ARG="0",
        OTEL_TRACES_EXPORTER="none",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        OTEL_LINEAGE_OUTBOX=str(tmp_path / "outbox"),
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    env.update(extra)
    return env


def _generate_all_instrumented(env: dict[str, str], *args: str) -> None:
    """``opentelemetry-instrument d6-reports generate-all --template summary ARGS`` must pass."""
    done = subprocess.run(
        [
            str(BIN / "opentelemetry-instrument"),
            str(BIN / "d6-reports"),
            "generate-all",
            "--template",
            "summary",
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_zero_code_generate_all_yields_lineage(
    db_url: str,
    engine: Engine,
    sessions: sessionmaker[Session],
    business_ids: list[int],
    tmp_path: Path,
    workers: str,
) -> None:
    _generate_all_instrumented(_instrumented_env(db_url, tmp_path), "--workers", workers)
    rows = lineage_rows(engine)
    with sessions() as session:
        generations = {g.id: g for g in session.scalars(select(ReportGeneration))}
    assert len(rows) == len(generations) == len(business_ids)
    for row in rows:
        generation = generations[str(row["report_generation_id"])]
        assert generation.trace_id == row["trace_id"]
        assert row["complete"] and not row["sampled"]
        assert row["service_name"] == "d6-reports-zero-code"
    statements = b"".join(bytes(r["span_tree"]) for r in rows)  # type: ignore[arg-type]
    assert statements  # the span tree was stored


def test_zero_code_with_flag_off_writes_nothing(
    db_url: str, engine: Engine, business_ids: list[int], tmp_path: Path
) -> None:
    _generate_all_instrumented(_instrumented_env(db_url, tmp_path, ENABLE_REPORT_LINEAGE="false"))
    assert lineage_rows(engine) == []


def test_instrumentor_attaches_to_a_given_provider(
    db_url: str,
    engine: Engine,
    business_ids: list[int],
    sessions: sessionmaker[Session],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The same entry point opentelemetry-instrument loads, run in-process."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import NoOpTracerProvider

    from otel_lineage import LineageConfigError, LineageStartError
    from otel_lineage.startup.instrumentor import LineageInstrumentor, startup_check

    monkeypatch.setenv("OTEL_LINEAGE_DATABASE_URL", db_url)
    monkeypatch.setattr(LineageInstrumentor, "refused", None)  # no distro ran in this process
    monkeypatch.setattr(LineageInstrumentor, "failure", None)
    # A sampler that can drop report roots is refused, loudly, and the check says why.
    dropping = TracerProvider(sampler=TraceIdRatioBased(0.5))
    with pytest.raises(LineageConfigError, match="drops report traces"):
        LineageInstrumentor().instrument(tracer_provider=dropping)
    with pytest.raises(LineageStartError, match="drops report traces"):
        startup_check()
    LineageInstrumentor().uninstrument()
    # The SDK's default sampler never drops a new root: attached without a word.
    provider = TracerProvider()
    instrumentor = LineageInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        assert "LineageSampler" not in caplog.text
        generator = ReportGenerator(sessions, tmp_path, tracer_provider=provider)
        generator.generate_report_sync(business_ids[0], GenerationOptions("summary"))
        assert provider.force_flush(10_000)
    finally:
        instrumentor.uninstrument()
    assert len(lineage_rows(engine)) == 1
    with pytest.raises(LineageStartError, match="no OpenTelemetry SDK tracer provider"):
        instrumentor.instrument(tracer_provider=NoOpTracerProvider())
    monkeypatch.setenv("ENABLE_REPORT_LINEAGE", "false")
    instrumentor.instrument(tracer_provider=provider)
    assert LineageInstrumentor._lineage is None
    instrumentor.uninstrument()
    provider.shutdown()


def test_zero_code_exports_sampled_traces_over_otlp_http(
    db_url: str,
    engine: Engine,
    business_ids: list[int],
    tmp_path: Path,
    otlp_receiver: tuple[str, list[bytes]],
) -> None:
    """The docker-compose set-up without Docker: zero code, OTLP/HTTP to a collector."""
    endpoint, bodies = otlp_receiver
    env = _instrumented_env(
        db_url,
        tmp_path,
        OTEL_TRACES_SAMPLER_ARG="1.0",
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint.removesuffix("/v1/traces"),
    )
    _generate_all_instrumented(env)
    report_traces = set()
    for body in bodies:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        report_traces |= {
            span.trace_id.hex()
            for rs in request.resource_spans
            for ss in rs.scope_spans
            for span in ss.spans
            if span.name == "report.generate"
        }
    rows = lineage_rows(engine)
    assert len(rows) == len(business_ids)
    assert report_traces == {str(r["trace_id"]) for r in rows}
    assert all(r["sampled"] for r in rows)
