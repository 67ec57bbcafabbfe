"""``make bench``: report generation and lineage overhead, written to bench/results/.

Sections:
- generation: per-step medians for a one-page and a multi-page report; PDFs/s with 1 and 2
  worker processes.
- lineage: the same report generated, interleaved, under four set-ups (no tracing, tracing
  only, tracing + lineage, lineage flag off); plus lineage's own work per report measured
  directly (span hooks and fold on the report thread, writer time per record).
- with PostgreSQL: lineage designs compared, lookups over 1,000,000 rows (bench/queries.py) and
  the lineage service over that same table (bench/web.py: report page and API latency,
  requests/s with 2 uvicorn workers); with a broker too, reports through the task queue
  against ``generate-all`` (bench/queue.py: PDFs/s, enqueue-to-completed latency).

Everything runs on a fresh SQLite database under a temporary directory. Results go to
``bench/results/latest.json`` and a Markdown table to ``bench/results/latest.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import NoOpTracerProvider
from sqlalchemy import create_engine

import otel_lineage
from bench.common import NullExporter, TimedProcessor, TimedStore, summary
from d6_reports import db
from d6_reports.generator import GenerationOptions, ReportGenerator
from d6_reports.seed import seed_demo
from otel_lineage.capture.processor import LineageSpanProcessor

RESULTS = Path(__file__).parent / "results"
ONE_PAGE = GenerationOptions("summary")
MULTI_PAGE = GenerationOptions("audit_report")


def generation_section(url: str, reports: Path, repeat: int) -> dict[str, Any]:
    engine = db.make_engine(url)
    sessions = db.make_session_factory(engine)
    with sessions() as session:
        ids = seed_demo(session)
    generator = ReportGenerator(sessions, reports, tracer_provider=NoOpTracerProvider())
    out: dict[str, Any] = {}
    # Business 6 has 40 findings: the largest demo report.
    for label, options, business in (
        ("one_page", ONE_PAGE, ids[0]),
        ("multi_page", MULTI_PAGE, ids[5]),
    ):
        generator.generate_report_sync(business, options)  # warm: fonts, template compile
        steps: dict[str, list[float]] = {}
        totals, pages = [], 0
        for _ in range(repeat):
            started = time.perf_counter()
            result = generator.generate_report_sync(business, options)
            totals.append((time.perf_counter() - started) * 1000)
            pages = result.pages or 0
            for step, ms in result.timings_ms.items():
                steps.setdefault(step, []).append(ms)
        out[label] = {
            "pages": pages,
            "total_ms": summary(totals),
            "step_median_ms": {k: round(statistics.median(v), 3) for k, v in steps.items()},
        }
    engine.dispose()
    return out


def throughput_section(tmp: Path, workers: Sequence[int], count: int) -> dict[str, Any]:
    """PDFs/s of `d6-reports generate-all` (default template) over ``count`` businesses."""
    url = f"sqlite:///{tmp / 'throughput.db'}"
    db.upgrade(url)
    engine = db.make_engine(url)
    with db.make_session_factory(engine)() as session:
        seed_demo(session, count=count)
    engine.dispose()
    env = {**os.environ, "D6_DATABASE_URL": url, "D6_REPORTS_DIR": str(tmp / "throughput")}
    binary = str(Path(sys.executable).parent / "d6-reports")
    out = {}
    for n in workers:
        started = time.perf_counter()
        subprocess.run(
            [binary, "generate-all", "--workers", str(n)], env=env, check=True, capture_output=True
        )
        elapsed = time.perf_counter() - started
        out[f"workers_{n}"] = {
            "reports": count,
            "seconds": round(elapsed, 2),
            "pdfs_per_s": round(count / elapsed, 2),
        }
    return out


def lineage_section(url: str, reports: Path, rounds: int, ratio: float) -> dict[str, Any]:
    engine = db.make_engine(url)
    sessions = db.make_session_factory(engine)
    with sessions() as session:
        business = seed_demo(session)[0]

    def tracing_provider() -> TracerProvider:
        provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(ratio)))
        provider.add_span_processor(BatchSpanProcessor(NullExporter()))
        return provider

    def lineage_provider(enabled: bool) -> tuple[TracerProvider, otel_lineage.Lineage]:
        provider = TracerProvider(
            sampler=otel_lineage.LineageSampler(ParentBased(TraceIdRatioBased(ratio)))
            if enabled
            else ParentBased(TraceIdRatioBased(ratio))
        )
        provider.add_span_processor(BatchSpanProcessor(NullExporter()))
        lineage = otel_lineage.configure(
            tracer_provider=provider, database_url=url, enabled=enabled, set_global=False
        )
        return provider, lineage

    plain = tracing_provider()
    traced, with_lineage = lineage_provider(True)
    off, flag_off = lineage_provider(False)
    # Swap in the timed subclasses on the live pipeline (same objects, measured).
    assert with_lineage.processor is not None and with_lineage.store is not None
    with_lineage.processor.__class__ = TimedProcessor
    with_lineage.store.__class__ = TimedStore

    modes: dict[str, ReportGenerator] = {
        "no_tracing": ReportGenerator(sessions, reports, tracer_provider=NoOpTracerProvider()),
        "tracing_only": ReportGenerator(sessions, reports, tracer_provider=plain),
        "tracing_lineage": ReportGenerator(sessions, reports, tracer_provider=traced),
        "lineage_flag_off": ReportGenerator(sessions, reports, tracer_provider=off),
    }
    timings: dict[str, list[float]] = {m: [] for m in modes}
    for generator in modes.values():
        generator.generate_report_sync(business, ONE_PAGE)  # warm-up
    with_lineage.flush(30)
    TimedProcessor.hook_ns = TimedStore.write_ns = TimedStore.records = TimedStore.batches = 0
    for _ in range(rounds):  # interleaved so drift hits every mode alike
        for mode, generator in modes.items():
            started = time.perf_counter()
            generator.generate_report_sync(business, ONE_PAGE)
            timings[mode].append((time.perf_counter() - started) * 1000)
    with_lineage.flush(60)
    base = statistics.median(timings["no_tracing"])
    out: dict[str, Any] = {
        "ratio": ratio,
        "per_report_ms": {m: summary(v) for m, v in timings.items()},
        "median_over_no_tracing_ms": {
            m: round(statistics.median(v) - base, 3) for m, v in timings.items()
        },
        "lineage_own_cost_ms_per_report": {
            "span_hooks_and_fold_on_report_thread": round(TimedProcessor.hook_ns / rounds / 1e6, 3),
            "writer_cpu_per_record": round(
                TimedStore.write_ns / max(TimedStore.records, 1) / 1e6, 3
            ),
            "records_written": TimedStore.records,
            "batches": TimedStore.batches,
        },
    }
    for lineage in (with_lineage, flag_off):
        lineage.shutdown()
    for provider in (plain, traced, off):
        provider.shutdown()
    engine.dispose()
    return out


def hook_microbench(n: int) -> dict[str, float]:
    """Hook + fold cost per report with no WeasyPrint noise: synthetic 13-span traces."""
    from opentelemetry import context

    from otel_lineage import semconv as sc
    from otel_lineage.delivery.handoff import MemoryHandOff

    handoff = MemoryHandOff(capacity=n + 1)
    processor = LineageSpanProcessor(handoff)
    provider = TracerProvider(
        sampler=otel_lineage.LineageSampler(ParentBased(TraceIdRatioBased(0.0)))
    )
    provider.add_span_processor(processor)
    plain = TracerProvider(sampler=otel_lineage.LineageSampler(ParentBased(TraceIdRatioBased(0.0))))
    snapshot = b'{"business":{"name":"x"}}' * 600  # ~15 KB, like a mid-size report's inputs

    def one(tracer_provider: TracerProvider) -> None:
        tracer = tracer_provider.get_tracer("bench")
        # The report carrier rides on the root's start Context, as the generator sets it.
        carrier = {sc.GENERATION_ID: "g", sc.INPUTS_SNAPSHOT: snapshot}
        root_context = context.set_value(sc.REPORT_CONTEXT_KEY, carrier, context.Context())
        with tracer.start_as_current_span(
            sc.SPAN_GENERATE, context=root_context, attributes={sc.GENERATION_ID: "g"}
        ):
            for name in sc.STEP_SPANS:
                with tracer.start_as_current_span(name) as span:
                    span.set_attribute(sc.INPUTS_SHA256, "0" * 64)
                    for _ in range(2):
                        with tracer.start_as_current_span("SELECT"):
                            pass

    def run(provider_: TracerProvider) -> float:
        started = time.perf_counter()
        for _ in range(n):
            one(provider_)
        return (time.perf_counter() - started) / n * 1e6

    run(plain)
    run(provider)
    handoff.ack(handoff.take(n + 1, 0))
    without = run(plain)
    with_lineage = run(provider)
    processor.shutdown()
    return {
        "reports": n,
        "spans_per_report": 13,
        "us_per_report_tracing": round(without, 1),
        "us_per_report_tracing_plus_lineage": round(with_lineage, 1),
        "lineage_us_per_report": round(with_lineage - without, 1),
    }


def write_markdown(results: dict[str, Any], path: Path) -> None:
    lines = [
        f"# Benchmark run {results['when']}",
        "",
        f"`{results['command']}` on {results['machine']}",
        "",
    ]
    gen = results["generation"]
    lines += [
        "## Generation (no tracing)",
        "",
        "| report | pages | median ms | p95 ms | load | render | pdf | store |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, data in gen.items():
        s = data["step_median_ms"]
        total = data["total_ms"]
        lines.append(
            f"| {label} | {data['pages']} | {total['median']} | {total['p95']} "
            f"| {s['load_inputs']} | {s['render_html']} | {s['convert_pdf']} | {s['store']} |"
        )
    lines += ["", "| workers | reports | seconds | PDFs/s |", "|---|---|---|---|"]
    for label, data in results["throughput"].items():
        lines.append(
            f"| {label.removeprefix('workers_')} | {data['reports']} | {data['seconds']} "
            f"| {data['pdfs_per_s']} |"
        )
    lin = results["lineage"]
    lines += [
        "",
        f"## Lineage overhead (one-page report, export ratio {lin['ratio']})",
        "",
        "| set-up | median ms | p95 ms | p99 ms | median over no tracing |",
        "|---|---|---|---|---|",
    ]
    for mode, data in lin["per_report_ms"].items():
        lines.append(
            f"| {mode} | {data['median']} | {data['p95']} | {data['p99']} | "
            f"{lin['median_over_no_tracing_ms'][mode]} |"
        )
    own = lin["lineage_own_cost_ms_per_report"]
    micro = results["hooks"]
    lines += [
        "",
        "Lineage's own work per report: "
        f"{own['span_hooks_and_fold_on_report_thread']} ms in span hooks + fold on the "
        f"report thread, {own['writer_cpu_per_record']} ms of writer CPU per record "
        f"({own['records_written']} records in {own['batches']} batches, background "
        "thread).",
        "",
        f"Synthetic 13-span traces, {micro['reports']} reports: tracing "
        f"{micro['us_per_report_tracing']} µs/report, tracing + lineage "
        f"{micro['us_per_report_tracing_plus_lineage']} µs/report "
        f"(lineage {micro['lineage_us_per_report']} µs).",
    ]
    if "designs" in results:
        lines += [
            "",
            "## Lineage designs, added latency on the report thread (PostgreSQL)",
            "",
            "| design | median ms | p95 ms | p99 ms |",
            "|---|---|---|---|",
        ]
        for name, data in results["designs"].items():
            lines.append(f"| {name} | {data['median']} | {data['p95']} | {data['p99']} |")
        writer, gap, put = results["writer"], results["gap"], results["outbox_put"]
        lines += [
            "",
            f"Writer: {writer['records']} records in batches of {writer['batch']}: "
            f"{writer['rows_per_s']} rows/s ({writer['record_bytes']} bytes per record). "
            f"Outbox insert: median {put['median_us']} µs, p99 {put['p99_us']} µs. "
            f"Row visible in the database {gap['median_s']} s (median, max "
            f"{gap['max_s']} s) after generate_report returned.",
        ]
    if "lookups" in results:
        lookups = results["lookups"]
        lines += [
            "",
            f"## Lookups over {lookups['rows']:,} lineage rows (PostgreSQL)",
            "",
            "| query | rows | median ms | plan |",
            "|---|---|---|---|",
        ]
        for name, data in lookups["queries"].items():
            scans = [
                p.strip().split(" on ")[0].lstrip("-> ").strip()
                for p in data["plan"]
                if "Scan" in p
            ]
            lines.append(f"| {name} | {data['rows']} | {data['median_ms']} | {'; '.join(scans)} |")
    if "web" in results:
        from bench.web import markdown

        lines += ["", *markdown(results["web"], results["lookups"]["rows"])]
    if "queue" in results:
        from bench.queue import markdown as queue_markdown

        lines += ["", *queue_markdown(results["queue"])]
    if "fingerprint" in results:
        from bench.fingerprint import markdown as fingerprint_markdown

        lines += ["", *fingerprint_markdown(results["fingerprint"])]
    if "snapshots" in results:
        from bench.snapshots import markdown as snapshots_markdown

        lines += ["", *snapshots_markdown(results["snapshots"])]
    if "seals" in results:
        from bench.seals import markdown as seals_markdown

        lines += ["", *seals_markdown(results["seals"])]
    path.write_text("\n".join(lines) + "\n")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=10, help="generations per report size")
    parser.add_argument("--rounds", type=int, default=60, help="interleaved rounds per set-up")
    parser.add_argument("--ratio", type=float, default=0.1, help="export sampling ratio")
    parser.add_argument("--throughput-reports", type=int, default=48, help="reports per run")
    parser.add_argument("--skip-million", action="store_true", help="skip the 1M-row lookups")
    parser.add_argument("--skip-web", action="store_true", help="skip the lineage service figures")
    parser.add_argument("--skip-queue", action="store_true", help="skip the task queue figures")
    parser.add_argument("--queue-reports", type=int, default=600, help="reports per queue run")
    args = parser.parse_args(argv)
    RESULTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        db.upgrade(url)
        reports = Path(tmp) / "reports"
        results: dict[str, Any] = {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": "make bench",
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}",
        }
        step = _announce
        step("generation")
        results["generation"] = generation_section(url, reports, args.repeat)
        step("throughput")
        results["throughput"] = throughput_section(Path(tmp), (1, 2), args.throughput_reports)
        step("lineage")
        results["lineage"] = lineage_section(url, reports, args.rounds, args.ratio)
        step("hooks")
        results["hooks"] = hook_microbench(2000)
        step("renderer fingerprint")
        from bench import fingerprint

        results["fingerprint"] = fingerprint.run()
        step("protected snapshots")
        from bench import snapshots

        results["snapshots"] = snapshots.run(_postgres_url())
        step("seals (20,000 rows; 1,000,000: python -m bench.seals)")
        from bench import seals

        seals_url = f"sqlite:///{Path(tmp) / 'seals.db'}"
        db.upgrade(seals_url)
        results["seals"] = [seals.run(seals_url, 20_000)]
        pg = _postgres_url()
        if pg is None:
            print("bench: PostgreSQL unreachable, skipping the design comparison", file=sys.stderr)
        else:
            from bench import durability

            with durability.postgres_schema(pg) as scoped:
                step("designs (PostgreSQL)")
                results["designs"] = durability.design_comparison(scoped, reports, args.rounds)
                step("writer throughput (PostgreSQL)")
                results["writer"] = durability.writer_throughput(scoped, 20_000, 500)
                step("row visibility gap (PostgreSQL)")
                results["gap"] = durability.row_visibility_gap(scoped, reports, 20)
            if not args.skip_million:
                from bench import queries

                with durability.postgres_schema(pg) as scoped:
                    step("lookups over 1,000,000 rows (PostgreSQL)")
                    results["lookups"] = queries.run(scoped)
                    if not args.skip_web:
                        from bench import web

                        step("lineage service over the same 1,000,000 rows (PostgreSQL)")
                        results["web"] = web.run(scoped, Path(tmp) / "web")
            results["outbox_put"] = durability.outbox_put_cost(Path(tmp), url, 2000)
            if not args.skip_queue:
                from bench import queue as queue_bench

                step("task queue (PostgreSQL, broker)")
                try:
                    results["queue"] = queue_bench.run(
                        pg, queue_bench.broker_url(), args.queue_reports, 100
                    )
                except queue_bench.Unavailable as exc:
                    print(f"bench: {exc}, skipping the task queue figures", file=sys.stderr)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results, RESULTS / "latest.md")
    print((RESULTS / "latest.md").read_text())


def _postgres_url() -> str | None:
    url = os.environ.get("D6_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1/test")
    try:
        engine = create_engine(url)
        with engine.connect():
            pass
        engine.dispose()
    except Exception:
        return None
    return url


def _announce(name: str) -> None:
    print(f"bench: {name} ...", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
