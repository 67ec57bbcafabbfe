"""Queued generations: a row created ``pending`` first, run later, perhaps more than once.

The generator side of the task queue (``generate_report(generation_id=...)``), on real
sessions and a real lineage pipeline, on SQLite and PostgreSQL: the atomic claim, at most one
completion, attempts and their lineage rows, the audit's view of them, and the classification
of an unreachable database as retryable. The broker and worker processes are exercised in
``tests/queue``.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import Engine, event, insert, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from d6_reports import db
from d6_reports import telemetry as t
from d6_reports.generator import (
    MAX_ATTEMPTS,
    GenerationOptions,
    GenerationResult,
    ReportGenerator,
)
from d6_reports.models import Business, GenerationStatus, ReportGeneration
from d6_reports.pdf import PDFOutput
from otel_lineage.delivery.recovery import mark_abandoned
from otel_lineage.reading.query import attempts_of, audit, get_row
from tests.fast_pdf import FastPDFConverter
from tests.lineage_support import lineage_pipeline, lineage_rows

SUMMARY = GenerationOptions(template_name="summary")


def _queue(
    sessions: sessionmaker[Session],
    business_id: int,
    template: str = "summary",
    version: str | None = None,
) -> str:
    """What ``enqueue_report`` does in the caller's process: a pending row, no trace."""
    generation_id = str(uuid.uuid4())
    with sessions() as session:
        session.execute(
            insert(ReportGeneration).values(
                id=generation_id,
                business_id=business_id,
                template_name=template,
                template_version=version,
                status=GenerationStatus.PENDING.value,
                attempts=0,
                requested_at=datetime.now(UTC),
            )
        )
        session.commit()
    return generation_id


def _row(sessions: sessionmaker[Session], generation_id: str) -> ReportGeneration:
    with sessions() as session:
        return session.get_one(ReportGeneration, generation_id)


def _set(sessions: sessionmaker[Session], generation_id: str, **values: object) -> None:
    """Put the row in a state an earlier attempt (or an outage) left it in."""
    with sessions() as session:
        session.execute(
            update(ReportGeneration).where(ReportGeneration.id == generation_id).values(**values)
        )
        session.commit()


async def _run_queued(
    db_url: str,
    engine: Engine,
    sessions: sessionmaker[Session],
    reports_dir: Path,
    business_id: int,
    generation_id: str,
) -> GenerationResult:
    """One delivery of the queued generation, with a real lineage pipeline, flushed."""
    with lineage_pipeline(db_url, engine) as (lineage, _exporter):
        generator = ReportGenerator(
            sessions, reports_dir, tracer_provider=lineage.provider, converter=FastPDFConverter()
        )
        try:
            result = await generator.generate_report(
                business_id, SUMMARY, generation_id=generation_id
            )
        finally:
            generator.close()
        assert lineage.flush()
    return result


class GatedConverter(FastPDFConverter):
    """Holds the first conversion until released: an attempt a redelivery overtakes."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()
        self._first = True
        self._lock = threading.Lock()

    def convert(self, html: str, *, asset_root: Path, **options: Any) -> PDFOutput:
        with self._lock:
            first, self._first = self._first, False
        if first:
            self.entered.set()
            assert self.release.wait(30)
        return super().convert(html, asset_root=asset_root, **options)


async def test_a_queued_generation_runs_once_and_its_row_names_its_trace(
    db_url: str,
    engine: Engine,
    sessions: sessionmaker[Session],
    business_ids: list[int],
    tmp_path: Path,
) -> None:
    generation_id = _queue(sessions, business_ids[0])
    assert _row(sessions, generation_id).trace_id is None  # nothing stamped at enqueue
    with lineage_pipeline(db_url, engine) as (lineage, exporter):
        generator = ReportGenerator(
            sessions, tmp_path, tracer_provider=lineage.provider, converter=FastPDFConverter()
        )
        first = await generator.generate_report(
            business_ids[0], SUMMARY, generation_id=generation_id, task_id="task-1"
        )
        again = await generator.generate_report(
            business_ids[0], SUMMARY, generation_id=generation_id, task_id="task-1"
        )
        generator.close()
        assert lineage.flush()
    assert first.success and first.attempt == 1 and not first.already_finished
    assert again.success and again.already_finished and again.attempt == 1
    assert again.pdf_sha256 == first.pdf_sha256 and again.pdf_path == first.pdf_path
    roots = [s for s in exporter.get_finished_spans() if s.name == t.SPAN_GENERATE]
    assert len(roots) == 1  # the duplicate delivery left no trace
    assert roots[0].attributes is not None
    assert roots[0].attributes[t.ATTEMPT] == 1
    assert roots[0].attributes[t.TASK_ID] == "task-1"
    row = _row(sessions, generation_id)
    assert (row.status, row.attempts, row.trace_id) == ("completed", 1, first.trace_id)
    (lineage_row,) = lineage_rows(engine)
    assert lineage_row["report_generation_id"] == generation_id
    assert (lineage_row["status"], lineage_row["attempt"]) == ("completed", 1)
    assert lineage_row["trace_id"] == first.trace_id


async def test_a_redelivered_task_takes_over_and_the_overtaken_attempt_never_completes(
    db_url: str,
    engine: Engine,
    sessions: sessionmaker[Session],
    business_ids: list[int],
    tmp_path: Path,
) -> None:
    generation_id = _queue(sessions, business_ids[0])
    converter = GatedConverter()
    with lineage_pipeline(db_url, engine) as (lineage, _exporter):
        generator = ReportGenerator(
            sessions, tmp_path, tracer_provider=lineage.provider, converter=converter
        )
        stalled = asyncio.ensure_future(
            generator.generate_report(business_ids[0], SUMMARY, generation_id=generation_id)
        )
        assert await asyncio.to_thread(converter.entered.wait, 30)
        # The data changes meanwhile, so the two attempts' PDFs differ.
        with sessions() as session:
            session.execute(
                update(Business).where(Business.id == business_ids[0]).values(rating=1.5)
            )
            session.commit()
        # The broker redelivers (it thinks the first worker died): a second attempt runs.
        redelivered = await generator.generate_report(
            business_ids[0], SUMMARY, generation_id=generation_id
        )
        converter.release.set()
        overtaken = await stalled
        generator.close()
        assert lineage.flush()
    assert redelivered.success and redelivered.attempt == 2
    assert not overtaken.success and overtaken.attempt == 1
    assert overtaken.error_type == "superseded" and not overtaken.retryable
    row = _row(sessions, generation_id)
    assert (row.status, row.attempts, row.trace_id) == ("completed", 2, redelivered.trace_id)
    assert row.pdf_sha256 == redelivered.pdf_sha256 != overtaken.pdf_sha256
    # The overtaken attempt never replaced the completed PDF, and left no staged file.
    assert redelivered.pdf_path is not None and overtaken.pdf_path is None
    assert hashlib.sha256(redelivered.pdf_path.read_bytes()).hexdigest() == row.pdf_sha256
    assert [p.name for p in redelivered.pdf_path.parent.iterdir()] == [redelivered.pdf_path.name]
    rows = sorted(lineage_rows(engine), key=lambda r: int(str(r["attempt"])))
    assert [(r["attempt"], r["status"], r["error_type"]) for r in rows] == [
        (1, "failed", "superseded"),
        (2, "completed", None),
    ]
    # Readers speak for the generation with its completed attempt, and list the other.
    assert get_row(engine, generation_id)["trace_id"] == redelivered.trace_id
    assert [a["attempt"] for a in attempts_of(engine, generation_id)] == [1, 2]
    report = audit(engine, engine)
    assert (report.generations, report.with_lineage, report.capture_rate) == (1, 1, 1.0)
    assert report.superseded_attempts == 1 and not report.incomplete


async def test_an_attempt_lost_with_its_process_is_resumed_and_not_marked_abandoned_after(
    db_url: str,
    engine: Engine,
    sessions: sessionmaker[Session],
    business_ids: list[int],
    tmp_path: Path,
) -> None:
    generation_id = _queue(sessions, business_ids[0])
    dead_trace = "ab" * 16
    _set(
        sessions,
        generation_id,
        status="generating",
        attempts=1,
        trace_id=dead_trace,
        span_id="cd" * 8,
    )
    resumed = await _run_queued(db_url, engine, sessions, tmp_path, business_ids[0], generation_id)
    assert resumed.success and resumed.attempt == 2
    # Recovering the dead attempt's outbox later must not fail the finished generation.
    assert mark_abandoned(engine, [(generation_id, dead_trace)]) == 0
    assert _row(sessions, generation_id).status == "completed"


async def test_a_generation_recovered_as_abandoned_is_claimed_again(
    db_url: str,
    engine: Engine,
    sessions: sessionmaker[Session],
    business_ids: list[int],
    tmp_path: Path,
) -> None:
    generation_id = _queue(sessions, business_ids[0])
    dead_trace = "ef" * 16
    _set(sessions, generation_id, status="generating", attempts=1, trace_id=dead_trace)
    assert mark_abandoned(engine, [(generation_id, "00" * 16)]) == 0  # another trace: no
    assert mark_abandoned(engine, [(generation_id, dead_trace)]) == 1
    assert _row(sessions, generation_id).error_type == "abandoned"
    result = await _run_queued(db_url, engine, sessions, tmp_path, business_ids[0], generation_id)
    assert result.success and result.attempt == 2
    row = _row(sessions, generation_id)
    assert (row.status, row.error_type, row.error_message) == ("completed", None, None)


async def test_a_final_failure_is_not_run_again(
    db_url: str,
    engine: Engine,
    sessions: sessionmaker[Session],
    business_ids: list[int],
    tmp_path: Path,
) -> None:
    generation_id = _queue(sessions, business_ids[0], template="no_such_template")
    options = GenerationOptions(template_name="no_such_template")
    with lineage_pipeline(db_url, engine) as (lineage, _exporter):
        generator = ReportGenerator(
            sessions, tmp_path, tracer_provider=lineage.provider, converter=FastPDFConverter()
        )
        failed = await generator.generate_report(
            business_ids[0], options, generation_id=generation_id
        )
        again = await generator.generate_report(
            business_ids[0], options, generation_id=generation_id
        )
        generator.close()
        assert lineage.flush()
    assert not failed.success and failed.error_type == "TemplateNotFound"
    assert not failed.retryable
    assert again.already_finished and not again.success
    assert again.error_type == "TemplateNotFound"
    assert again.error_description == "TemplateNotFound: the template or version does not exist"
    assert len(lineage_rows(engine)) == 1


@pytest.mark.parametrize(
    ("business", "template"),
    [(2, "summary"), (1, "audit_report")],
    ids=["other-business", "other-template"],
)
async def test_a_queued_id_that_does_not_match_is_refused_before_any_trace(
    sessions: sessionmaker[Session],
    business_ids: list[int],
    tmp_path: Path,
    business: int,
    template: str,
) -> None:
    generation_id = _queue(sessions, business_ids[0])
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    generator = ReportGenerator(
        sessions, tmp_path, tracer_provider=provider, converter=FastPDFConverter()
    )
    options = GenerationOptions(template_name=template)
    result = await generator.generate_report(business, options, generation_id=generation_id)
    unknown = await generator.generate_report(
        business_ids[0], SUMMARY, generation_id=str(uuid.uuid4())
    )
    generator.close()
    for refused in (result, unknown):
        assert not refused.success and refused.error_type == "GenerationNotFound"
        assert not refused.retryable and refused.trace_id is None
    assert exporter.get_finished_spans() == ()
    assert _row(sessions, generation_id).status == "pending"


@pytest.mark.parametrize(
    ("generation_id", "task_id"),
    [("not-a-uuid", None), (str(uuid.uuid4()).upper(), None), (None, ""), (None, "x" * 256)],
)
def test_bad_ids_are_argument_errors(
    generator: ReportGenerator, generation_id: str | None, task_id: str | None
) -> None:
    with pytest.raises(ValueError, match=r"invalid (generation|task) id"):
        generator.generate_report_sync(1, generation_id=generation_id, task_id=task_id)


async def test_an_unreachable_database_is_a_retryable_failure(tmp_path: Path) -> None:
    # Nothing listens on port 9 of the loopback: the connection is refused at once.
    engine = db.make_engine("postgresql+psycopg://postgres@127.0.0.1:9/test")
    generator = ReportGenerator(
        db.make_session_factory(engine), tmp_path, converter=FastPDFConverter()
    )
    direct = await generator.generate_report(1)
    queued = await generator.generate_report(1, generation_id=str(uuid.uuid4()))
    generator.close()
    engine.dispose()
    for result in (direct, queued):
        assert not result.success
        assert result.error_type == "database_unavailable" and result.retryable
        assert result.error_description == (
            "database_unavailable: the report database could not be reached"
        )


async def test_a_generation_failed_by_an_outage_is_claimed_again(
    db_url: str,
    engine: Engine,
    sessions: sessionmaker[Session],
    business_ids: list[int],
    tmp_path: Path,
) -> None:
    generation_id = _queue(sessions, business_ids[0])
    _set(sessions, generation_id, status="failed", attempts=1, error_type="database_unavailable")
    result = await _run_queued(db_url, engine, sessions, tmp_path, business_ids[0], generation_id)
    assert result.success and result.attempt == 2
    assert _row(sessions, generation_id).status == "completed"


async def test_updates_outside_a_report_trace_never_restamp_the_row(
    db_url: str,
    engine: Engine,
    sessions: sessionmaker[Session],
    business_ids: list[int],
    tmp_path: Path,
) -> None:
    with lineage_pipeline(db_url, engine) as (lineage, _exporter):
        generator = ReportGenerator(
            sessions, tmp_path, tracer_provider=lineage.provider, converter=FastPDFConverter()
        )
        result = await generator.generate_report(business_ids[0], SUMMARY)
        generator.close()
        tracer = lineage.provider.get_tracer("admin")
        with tracer.start_as_current_span("admin request"), sessions() as session:
            row = session.get_one(ReportGeneration, result.generation_id)
            row.error_message = "annotated by support"
            session.commit()
        assert lineage.flush()
    assert _row(sessions, result.generation_id).trace_id == result.trace_id


async def test_a_generation_whose_attempts_never_finish_is_given_up(
    db_url: str,
    engine: Engine,
    sessions: sessionmaker[Session],
    business_ids: list[int],
    tmp_path: Path,
) -> None:
    """A poison message (it kills its worker every time) is redelivered after each death:
    after ``MAX_ATTEMPTS`` claims the generation fails instead of being run for ever."""
    generation_id = _queue(sessions, business_ids[0])
    _set(sessions, generation_id, status="generating", attempts=MAX_ATTEMPTS)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    generator = ReportGenerator(
        sessions, tmp_path, tracer_provider=provider, converter=FastPDFConverter()
    )
    result = await generator.generate_report(business_ids[0], SUMMARY, generation_id=generation_id)
    generator.close()
    assert result.already_finished and not result.success and not result.retryable
    assert result.error_type == "attempts_exhausted" and result.attempt == MAX_ATTEMPTS
    assert exporter.get_finished_spans() == ()
    row = _row(sessions, generation_id)
    assert (row.status, row.error_type, row.attempts) == ("failed", "attempts_exhausted", 10)


async def test_a_message_for_another_version_is_refused(
    sessions: sessionmaker[Session], business_ids: list[int], tmp_path: Path
) -> None:
    generation_id = _queue(sessions, business_ids[0], version="1.0.0")
    generator = ReportGenerator(sessions, tmp_path, converter=FastPDFConverter())
    other = GenerationOptions(template_name="summary", template_version="1.0.1")
    refused = await generator.generate_report(business_ids[0], other, generation_id=generation_id)
    latest = await generator.generate_report(business_ids[0], SUMMARY, generation_id=generation_id)
    asked = GenerationOptions(template_name="summary", template_version="1.0.0")
    ran = await generator.generate_report(business_ids[0], asked, generation_id=generation_id)
    generator.close()
    assert refused.error_type == latest.error_type == "GenerationNotFound"
    assert ran.success and ran.template_version == "1.0.0"
    assert _row(sessions, generation_id).template_version == "1.0.0"


def test_a_claimed_row_names_no_trace_until_its_attempt_starts(
    engine: Engine, sessions: sessionmaker[Session], business_ids: list[int]
) -> None:
    """Between a redelivered attempt's claim and its start the row names no trace, so the
    dead attempt's recovery (which names the dead trace) leaves it alone."""
    generation_id = _queue(sessions, business_ids[0])
    _set(sessions, generation_id, status="generating", attempts=2, trace_id=None)
    assert mark_abandoned(engine, [(generation_id, "ab" * 16)]) == 0
    assert _row(sessions, generation_id).status == "generating"


class LostAtCommit(FastPDFConverter):
    """Cuts the connection at the commit that follows the conversion (the completing one).

    ``after`` loses the server's acknowledgement of a commit that went through; otherwise the
    connection is lost before the commit reaches the server. A proxy cannot time either of
    these to one statement, so the loss is raised from the session's commit events, the
    exception SQLAlchemy raises for a dropped connection; the database, the sessions and the
    lineage pipeline are real.
    """

    def __init__(self, sessions: sessionmaker[Session], *, after: bool) -> None:
        super().__init__()
        self._armed = False
        self._cuts = 1  # the first attempt's only
        hook = "after_commit" if after else "before_commit"
        event.listen(sessions, hook, self._cut)

    def convert(self, html: str, *, asset_root: Path, **options: Any) -> PDFOutput:
        self._armed = self._cuts > 0
        return super().convert(html, asset_root=asset_root, **options)

    def _cut(self, _session: Session) -> None:
        if self._armed:
            self._armed, self._cuts = False, self._cuts - 1
            lost = ConnectionError("server closed the connection unexpectedly")
            raise OperationalError("COMMIT", None, lost, connection_invalidated=True)


@pytest.mark.parametrize("committed", [True, False], ids=["committed", "rolled-back"])
async def test_a_commit_whose_outcome_was_lost_is_settled_by_the_database(
    db_url: str,
    engine: Engine,
    sessions: sessionmaker[Session],
    business_ids: list[int],
    tmp_path: Path,
    committed: bool,
) -> None:
    generation_id = _queue(sessions, business_ids[0])
    converter = LostAtCommit(sessions, after=committed)
    with lineage_pipeline(db_url, engine) as (lineage, _exporter):
        generator = ReportGenerator(
            sessions, tmp_path, tracer_provider=lineage.provider, converter=converter
        )
        lost = await generator.generate_report(
            business_ids[0], SUMMARY, generation_id=generation_id
        )
        again = await generator.generate_report(
            business_ids[0], SUMMARY, generation_id=generation_id
        )
        generator.close()
        assert lineage.flush()
    # The attempt cannot know: it says so, and a retry is safe either way.
    assert not lost.success and lost.error_type == "database_unavailable" and lost.retryable
    assert lost.error_message is not None and "committed" in lost.error_message
    rows = {r["trace_id"]: r for r in lineage_rows(engine)}
    row = _row(sessions, generation_id)
    if committed:  # the database has it: the redelivery runs nothing, the lineage follows
        assert again.success and again.already_finished and again.attempt == 1
        assert (row.status, row.trace_id) == ("completed", lost.trace_id)
        assert len(rows) == 1
        assert (rows[lost.trace_id]["status"], rows[lost.trace_id]["error_type"]) == (
            "completed",
            None,
        )
    else:  # it never happened: the failure stands, and the retry completes the report
        assert again.success and again.attempt == 2 and not again.already_finished
        assert (row.status, row.trace_id) == ("completed", again.trace_id)
        assert rows[lost.trace_id]["status"] == "failed"
        assert rows[again.trace_id]["status"] == "completed"
    report = audit(engine, engine)
    assert (report.generations, report.with_lineage, report.missing) == (1, 1, [])
