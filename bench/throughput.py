"""``python -m bench.throughput``: PDFs/s of ``d6-reports generate-all`` by worker count.

Real WeasyPrint, the default template, 48 demo businesses, start-up of the worker processes
included (also a section of ``make bench``). Prints the JSON of the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from d6_reports import db
from d6_reports.seed import seed_demo


def run(tmp: Path, workers: Sequence[int], count: int, rounds: int = 1) -> dict[str, Any]:
    """PDFs/s of `d6-reports generate-all` (default template) over ``count`` businesses,
    start-up of the worker processes included: ``rounds`` runs per worker count, the order
    alternated per round so drift hits each alike, each on a fresh database; medians, and the
    speed-up of each count over the first."""
    seconds: dict[int, list[float]] = {n: [] for n in workers}
    binary = str(Path(sys.executable).parent / "d6-reports")
    for round_no in range(rounds):
        order = list(workers) if round_no % 2 == 0 else list(reversed(workers))
        for n in order:
            run = tmp / f"throughput-{round_no}-{n}"
            run.mkdir()
            url = f"sqlite:///{run / 'throughput.db'}"
            db.upgrade(url)
            engine = db.make_engine(url)
            with db.make_session_factory(engine)() as session:
                seed_demo(session, count=count)
            engine.dispose()
            env = {**os.environ, "D6_DATABASE_URL": url, "D6_REPORTS_DIR": str(run / "pdf")}
            started = time.perf_counter()
            subprocess.run(
                [binary, "generate-all", "--workers", str(n)],
                env=env,
                check=True,
                capture_output=True,
            )
            seconds[n].append(time.perf_counter() - started)
    out: dict[str, Any] = {}
    first = statistics.median(seconds[workers[0]])
    for n in workers:
        median = statistics.median(seconds[n])
        out[f"workers_{n}"] = {
            "reports": count,
            "rounds": rounds,
            "seconds": round(median, 2),
            "seconds_each": [round(x, 2) for x in seconds[n]],
            "pdfs_per_s": round(count / median, 2),
            "speed_up": round(first / median, 2),
        }
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reports", type=int, default=48, help="businesses, one report each")
    parser.add_argument("--rounds", type=int, default=3, help="runs per worker count")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = run(Path(tmp), (1, 2), args.reports, args.rounds)
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
