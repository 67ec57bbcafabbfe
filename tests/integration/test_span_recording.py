"""The span-recording policy: which spans of a report trace lineage records, by setting.

Counts of recorded spans per report, with the real generator (WeasyPrint), SQLAlchemy
instrumented and the real lineage pipeline: under the default ``report`` policy an unsampled
report records its root and four steps only, the SQL spans being left unrecorded; under ``all``
it records as many spans as a sampled (exported) report, which the default policy records whole
as well. Each row says which policy was in force.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, Sampler
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

import otel_lineage
from d6_reports.generator import GenerationOptions, ReportGenerator
from otel_lineage import semconv
from otel_lineage.reading.exports import span_tree
from tests.lineage_support import lineage_pipeline, lineage_rows, make_generator

SUMMARY = GenerationOptions("summary")
#: The report's own spans: the root and its four steps.
REPORT_SPANS = 1 + len(semconv.STEP_SPANS)


def _one_report(
    db_url: str,
    engine: Engine,
    sessions: sessionmaker[Session],
    business_id: int,
    tmp_path: Path,
    *,
    sampler: Sampler,
    span_recording: str,
) -> tuple[dict[str, object], int]:
    """One report's lineage row, and how many of its spans were exported."""
    with lineage_pipeline(db_url, engine, sampler=sampler, span_recording=span_recording) as (
        lineage,
        exporter,
    ):
        result = make_generator(sessions, lineage, tmp_path).generate_report_sync(
            business_id, SUMMARY
        )
        assert lineage.flush(30)
        exported = len(exporter.get_finished_spans())
    (row,) = [r for r in lineage_rows(engine) if r["report_generation_id"] == result.generation_id]
    return row, exported


def test_recorded_spans_per_report_under_each_policy(
    db_url: str,
    engine: Engine,
    sessions: sessionmaker[Session],
    business_ids: list[int],
    tmp_path: Path,
) -> None:
    business = business_ids[0]
    sampled, exported = _one_report(
        db_url, engine, sessions, business, tmp_path, sampler=ALWAYS_ON, span_recording="report"
    )
    whole = int(str(sampled["span_count"]))
    assert whole == exported > REPORT_SPANS  # a sampled trace: recorded whole, SQL included
    assert sampled["span_recording"] == "all"

    unsampled, exported = _one_report(
        db_url, engine, sessions, business, tmp_path, sampler=ALWAYS_OFF, span_recording="report"
    )
    assert exported == 0
    assert unsampled["span_count"] == REPORT_SPANS  # the SQL spans were never recorded
    assert unsampled["span_recording"] == "report"
    assert unsampled["complete"], unsampled["incomplete_reasons"]
    names = [s["name"] for s in span_tree(unsampled)["spans"]]
    assert sorted(names) == sorted([semconv.SPAN_GENERATE, *semconv.STEP_SPANS])
    assert [s["name"] for s in unsampled["steps"]] == list(semconv.STEP_SPANS)  # type: ignore[attr-defined]

    everything, exported = _one_report(
        db_url, engine, sessions, business, tmp_path, sampler=ALWAYS_OFF, span_recording="all"
    )
    assert exported == 0
    assert everything["span_count"] == whole  # the offline copy of the full trace
    assert everything["span_recording"] == "all"


def test_the_policy_comes_from_the_environment(
    db_url: str,
    engine: Engine,
    sessions: sessionmaker[Session],
    business_ids: list[int],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """configure() without a provider builds the sampler from OTEL_LINEAGE_RECORD_SPANS."""
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "lineage_parentbased_always_off")
    counts = {}
    for policy in ("report", "all"):
        monkeypatch.setenv("OTEL_LINEAGE_RECORD_SPANS", policy)
        lineage = otel_lineage.configure(database_url=db_url, engines=[engine], set_global=False)
        try:
            generator = ReportGenerator(sessions, tmp_path, tracer_provider=lineage.provider)
            generation = generator.generate_report_sync(business_ids[0], SUMMARY).generation_id
            assert lineage.flush(30)
        finally:
            lineage.shutdown()
        (row,) = [r for r in lineage_rows(engine) if r["report_generation_id"] == generation]
        assert row["span_recording"] == policy
        counts[policy] = row["span_count"]
    assert counts["report"] == REPORT_SPANS < int(str(counts["all"]))
