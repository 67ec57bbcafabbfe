"""Lineage end to end: real generator, real SDK, real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, TraceIdRatioBased
from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from bench.quick import measure
from d6_reports.generator import GenerationOptions
from d6_reports.models import ReportGeneration
from d6_reports.templates import TemplateRegistry
from otel_lineage.cli import app as lineage_cli
from otel_lineage.delivery.schema import report_lineage
from otel_lineage.reading.query import get_row
from otel_lineage.reading.verify import stored_snapshot
from tests.lineage_support import lineage_pipeline, lineage_rows, make_generator

SUMMARY = GenerationOptions("summary")
#: The PRP's budget for lineage's added latency per report.
PRP_OVERHEAD_BUDGET_MS = 100.0


def _generations(sessions: sessionmaker[Session]) -> dict[str, ReportGeneration]:
    with sessions() as session:
        return {g.id: g for g in session.scalars(select(ReportGeneration))}


@pytest.mark.parametrize("ratio", [1.0, 0.01, 0.0])
def test_100_percent_capture_requirement(
    db_url: str,
    engine: Engine,
    sessions: sessionmaker[Session],
    business_ids: list[int],
    tmp_path: Path,
    ratio: float,
) -> None:
    """Every report gets exactly one lineage row, joined to its generation, at any ratio."""
    with lineage_pipeline(db_url, engine, ratio=ratio) as (lineage, exporter):
        generator = make_generator(sessions, lineage, tmp_path)
        ids = business_ids * 3
        results = [generator.generate_report_sync(b, SUMMARY) for b in ids]
        assert lineage.flush(30)
        exported_traces = {
            s.context.trace_id for s in exporter.get_finished_spans() if s.context is not None
        }
    rows = lineage_rows(engine)
    generations = _generations(sessions)
    assert len(rows) == len(results) == len(generations) == 18
    for row in rows:
        generation = generations[str(row["report_generation_id"])]
        assert generation.trace_id == row["trace_id"]  # stamped in the same transaction
        assert generation.business_id == row["business_id"]
        assert row["complete"], row["incomplete_reasons"]
        assert row["sampled"] == (int(str(row["trace_id"]), 16) in exported_traces)
        assert row["span_count"] >= 5  # root + 4 steps + the SQLAlchemy spans
    sampled = sum(bool(r["sampled"]) for r in rows)
    if ratio == 1.0:
        assert sampled == len(rows)
    if ratio == 0.0:
        assert sampled == 0 and exported_traces == set()


def test_lineage_with_report_generator(
    db_url: str,
    engine: Engine,
    sessions: sessionmaker[Session],
    business_ids: list[int],
    tmp_path: Path,
) -> None:
    with lineage_pipeline(db_url, engine, ratio=0.0) as (lineage, _):
        generator = make_generator(sessions, lineage, tmp_path)
        result = generator.generate_report_sync(business_ids[5])
        assert lineage.flush(30)
    (row,) = lineage_rows(engine)
    assert result.pdf_path is not None
    pdf = result.pdf_path.read_bytes()
    assert row["output_sha256"] == hashlib.sha256(pdf).hexdigest() == result.pdf_sha256
    assert row["output_bytes"] == len(pdf)
    assert row["output_pages"] == result.pages and result.pages and result.pages >= 5
    assert row["output_uri"] == result.pdf_path.resolve().as_uri()
    snapshot = stored_snapshot(get_row(engine, result.generation_id))
    assert hashlib.sha256(snapshot).hexdigest() == row["inputs_sha256"]
    assert len(snapshot) == row["inputs_bytes"]
    assert b'"schema":"d6.report-inputs/1"' in snapshot
    lock = TemplateRegistry().locked_sha256("audit_report", str(row["template_version"]))
    assert row["template_sha256"] == lock
    assert [s["name"] for s in row["steps"]] == [  # type: ignore[attr-defined]
        "report.load_inputs",
        "report.render_html",
        "report.convert_pdf",
        "report.store",
    ]
    assert row["input_tables"] == ["business", "website_assessment", "finding"]
    assert row["status"] == "completed" and row["error_type"] is None
    assert row["report_generation_id"] == result.generation_id
    assert row["duration_ms"] and float(str(row["duration_ms"])) > 0


def test_performance_overhead(
    db_url: str,
    engine: Engine,
    sessions: sessionmaker[Session],
    business_ids: list[int],
    tmp_path: Path,
) -> None:
    """Lineage's added latency per report (lineage on vs tracing only, interleaved).

    Same measurement as ``make bench-quick`` (bench/quick.py), here on each database backend.
    The 100 ms budget is the PRP's; the measurement is around 1 ms, so this cannot flap.
    """
    figures = measure(db_url, engine, sessions, business_ids[0], tmp_path / "reports", 40)
    print(
        f"\nlineage overhead over {figures.reports} reports ({engine.dialect.name}): "
        f"{figures.overhead_ms} ms per report (median {figures.lineage_median_ms} ms with "
        f"lineage, {figures.tracing_only_median_ms} ms tracing only); per report "
        f"{figures.spans_per_report} spans, {figures.queries_per_report} SQL queries, "
        f"{figures.lineage_rows_per_report} lineage rows"
    )
    assert figures.lineage_rows_per_report == 1
    assert figures.overhead_ms < PRP_OVERHEAD_BUDGET_MS


def test_feature_flag_disabled(
    db_url: str,
    engine: Engine,
    sessions: sessionmaker[Session],
    business_ids: list[int],
    tmp_path: Path,
) -> None:
    delegate = ParentBased(TraceIdRatioBased(0.5))
    with lineage_pipeline(db_url, engine, enabled=False, sampler=delegate) as (lineage, _):
        assert lineage.processor is None and lineage.stamper is None and not lineage.enabled
        assert lineage.provider.sampler is delegate
        generator = make_generator(sessions, lineage, tmp_path)
        for b in business_ids[:3]:
            assert generator.generate_report_sync(b, SUMMARY).success
        lineage.flush(5)
    assert lineage_rows(engine) == []
    assert all(g.trace_id is None for g in _generations(sessions).values())


def test_failed_generations_get_rows_with_their_error(
    db_url: str,
    engine: Engine,
    sessions: sessionmaker[Session],
    business_ids: list[int],
    tmp_path: Path,
) -> None:
    with lineage_pipeline(db_url, engine, ratio=0.0) as (lineage, _):
        generator = make_generator(sessions, lineage, tmp_path)
        missing = generator.generate_report_sync(424242)
        bad_version = generator.generate_report_sync(
            business_ids[0], GenerationOptions("audit_report", "7.7.7")
        )
        assert lineage.flush(30)
    rows = {r["report_generation_id"]: r for r in lineage_rows(engine)}
    row = rows[missing.generation_id]
    assert (row["status"], row["error_type"]) == ("failed", "BusinessNotFound")
    assert row["error_message"] == "business 424242 does not exist"
    assert row["complete"]  # a failure is recorded whole: no snapshot was ever made
    assert row["steps"][0]["status"] == "error"  # type: ignore[index]
    row = rows[bad_version.generation_id]
    assert (row["status"], row["error_type"], row["template_version"]) == (
        "failed",
        "TemplateNotFound",
        "7.7.7",
    )


def test_concurrent_generation_asyncio_and_threads(
    db_url: str,
    engine: Engine,
    sessions: sessionmaker[Session],
    business_ids: list[int],
    tmp_path: Path,
) -> None:
    with lineage_pipeline(db_url, engine, ratio=0.1) as (lineage, _):
        generator = make_generator(sessions, lineage, tmp_path)
        ids = (business_ids * 34)[:200]
        results = asyncio.run(generator.generate_many(ids, SUMMARY, concurrency=16))
        assert all(r.success for r in results)

        def worker() -> None:
            for b in business_ids[:5]:
                generator.generate_report_sync(b, SUMMARY)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert lineage.flush(60)
        assert lineage.processor is not None
        counts = lineage.processor.stats.snapshot()
    rows = lineage_rows(engine)
    assert len(rows) == len(_generations(sessions)) == 220
    assert all(r["complete"] for r in rows)
    assert (counts.folded, counts.written, counts.dropped, counts.errors) == (220, 220, 0, 0)
    assert len({r["trace_id"] for r in rows}) == 220


def test_lineage_never_traces_itself(
    db_url: str,
    engine: Engine,
    sessions: sessionmaker[Session],
    business_ids: list[int],
    tmp_path: Path,
) -> None:
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    with lineage_pipeline(db_url, engine, ratio=1.0) as (lineage, exporter):
        assert lineage.store is not None
        # Instrument the store's own engine too, as zero-code mode's global wrapping would.
        SQLAlchemyInstrumentor().uninstrument()
        SQLAlchemyInstrumentor().instrument(
            engines=[engine, lineage.store.engine], tracer_provider=lineage.provider
        )
        generator = make_generator(sessions, lineage, tmp_path)
        for b in business_ids[:3]:
            generator.generate_report_sync(b, SUMMARY)
        assert lineage.flush(30)
        spans = exporter.get_finished_spans()
    statements = [str((s.attributes or {}).get("db.statement", "")) for s in spans]
    assert any("report_generation" in s for s in statements)  # the service's SQL is traced
    assert not any("report_lineage" in s or "lineage_counters" in s for s in statements)
    assert len(lineage_rows(engine)) == 3
    roots = [s for s in spans if s.parent is None]
    assert {s.name for s in roots} == {"report.generate"}


def test_processor_failure_never_reaches_the_caller(
    db_url: str,
    engine: Engine,
    sessions: sessionmaker[Session],
    business_ids: list[int],
    tmp_path: Path,
) -> None:
    with lineage_pipeline(db_url, engine) as (lineage, _):
        assert lineage.processor is not None

        def explode(_record: object) -> bool:
            raise RuntimeError("hand-off is broken")

        lineage.processor.handoff.put = explode  # type: ignore[method-assign]
        generator = make_generator(sessions, lineage, tmp_path)
        result = generator.generate_report_sync(business_ids[0], SUMMARY)
        assert result.success
        assert lineage.processor.stats.snapshot().errors >= 1


def test_audit_and_show(
    db_url: str,
    engine: Engine,
    sessions: sessionmaker[Session],
    business_ids: list[int],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("D6_DATABASE_URL", db_url)
    monkeypatch.delenv("OTEL_LINEAGE_DATABASE_URL", raising=False)
    with lineage_pipeline(db_url, engine, ratio=0.0) as (lineage, _):
        generator = make_generator(sessions, lineage, tmp_path)
        ok = generator.generate_report_sync(business_ids[0], SUMMARY)
        failed = generator.generate_report_sync(99999)
        assert lineage.flush(30)
    runner = CliRunner()
    audit = runner.invoke(lineage_cli, ["audit"])
    assert audit.exit_code == 0, audit.output
    assert "capture rate 100.00%" in audit.output
    shown = runner.invoke(lineage_cli, ["show", ok.generation_id, "--json"])
    assert shown.exit_code == 0, shown.output
    import orjson

    data = orjson.loads(shown.stdout)
    assert data["report_generation_id"] == ok.generation_id
    assert data["inputs"]["sha256_matches"] is True
    assert data["output_sha256"] == ok.pdf_sha256
    text = runner.invoke(lineage_cli, ["show", failed.generation_id])
    assert text.exit_code == 0 and "BusinessNotFound" in text.output
    unknown = runner.invoke(lineage_cli, ["show", "no-such-report"])
    assert unknown.exit_code == 1 and "no lineage row" in unknown.output
    with engine.begin() as conn:
        conn.execute(
            delete(report_lineage).where(report_lineage.c.report_generation_id == ok.generation_id)
        )
    missing = runner.invoke(lineage_cli, ["audit", "--json"])
    assert missing.exit_code == 1
    report = orjson.loads(missing.stdout)
    assert report["capture_rate"] == 0.5
    assert [m["report_generation_id"] for m in report["missing"]] == [ok.generation_id]
    assert runner.invoke(lineage_cli, ["audit", "--since", "2999-01-01"]).exit_code == 0
    assert runner.invoke(lineage_cli, ["audit", "--since", "yesterday"]).exit_code == 2


def test_always_off_delegate_still_records_lineage(
    db_url: str,
    engine: Engine,
    sessions: sessionmaker[Session],
    business_ids: list[int],
    tmp_path: Path,
) -> None:
    with lineage_pipeline(db_url, engine, sampler=ALWAYS_OFF) as (lineage, exporter):
        generator = make_generator(sessions, lineage, tmp_path)
        generator.generate_report_sync(business_ids[0], SUMMARY)
        assert lineage.flush(30)
        assert exporter.get_finished_spans() == ()
    assert len(lineage_rows(engine)) == 1
