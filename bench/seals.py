"""Seal throughput (rows/s) and ``audit --seals`` time over N synthetic lineage rows.

Rows are bulk-inserted with every sealed column filled (snapshots and span trees are left NULL:
the digest never reads them). Sealing runs ``seal_all`` (50,000 rows per seal, as the writer
and ``otel-lineage seal`` do), then the audit recomputes every digest and the chain. Each figure
is one run on a fresh database: the work is a linear pass, so one run of a million rows is
the measurement.

``make bench`` runs it at 20,000 rows on SQLite. The full-size runs:

    .venv/bin/python -m bench.seals --rows 1000000
    .venv/bin/python -m bench.seals --rows 1000000 --postgres postgresql+psycopg://postgres@127.0.0.1/test

Results go to ``bench/results/seals.json`` and ``bench/results/seals.md``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, text

from bench.queries import FILL
from d6_reports import db
from otel_lineage.delivery.schema import report_lineage
from otel_lineage.evidence.seals import DEFAULT_MAX_ROWS, LATE_GRACE, audit_seals, seal, seal_all

RESULTS = Path(__file__).parent / "results"
_BATCH = 10_000


def _rows(start: int, count: int) -> list[dict[str, Any]]:
    base = datetime(2026, 8, 1, tzinfo=UTC)
    rows = []
    for g in range(start, start + count):
        started = base + timedelta(seconds=10 * g)
        rows.append(
            {
                "report_generation_id": str(uuid.UUID(int=g)),
                "trace_id": f"{g:032x}",
                "root_span_id": f"{g:016x}",
                "business_id": 1 + g % 50_000,
                "template_name": "summary" if g % 5 == 0 else "audit_report",
                "template_version": f"{1 + g % 3}.{g % 4}.0",
                "template_sha256": f"{g % 12:064x}",
                "inputs_sha256": f"{g // 2:064x}",
                "inputs_bytes": 12_000,
                "html_sha256": f"{g:063x}h",
                "output_sha256": f"{g:063x}o",
                "output_bytes": 40_000,
                "output_pages": 1 + g % 7,
                "output_uri": f"file:///data/reports/{g}.pdf",
                "status": "failed" if g % 50 == 0 else "completed",
                "started_at": started,
                "ended_at": started + timedelta(milliseconds=300),
                "duration_ms": 300.0 + g % 97 / 7,
                "steps": [{"name": "report.render_html", "ms": 12.5}],
                "input_tables": ["business", "website_assessment", "finding"],
                "span_count": 14,
                "sampled": g % 10 == 0,
                "complete": True,
                "incomplete_reasons": [],
                "service_name": "d6-reports",
                "created_at": started,
            }
        )
    return rows


def _fill(url: str, rows: int) -> float:
    engine = create_engine(url)
    started = time.perf_counter()
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text(FILL), {"n": rows})  # generated inside PostgreSQL
        else:
            for start in range(1, rows + 1, _BATCH):
                conn.execute(report_lineage.insert(), _rows(start, min(_BATCH, rows + 1 - start)))
    engine.dispose()
    return time.perf_counter() - started


def _analyze(engine: Engine) -> None:
    """What autovacuum does after a bulk change: without statistics PostgreSQL plans the
    sealer's anti-join as two sequential scans."""
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(text("ANALYZE report_lineage"))
            conn.execute(text("ANALYZE lineage_seal_rows"))


def run(url: str, rows: int) -> dict[str, Any]:
    """Fill ``url`` (migrated, empty) with ``rows`` rows; seal them all; audit the seals."""
    fill_s = _fill(url, rows)
    engine = create_engine(url)
    _analyze(engine)
    started = time.perf_counter()
    seals = seal_all(engine, max_rows=DEFAULT_MAX_ROWS)
    seal_s = time.perf_counter() - started
    _analyze(engine)
    # What a writer's periodic seal costs when nothing new was written: while the earlier
    # seals are younger than the grace (every row is looked at), and once they are older
    # (the steady state: only rows above the floor are), simulated with a grace of 0.
    idle_ms = []
    for grace in (LATE_GRACE, timedelta(0)):
        started = time.perf_counter()
        if seal(engine, grace=grace) is not None:
            raise RuntimeError("an idle seal found rows to seal")
        idle_ms.append(round((time.perf_counter() - started) * 1000, 1))
    started = time.perf_counter()
    report = audit_seals(engine)
    audit_s = time.perf_counter() - started
    engine.dispose()
    if not report.ok or report.rows_covered != rows:
        raise RuntimeError(f"the seals of the bench do not hold: {report.as_dict(5)}")
    return {
        "database": engine.dialect.name,
        "rows": rows,
        "seals": len(seals),
        "fill_s": round(fill_s, 1),
        "seal_s": round(seal_s, 2),
        "seal_rows_per_s": round(rows / seal_s),
        "idle_seal_ms": idle_ms[0],
        "idle_seal_steady_ms": idle_ms[1],
        "audit_s": round(audit_s, 2),
        "audit_rows_per_s": round(rows / audit_s),
    }


def markdown(results: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## Tamper-evident seals",
        "",
        f"Seals of {DEFAULT_MAX_ROWS:,} rows at most; the audit recomputes every digest. "
        "Idle seal: the writer's periodic seal with nothing new, while the earlier seals are "
        "younger than the 15-minute grace (every row is looked at) and in the steady state "
        "(only rows above the highest id sealed before the grace are).",
        "",
        "| database | rows | seals | seal s | seal rows/s | idle seal ms (young / steady) | "
        "`audit --seals` s | audit rows/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['database']} | {r['rows']:,} | {r['seals']} | {r['seal_s']} | "
            f"{r['seal_rows_per_s']:,} | {r['idle_seal_ms']} / {r['idle_seal_steady_ms']} | "
            f"{r['audit_s']} | "
            f"{r['audit_rows_per_s']:,} |"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000, help="lineage rows to seal")
    parser.add_argument("--postgres", metavar="URL", help="also run on this PostgreSQL")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'seals.db'}"
        db.upgrade(url)
        results.append(run(url, args.rows))
    if args.postgres:
        from bench.durability import postgres_schema

        with postgres_schema(args.postgres) as scoped:
            results.append(run(scoped, args.rows))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "seals.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "seals.md").write_text("\n".join(markdown(results)) + "\n")
    print("\n".join(markdown(results)))


if __name__ == "__main__":
    main()
