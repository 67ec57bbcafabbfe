"""Span limits never detach a row from its report, and invalid text never loses it (issue 9
items 3 and 4): the real generator, the real SDK limits, the real database, the real CLI."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import orjson
import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

import otel_lineage
from d6_reports.generator import GenerationOptions, GenerationResult, ReportGenerator
from d6_reports.models import ReportGeneration
from otel_lineage import LineageSampler, semconv
from otel_lineage.cli import app as lineage_cli
from otel_lineage.reading.query import get_row
from otel_lineage.reading.verify import stored_snapshot
from otel_lineage.record import decompress
from tests.fast_pdf import FastPDFConverter
from tests.lineage_support import lineage_pipeline, lineage_rows

SUMMARY = GenerationOptions("summary")
LIMITS = {
    "length-1": SpanLimits(max_attribute_length=1),
    "length-16": SpanLimits(max_attribute_length=16),
    "length-63": SpanLimits(max_attribute_length=63),
    "count-1": SpanLimits(max_span_attributes=1),
    "count-3": SpanLimits(max_span_attributes=3),
}


def _generate(
    sessions: sessionmaker[Session], provider: TracerProvider, reports: Path, ids: list[int]
) -> list[GenerationResult]:
    generator = ReportGenerator(
        sessions, reports, converter=FastPDFConverter(), tracer_provider=provider
    )
    try:
        return [generator.generate_report_sync(b, SUMMARY) for b in ids]
    finally:
        generator.close()


def _generations(sessions: sessionmaker[Session]) -> dict[str, ReportGeneration]:
    with sessions() as session:
        return {g.id: g for g in session.scalars(select(ReportGeneration))}


@pytest.mark.parametrize("limit", list(LIMITS))
def test_span_limits_never_detach_a_row_from_its_report(
    db_url: str,
    engine: Engine,
    sessions: sessionmaker[Session],
    business_ids: list[int],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    limit: str,
) -> None:
    ids = [business_ids[0], business_ids[1], 99999]  # two reports and a failed one
    with lineage_pipeline(db_url, engine, span_limits=LIMITS[limit]) as (lineage, exporter):
        results = _generate(sessions, lineage.provider, tmp_path / "reports", ids)
        assert lineage.flush(30)
        exported = exporter.get_finished_spans()
    limits = LIMITS[limit]
    for root in (s for s in exported if s.name == semconv.SPAN_GENERATE):  # the limits did bite
        if limits.max_attribute_length is not None:
            texts = [v for v in (root.attributes or {}).values() if isinstance(v, str)]
            assert max(map(len, texts)) == limits.max_attribute_length
        else:
            assert root.dropped_attributes > 0
    generations = _generations(sessions)
    rows: dict[str, dict[str, Any]] = {
        str(r["report_generation_id"]): r for r in lineage_rows(engine)
    }
    # Keyed by the real ids: no truncated id, no collision, every row joins its generation.
    assert set(rows) == {r.generation_id for r in results} == set(generations)
    for result in results:
        row, generation = rows[result.generation_id], generations[result.generation_id]
        assert row["trace_id"] == generation.trace_id == result.trace_id
        assert row["business_id"] == generation.business_id
        assert (row["template_name"], row["template_version"]) == (
            generation.template_name,
            generation.template_version,
        )
        assert row["template_sha256"] == generation.template_sha256
        assert not row["complete"]  # what the limits cut is named ...
        reasons = row["incomplete_reasons"]
        assert any("_attribute:" in r or r.startswith("dropped_span_data:") for r in reasons)
        if not result.success:
            assert row["status"] == "failed" and row["error_type"] == result.error_type
            assert row["error_message"] == generation.error_message  # the full message
            continue
        assert row["status"] == "completed"
        assert row["output_sha256"] == result.pdf_sha256 == generation.pdf_sha256
        assert row["output_bytes"] == result.pdf_bytes
        snapshot = stored_snapshot(get_row(engine, str(row["report_generation_id"])))
        assert row["inputs_sha256"] == hashlib.sha256(snapshot).hexdigest()
        assert "inputs_snapshot_sha256_mismatch" not in reasons  # ... and nothing else is wrong

    monkeypatch.setenv("D6_DATABASE_URL", db_url)
    monkeypatch.delenv("OTEL_LINEAGE_DATABASE_URL", raising=False)
    shown = CliRunner().invoke(lineage_cli, ["show", results[0].generation_id, "--json"])
    assert shown.exit_code == 0, shown.output
    data = orjson.loads(shown.stdout)
    assert data["report_generation_id"] == results[0].generation_id
    assert data["output_sha256"] == results[0].pdf_sha256


def test_invalid_bytes_in_the_environment_never_lose_a_record(
    db_url: str,
    engine: Engine,
    sessions: sessionmaker[Session],
    business_ids: list[int],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What a process started with OTEL_SERVICE_NAME=$'svc\xff' sees: os.environ decodes
    # invalid bytes as lone surrogates, which UTF-8 encoders and PostgreSQL refuse.
    monkeypatch.setenv("OTEL_SERVICE_NAME", "svc-\udcff" + "x" * 300)
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.version=2.\udcfe,team=\udce9quipe")
    resource = Resource.create()
    provider = TracerProvider(
        sampler=LineageSampler(ParentBased(TraceIdRatioBased(1.0))), resource=resource
    )
    lineage = otel_lineage.configure(
        tracer_provider=provider, database_url=db_url, engines=[engine], set_global=False
    )
    try:
        (result,) = _generate(sessions, provider, tmp_path / "reports", business_ids[:1])
        assert lineage.flush(30)
    finally:
        lineage.shutdown()
        provider.shutdown()
    rows = lineage_rows(engine)
    assert len(rows) == 1
    row: dict[str, Any] = rows[0]
    assert row["report_generation_id"] == result.generation_id
    assert row["service_name"] == "svc-\ufffd" + "x" * 300
    assert row["service_version"] == "2.\ufffd"
    for name in ("service_name", "service_version", "span_tree"):
        assert f"invalid_text:{name}" in row["incomplete_reasons"]
    tree = orjson.loads(decompress(bytes(row["span_tree"])))
    assert tree["resource"]["team"] == "\ufffdquipe"
