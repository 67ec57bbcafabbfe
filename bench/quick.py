"""``make bench-quick``: lineage's per-report cost, checked against ``bench/budget.json``.

A few seconds, run by CI after the tests. With the fast PDF stand-in (WeasyPrint's time would
drown lineage's), on a fresh SQLite database, it measures per report:

- spans recorded, SQL queries the generator issues (a ``before_cursor_execute`` listener on the
  report engine; the lineage writer has its own engine and is not counted) and lineage rows,
  in a run traced as in production (SQLAlchemy instrumented, lineage on, every trace sampled);
- lineage's overhead: median report time with lineage on minus tracing only, the two set-ups
  interleaved so machine drift hits both alike. Neither set-up instruments SQLAlchemy: its
  spans are tracing's cost, not lineage's, and the difference is then lineage's own work
  (sampler wrapper, span hooks, fold, hand-off, stamping listener, background writer).

Counts are exact, so any count above the budget fails: a new query or span per report is a
regression someone must either fix or budget for. The overhead is noisy on a shared machine,
so it only has to stay under a generous ceiling. Results go to ``bench/results/quick.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, Sampler, TraceIdRatioBased
from sqlalchemy import Engine, event, func, select
from sqlalchemy.orm import Session, sessionmaker

import otel_lineage
from bench.common import NullExporter
from d6_reports import db
from d6_reports.generator import GenerationOptions, ReportGenerator
from d6_reports.seed import seed_demo
from otel_lineage.delivery.schema import report_lineage
from tests.fast_pdf import FastPDFConverter

HERE = Path(__file__).parent
BUDGET = HERE / "budget.json"
RESULT = HERE / "results" / "quick.json"
OPTIONS = GenerationOptions("summary")
#: Export ratio of the overhead run: the production default, so most traces are not exported.
RATIO = 0.1


@dataclass(frozen=True, slots=True)
class Figures:
    """Per-report figures of one quick run."""

    reports: int
    spans_per_report: float
    queries_per_report: float
    lineage_rows_per_report: float
    tracing_only_median_ms: float
    lineage_median_ms: float
    overhead_ms: float


@dataclass(frozen=True, slots=True)
class Verdict:
    figure: str
    value: float
    limit: str
    ok: bool

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.figure}: {self.value} (budget {self.limit})"


def measure(
    db_url: str,
    engine: Engine,
    sessions: sessionmaker[Session],
    business_id: int,
    reports_dir: Path,
    reports: int,
) -> Figures:
    """Counts from a production-like traced run, then the interleaved overhead run."""
    spans, queries, rows = _counts(db_url, engine, sessions, business_id, reports_dir, reports)
    tracing, lineage = _overhead(db_url, sessions, business_id, reports_dir, reports)
    return Figures(
        reports=reports,
        spans_per_report=spans / reports,
        queries_per_report=queries / reports,
        lineage_rows_per_report=rows / reports,
        tracing_only_median_ms=round(statistics.median(tracing), 3),
        lineage_median_ms=round(statistics.median(lineage), 3),
        overhead_ms=round(statistics.median(lineage) - statistics.median(tracing), 3),
    )


def check(figures: Figures, budget: dict[str, float]) -> list[Verdict]:
    """One verdict per budgeted figure: counts may not grow, rows are exactly one per report."""
    rows = figures.lineage_rows_per_report
    spans, queries = figures.spans_per_report, figures.queries_per_report
    span_cap, query_cap = budget["spans_per_report"], budget["queries_per_report"]
    ceiling = budget["overhead_ms_ceiling"]
    return [
        Verdict("spans per report", spans, f"<= {span_cap}", spans <= span_cap),
        Verdict("SQL queries per report", queries, f"<= {query_cap}", queries <= query_cap),
        Verdict("lineage rows per report", rows, "== 1", rows == 1),
        Verdict(
            "lineage overhead ms",
            figures.overhead_ms,
            f"<= {ceiling}",
            figures.overhead_ms <= ceiling,
        ),
    ]


def _counts(
    db_url: str,
    engine: Engine,
    sessions: sessionmaker[Session],
    business_id: int,
    reports_dir: Path,
    reports: int,
) -> tuple[int, int, int]:
    exporter = InMemorySpanExporter()
    with _pipeline(db_url, ALWAYS_ON, engines=[engine]) as (provider, lineage):
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        generator = ReportGenerator(
            sessions, reports_dir, converter=FastPDFConverter(), tracer_provider=provider
        )
        generator.generate_report_sync(business_id, OPTIONS)  # warm-up, not counted
        assert lineage.flush(30), "lineage did not flush"
        exporter.clear()
        ids: list[str] = []
        with _count_queries(engine) as queries:
            for _ in range(reports):
                ids.append(generator.generate_report_sync(business_id, OPTIONS).generation_id)
        assert lineage.flush(30), "lineage did not flush"
        generator.close()
    with engine.connect() as conn:
        rows = conn.scalar(
            select(func.count())
            .select_from(report_lineage)
            .where(report_lineage.c.report_generation_id.in_(ids))
        )
    return len(exporter.get_finished_spans()), len(queries), int(rows or 0)


def _overhead(
    db_url: str,
    sessions: sessionmaker[Session],
    business_id: int,
    reports_dir: Path,
    rounds: int,
) -> tuple[list[float], list[float]]:
    delegate = ParentBased(TraceIdRatioBased(RATIO))
    tracing = TracerProvider(sampler=delegate, shutdown_on_exit=False)
    tracing.add_span_processor(BatchSpanProcessor(NullExporter()))
    with _pipeline(db_url, delegate) as (traced, lineage):
        traced.add_span_processor(BatchSpanProcessor(NullExporter()))
        modes = {
            name: ReportGenerator(
                sessions, reports_dir, converter=FastPDFConverter(), tracer_provider=provider
            )
            for name, provider in (("tracing", tracing), ("lineage", traced))
        }
        timings: dict[str, list[float]] = {name: [] for name in modes}
        for generator in modes.values():
            generator.generate_report_sync(business_id, OPTIONS)  # warm-up
        for _ in range(rounds):
            for name, generator in modes.items():
                started = time.perf_counter()
                generator.generate_report_sync(business_id, OPTIONS)
                timings[name].append((time.perf_counter() - started) * 1000)
        lineage.flush(30)
        for generator in modes.values():
            generator.close()
    tracing.shutdown()
    return timings["tracing"], timings["lineage"]


@contextmanager
def _pipeline(
    db_url: str, delegate: Sampler, engines: Sequence[Engine] = ()
) -> Iterator[tuple[TracerProvider, otel_lineage.Lineage]]:
    provider = TracerProvider(sampler=otel_lineage.LineageSampler(delegate), shutdown_on_exit=False)
    lineage = otel_lineage.configure(
        tracer_provider=provider, database_url=db_url, engines=engines, set_global=False
    )
    try:
        yield provider, lineage
    finally:
        lineage.shutdown()
        provider.shutdown()


@contextmanager
def _count_queries(engine: Engine) -> Iterator[list[str]]:
    statements: list[str] = []

    def record(*args: Any) -> None:
        statements.append(str(args[2]))  # (conn, cursor, statement, parameters, context, many)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=40, help="reports per measurement")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'quick.db'}"
        db.upgrade(url)
        engine = db.make_engine(url)
        sessions = db.make_session_factory(engine)
        with sessions() as session:
            business_id = seed_demo(session, count=1)[0]
        figures = measure(url, engine, sessions, business_id, Path(tmp) / "reports", args.reports)
        engine.dispose()
    RESULT.parent.mkdir(exist_ok=True)
    RESULT.write_text(json.dumps(asdict(figures), indent=2) + "\n")
    verdicts = check(figures, json.loads(BUDGET.read_text()))
    for verdict in verdicts:
        print(f"bench-quick: {verdict.line()}")
    return 0 if all(v.ok for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
