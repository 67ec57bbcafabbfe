"""Reports through the task queue (issue 11): PDFs/s and enqueue-to-completed latency.

``python -m bench.queue`` (also part of ``make bench``) measures, on the same reports (one per
seeded business, the default template):

- PDFs/s through the broker with 1 and 2 worker processes: one ``celery worker`` node
  (``tests/queue/worker_main.py``, i.e. ``d6-reports worker``) with prefork concurrency 1 or 2,
  already running and idle when the reports are enqueued (a deployed fleet), all reports
  enqueued at once by ``enqueue_many``; the figure is reports / (last ``completed_at`` - first
  ``requested_at``), from the rows themselves;
- the same for ``d6-reports generate-all --workers 1/2`` (the local process pool), twice: the
  command's wall time (interpreter, start-up, pool spawn included) and first ``requested_at``
  to last ``completed_at`` (the steady rate, comparable with the queue's);
- enqueue-to-completed latency (``completed_at - requested_at`` of each row), p50/p99: for the
  burst above (mostly time spent queued behind the other reports) and for reports enqueued one
  at a time at a rate the workers keep up with (the broker hop, the claim and the report).

Both sides use the fast PDF stand-in (``tests/fast_pdf.py``), so the figures are the queue's
and the pool's own cost, not WeasyPrint's (40 ms for one page to 400 ms for six here); with real
PDFs both are bound by WeasyPrint and the process count. Everything else is production: lineage
on (1% export sampling, no exporter), reports and lineage in one scratch PostgreSQL database
(``D6_BENCH_POSTGRES_URL``), the broker at ``D6_BENCH_BROKER_URL`` (default the local RabbitMQ).
Each figure is the best of ``--rounds`` (3) interleaved rounds: on a shared two-core machine
other work only ever slows a run down. Results go to ``bench/results/queue.json`` (every
round's PDFs/s included) and ``queue.md``.
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
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from bench.common import pct
from tests.queue.harness import (
    DEFAULT_BROKER_URL,
    ROOT,
    Cluster,
    QueueDatabase,
    base_env,
    broker_reachable,
    generations,
    postgres_database,
    telemetry_env,
    wait_until,
)

RESULTS = Path(__file__).parent / "results"
#: Set in the ``generate-all`` process: its spawned pool workers import this module as their
#: main module (multiprocessing's spawn does), so the switch below reaches them too.
FAST_PDF_ENV = "D6_BENCH_FAST_PDF"
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1/test"


def _use_fast_pdf() -> None:
    """Every ``PDFConverter`` in this process converts with the fast stand-in."""
    from d6_reports import pdf
    from tests.fast_pdf import FastPDFConverter

    setattr(pdf.PDFConverter, "convert", FastPDFConverter.convert)  # noqa: B010


if os.environ.get(FAST_PDF_ENV) == "1":
    _use_fast_pdf()


# -- one side each --------------------------------------------------------------------------------


def _rows(database: QueueDatabase) -> list[dict[str, Any]]:
    with database.engine.connect() as conn:
        query = select(generations.c.status, generations.c.requested_at, generations.c.completed_at)
        return [dict(r) for r in conn.execute(query).mappings()]


def _rate(database: QueueDatabase, count: int) -> dict[str, Any]:
    rows = _rows(database)
    completed = [r for r in rows if r["status"] == "completed"]
    assert len(completed) == count, f"{len(completed)} of {count} reports completed"
    first = min(r["requested_at"] for r in rows)
    last = max(r["completed_at"] for r in completed)
    span = (last - first).total_seconds()
    latencies = [(r["completed_at"] - r["requested_at"]).total_seconds() * 1000 for r in rows]
    return {
        "reports": count,
        "seconds": round(span, 2),
        "pdfs_per_s": round(count / span, 2),
        "latency_ms": _latency(latencies),
    }


def _latency(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": round(statistics.median(values), 1),
        "p99": round(pct(values, 0.99), 1),
        "max": round(max(values), 1),
    }


def generate_all(database: QueueDatabase, workdir: Path, workers: int) -> dict[str, Any]:
    """``d6-reports generate-all --workers N`` with the fast converter, lineage on."""
    database.truncate()
    env = {
        **base_env(),
        **telemetry_env(),
        FAST_PDF_ENV: "1",
        "D6_DATABASE_URL": database.url,
        "OTEL_LINEAGE_DATABASE_URL": database.url,
        "D6_REPORTS_DIR": str(workdir / "reports"),
        "OTEL_LINEAGE_OUTBOX": str(workdir / "generate-all" / "outbox"),
    }
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "bench.queue", "--as-generate-all", str(workers)],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=900,
    )
    wall = time.perf_counter() - started
    out = _rate(database, len(database.business_ids))
    del out["latency_ms"]  # a batch has no enqueue: its rows are made as it goes
    out["command_wall_s"] = round(wall, 2)
    out["command_pdfs_per_s"] = round(len(database.business_ids) / wall, 2)
    return out


def through_queue(
    database: QueueDatabase, broker_url: str, workdir: Path, concurrency: int, paced: int
) -> dict[str, Any]:
    """One node with ``concurrency`` pool processes: a burst of every report, then ``paced``
    reports one at a time (each enqueued after the previous one completed)."""
    from d6_reports import db
    from d6_reports.queue import enqueue_many, enqueue_report
    from d6_reports.queue.app import create_app
    from d6_reports.queue.config import QueueSettings

    database.truncate()
    cluster = Cluster(
        database=database,
        broker_url=broker_url,
        queue=f"d6-bench-{uuid.uuid4().hex[:10]}",
        workdir=workdir / f"queue-{concurrency}",
    )
    app = create_app(QueueSettings(broker_url=broker_url, queue=cluster.queue))
    sessions = db.make_session_factory(database.engine)
    ids = database.business_ids
    try:
        started = time.perf_counter()
        cluster.start(1, concurrency=concurrency)
        startup = time.perf_counter() - started
        started = time.perf_counter()
        enqueue_many(ids, sessions=sessions, app=app)
        enqueued = time.perf_counter() - started
        cluster.wait_completed(len(ids), timeout=900, lineage=False)
        out = _rate(database, len(ids))
        out["worker_startup_s"] = round(startup, 2)
        out["enqueue_many_s"] = round(enqueued, 2)
        if paced:
            database.truncate()
            for done, business_id in enumerate(ids[:paced], start=1):
                enqueue_report(business_id, sessions=sessions, app=app)
                wait_until(
                    _completed_is(database, done),
                    timeout=60,
                    what="a paced report",
                    details=cluster.details,
                    interval=0.01,
                )
            out["paced_latency_ms"] = _rate(database, paced)["latency_ms"]
        cluster.stop_all()
    finally:
        cluster.teardown()
        app.close()
    return out


def _completed_is(database: QueueDatabase, count: int) -> Callable[[], bool]:
    return lambda: _completed(database) == count


def _completed(database: QueueDatabase) -> int:
    with database.engine.connect() as conn:
        query = select(func.count()).where(generations.c.status == "completed")
        return int(conn.scalar(query) or 0)


# -- the section ----------------------------------------------------------------------------------


class Unavailable(RuntimeError):
    """The broker cannot be reached: the section cannot run."""


def broker_url() -> str:
    return os.environ.get("D6_BENCH_BROKER_URL", DEFAULT_BROKER_URL)


def run(pg_url: str, broker: str, reports: int, paced: int, rounds: int = 3) -> dict[str, Any]:
    """The figures of this section; ``Unavailable`` when there is no broker.

    ``rounds`` interleaved rounds of the four runs; each figure is the best round's (other work
    on a shared machine only ever slows a run down), every round's PDFs/s is kept too.
    """
    problem = broker_reachable(broker)
    if problem is not None:
        raise Unavailable(f"broker unreachable: {problem}")
    out: dict[str, Any] = {
        "reports": reports,
        "rounds": rounds,
        "pdf": "fast stand-in (tests/fast_pdf.py)",
    }
    runs: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp, postgres_database(pg_url, reports) as database:
        for round_ in range(1, rounds + 1):
            for workers in (1, 2):
                _announce(f"round {round_}: generate-all --workers {workers}")
                runs.setdefault(f"generate_all_{workers}", []).append(
                    generate_all(database, Path(tmp), workers)
                )
                _announce(f"round {round_}: queue, 1 node, concurrency {workers}")
                runs.setdefault(f"queue_{workers}", []).append(
                    through_queue(
                        database, broker, Path(tmp), workers, paced if workers == 2 else 0
                    )
                )
    for name, results in runs.items():
        best = max(results, key=lambda r: float(r["pdfs_per_s"]))
        out[name] = {**best, "pdfs_per_s_rounds": [r["pdfs_per_s"] for r in results]}
        paced_runs = [r["paced_latency_ms"] for r in results if "paced_latency_ms" in r]
        if paced_runs:
            out[name]["paced_latency_ms"] = min(paced_runs, key=lambda p: float(p["p50"]))
    return out


def markdown(results: dict[str, Any]) -> list[str]:
    """The section of bench/results/latest.md (and queue.md)."""
    lines = [
        f"## Reports through the task queue ({results['reports']} reports, fast PDF stand-in)",
        "",
        f"Best of {results.get('rounds', 1)} interleaved rounds.",
        "",
        "| path | processes | PDFs/s (first request to last completion) | seconds | "
        "command wall s (PDFs/s) | latency p50 / p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for workers in (1, 2):
        batch, queued = results[f"generate_all_{workers}"], results[f"queue_{workers}"]
        lines.append(
            f"| `generate-all --workers {workers}` | {workers} | {batch['pdfs_per_s']} "
            f"| {batch['seconds']} | {batch['command_wall_s']} ({batch['command_pdfs_per_s']}) "
            "| - |"
        )
        lat = queued["latency_ms"]
        lines.append(
            f"| broker, 1 node, concurrency {workers} | {workers} | {queued['pdfs_per_s']} "
            f"| {queued['seconds']} | worker start {queued['worker_startup_s']} s "
            f"| {lat['p50']} / {lat['p99']} (burst) |"
        )
    burst = results["queue_2"]
    lines += [
        "",
        f"`enqueue_many` of the {results['reports']} reports (rows inserted, messages published "
        f"with broker confirms): {burst['enqueue_many_s']} s, while the worker was already "
        "taking them.",
    ]
    paced = burst.get("paced_latency_ms")
    if paced:
        lines += [
            "",
            f"Enqueue-to-completed latency, {paced['n']} reports one at a time (concurrency 2): "
            f"p50 {paced['p50']} ms, p99 {paced['p99']} ms, max {paced['max']} ms.",
        ]
    return lines


def _announce(name: str) -> None:
    print(f"bench: queue: {name} ...", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reports", type=int, default=600, help="reports per run")
    parser.add_argument("--paced", type=int, default=100, help="reports enqueued one at a time")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (best kept)")
    parser.add_argument("--as-generate-all", type=int, metavar="WORKERS", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.as_generate_all is not None:  # the generate-all process of generate_all() above
        from d6_reports.cli import app

        app(["generate-all", "--workers", str(args.as_generate_all), "--json"])
        return
    pg = os.environ.get("D6_BENCH_POSTGRES_URL", DEFAULT_PG)
    broker = broker_url()
    results = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m bench.queue",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        **run(pg, broker, args.reports, args.paced, args.rounds),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "queue.json").write_text(json.dumps(results, indent=2) + "\n")
    text_md = "\n".join(markdown(results)) + "\n"
    (RESULTS / "queue.md").write_text(text_md)
    print(text_md)


if __name__ == "__main__":
    main()
