"""A failure of one report is that report's failed result, row and lineage row; never a batch's.

Covers: a failed start (the ``ReportGeneration`` insert fails), stored values that cannot be
read, oversized fields, a PDF step past its time limit, one bad business in a batch, and the
request span that names its report.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import Engine, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from d6_reports import db
from d6_reports import telemetry as t
from d6_reports.generator import GenerationOptions, ReportGenerator
from d6_reports.models import Finding, ReportGeneration, WebsiteAssessment
from d6_reports.pdf import PDFOutput
from tests.fast_pdf import FastPDFConverter
from tests.lineage_support import lineage_pipeline, lineage_rows


class SlowConverter(FastPDFConverter):
    def convert(self, html: str, *, asset_root: Path, **options: Any) -> PDFOutput:
        time.sleep(1.0)
        return super().convert(html, asset_root=asset_root, **options)


def _row(sessions: sessionmaker[Session], generation_id: str) -> ReportGeneration:
    with sessions() as session:
        return session.get_one(ReportGeneration, generation_id)


async def test_a_failed_start_is_a_failed_lineage_row(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    # The report database is not migrated: the ReportGeneration insert itself fails.
    unmigrated = db.make_engine(f"sqlite:///{tmp_path / 'unmigrated.db'}")
    with lineage_pipeline(db_url, engine) as (lineage, exporter):
        generator = ReportGenerator(
            db.make_session_factory(unmigrated),
            tmp_path / "reports",
            tracer_provider=lineage.provider,
            converter=FastPDFConverter(),
        )
        result = await generator.generate_report(1)
        generator.close()
        assert lineage.flush()
    unmigrated.dispose()
    assert not result.success
    assert result.error_type == "OperationalError"
    (root,) = [s for s in exporter.get_finished_spans() if s.name == t.SPAN_GENERATE]
    assert root.status.status_code.name == "ERROR"
    assert root.attributes is not None and root.attributes[t.ERROR_TYPE] == "OperationalError"
    (row,) = lineage_rows(engine)
    assert row["report_generation_id"] == result.generation_id
    assert row["status"] == "failed"
    assert row["error_type"] == "OperationalError"
    assert "no such table" in str(row["error_message"])  # the full message stays home


async def test_unreadable_stored_value_fails_that_report_only(
    db_url: str,
    engine: Engine,
    sessions: sessionmaker[Session],
    business_ids: list[int],
    tmp_path: Path,
) -> None:
    if engine.dialect.name == "sqlite":
        # SQLite keeps whatever it is given: a date that does not parse.
        with engine.begin() as conn:
            conn.execute(
                text("UPDATE business SET created_at = 'not a date' WHERE id = :id"),
                {"id": business_ids[0]},
            )
    else:  # PostgreSQL refuses bad types at write time: an oversized nested value instead
        with sessions() as session, session.begin():
            session.execute(
                update(WebsiteAssessment)
                .where(WebsiteAssessment.business_id == business_ids[0])
                .values(extra={"note": "N" * 30_000})
            )
    with lineage_pipeline(db_url, engine) as (lineage, _exporter):
        generator = ReportGenerator(
            sessions,
            tmp_path / "reports",
            tracer_provider=lineage.provider,
            converter=FastPDFConverter(),
        )
        results = await generator.generate_many(business_ids[:3], concurrency=2)
        generator.close()
        assert lineage.flush()
    assert [r.success for r in results] == [False, True, True]
    assert results[0].error_type == "InputsError"
    assert _row(sessions, results[0].generation_id).status == "failed"
    rows = {r["report_generation_id"]: r for r in lineage_rows(engine)}
    assert rows[results[0].generation_id]["status"] == "failed"
    assert {rows[r.generation_id]["status"] for r in results[1:]} == {"completed"}


async def test_oversized_field_is_a_precise_inputs_error(
    sessions: sessionmaker[Session], business_ids: list[int], tmp_path: Path
) -> None:
    assessments = select(WebsiteAssessment.id).where(
        WebsiteAssessment.business_id == business_ids[1]
    )
    with sessions() as session, session.begin():
        session.execute(
            update(Finding)
            .where(Finding.assessment_id.in_(assessments))
            .values(description="x" * 5_000_000)
        )
    generator = ReportGenerator(sessions, tmp_path, converter=FastPDFConverter())
    result = await generator.generate_report(business_ids[1])
    generator.close()
    assert result.error_type == "InputsError"
    assert result.error_message is not None
    assert "finding.description is 5000000 characters, over the 20000-character limit" in (
        result.error_message
    )
    assert _row(sessions, result.generation_id).status == "failed"


async def test_pdf_step_past_its_time_limit_is_a_failed_row_not_a_stuck_one(
    sessions: sessionmaker[Session], business_ids: list[int], tmp_path: Path
) -> None:
    generator = ReportGenerator(sessions, tmp_path, converter=SlowConverter(), pdf_timeout_s=0.05)
    result = await generator.generate_report(business_ids[0])
    assert result.error_type == "timeout"
    row = _row(sessions, result.generation_id)
    assert (row.status, row.error_type) == ("failed", "timeout")
    generator.close()


def test_invalid_template_names_are_refused_before_anything(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    generator = ReportGenerator(sessions, tmp_path, converter=FastPDFConverter())
    for name in ("x" * 101, "bad\udcffname", "a/b", "..", "", " lead"):
        with pytest.raises(ValueError, match="invalid template name"):
            generator.generate_report_sync(1, GenerationOptions(template_name=name))
    generator.close()
    with sessions() as session:
        assert session.query(ReportGeneration).count() == 0


async def test_the_requesting_span_names_its_report(
    sessions: sessionmaker[Session], business_ids: list[int], tmp_path: Path
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    generator = ReportGenerator(
        sessions, tmp_path, converter=FastPDFConverter(), tracer_provider=provider
    )
    with provider.get_tracer("app").start_as_current_span("GET /reports") as request:
        result = await generator.generate_report(business_ids[0])
    generator.close()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    (event,) = [e for e in spans["GET /reports"].events if e.name == t.EVENT_REPORT_REQUESTED]
    assert event.attributes is not None
    assert event.attributes[t.GENERATION_ID] == result.generation_id
    assert event.attributes[t.REPORT_TRACE_ID] == result.trace_id
    root = spans[t.SPAN_GENERATE]
    assert root.context is not None and f"{root.context.trace_id:032x}" == result.trace_id
    assert root.context.trace_id != request.get_span_context().trace_id  # its own trace
    assert [link.context.span_id for link in root.links] == [request.get_span_context().span_id]
