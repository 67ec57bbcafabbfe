"""An app on async SQLAlchemy: the generator takes an ``async_sessionmaker``, the stamping
listener stamps rows written through ``AsyncSession``, and the SQL instrumentation is attached
to ``engine.sync_engine`` (sqlite+aiosqlite and postgresql+psycopg, both for real).
"""

from __future__ import annotations

from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from sqlalchemy import Engine, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

import otel_lineage
from d6_reports import telemetry as t
from d6_reports.generator import ReportGenerator
from d6_reports.models import ReportGeneration
from otel_lineage import LineageSampler
from tests.fast_pdf import FastPDFConverter
from tests.lineage_support import lineage_rows


def _async_url(url: str) -> str:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False)
    return url  # postgresql+psycopg is async-capable as it is


async def test_async_sessions_end_to_end(
    db_url: str, engine: Engine, business_ids: list[int], tmp_path: Path
) -> None:
    async_engine = create_async_engine(_async_url(db_url))
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=LineageSampler(ALWAYS_ON))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    lineage = otel_lineage.configure(
        tracer_provider=provider,
        database_url=db_url,
        engines=[async_engine],
        set_global=False,
    )
    try:
        assert lineage.instrumented_engines == [async_engine.sync_engine]
        generator = ReportGenerator(
            async_sessionmaker(async_engine, expire_on_commit=False),
            tmp_path / "reports",
            tracer_provider=provider,
            converter=FastPDFConverter(),
        )
        results = [await generator.generate_report(b) for b in business_ids[:2]]
        results.append(await generator.generate_report(987_654))  # a failed one too
        generator.close()
        assert lineage.flush()
    finally:
        lineage.shutdown()
        await async_engine.dispose()
    assert [r.success for r in results] == [True, True, False]
    with engine.connect() as conn:
        rows = {
            r.id: r
            for r in conn.execute(select(ReportGeneration.__table__)).mappings().all()  # type: ignore[arg-type]
        }
    for result in results:
        row = rows[result.generation_id]
        assert row["trace_id"] == result.trace_id  # stamped through AsyncSession
        assert row["status"] == ("completed" if result.success else "failed")
    lineage_by_id = {r["report_generation_id"]: r for r in lineage_rows(engine)}
    assert {lineage_by_id[r.generation_id]["trace_id"] for r in results} == {
        r.trace_id for r in results
    }
    # SQL spans of the instrumented sync_engine, under the load step of each report.
    spans = exporter.get_finished_spans()
    load_ids = {s.context.span_id for s in spans if s.name == t.SPAN_LOAD_INPUTS and s.context}
    sql = [s for s in spans if s.parent is not None and s.parent.span_id in load_ids]
    assert sql and all(s.instrumentation_scope.name.endswith("sqlalchemy") for s in sql)
