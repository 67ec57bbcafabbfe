"""``make bench``: report generation and lineage overhead, written to bench/results/.

Sections:
- generation: per-step medians for a one-page and a multi-page report; PDFs/s with 1 and 2
  worker processes.
- overhead (bench/overhead.py, also ``python -m bench.overhead``): the report under interleaved
  tracing/lineage set-ups with paired confidence intervals, growth per KB and per span, the
  floor, and (PostgreSQL) the lineage designs, writer throughput and row visibility gap;
  written to bench/results/overhead.json and overhead.md as well.
- with PostgreSQL: lookups over 1,000,000 rows (bench/queries.py) and
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
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from opentelemetry.trace import NoOpTracerProvider

from bench import throughput
from bench.common import summary
from d6_reports import db
from d6_reports.generator import GenerationOptions, ReportGenerator
from d6_reports.seed import seed_demo

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
    lines += [
        "",
        "| workers | reports | rounds | median seconds | PDFs/s | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for label, data in results["throughput"].items():
        lines.append(
            f"| {label.removeprefix('workers_')} | {data['reports']} | {data.get('rounds', 1)} "
            f"| {data['seconds']} | {data['pdfs_per_s']} | {data.get('speed_up', '')} |"
        )
    if "overhead" in results:
        from bench.overhead import markdown as overhead_markdown

        lines += ["", *overhead_markdown(results["overhead"])]
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
    parser.add_argument("--rounds", type=int, help="bench.overhead's interleaved rounds (40)")
    parser.add_argument("--block", type=int, help="bench.overhead's reports per block (50)")
    parser.add_argument("--throughput-reports", type=int, default=48, help="reports per run")
    parser.add_argument(
        "--throughput-rounds", type=int, default=3, help="generate-all runs per worker count"
    )
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
        results["throughput"] = throughput.run(
            Path(tmp), (1, 2), args.throughput_reports, args.throughput_rounds
        )
        step("tracing and lineage overhead (bench.overhead)")
        from bench import overhead

        pg_args = [] if _postgres_url() else ["--skip-postgres"]
        rounds = ["--rounds", str(args.rounds)] if args.rounds else []
        block = ["--block", str(args.block)] if args.block else []
        results["overhead"] = overhead.main([*pg_args, *rounds, *block])
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
            print("bench: PostgreSQL unreachable, skipping its sections", file=sys.stderr)
        else:
            from bench import durability

            # The design comparison, writer throughput and row visibility gap are part of
            # bench.overhead (above).
            if not args.skip_million:
                from bench import queries

                with durability.postgres_schema(pg) as scoped:
                    step("lookups over 1,000,000 rows (PostgreSQL)")
                    results["lookups"] = queries.run(scoped)
                    if not args.skip_web:
                        from bench import web

                        step("lineage service over the same 1,000,000 rows (PostgreSQL)")
                        results["web"] = web.run(scoped, Path(tmp) / "web")
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
    """The bench's PostgreSQL (``D6_BENCH_POSTGRES_URL``), None when it does not answer."""
    from bench.overhead import postgres_url

    return postgres_url()


def _announce(name: str) -> None:
    print(f"bench: {name} ...", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
