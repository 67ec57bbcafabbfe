"""Lookups against 1,000,000 lineage rows in PostgreSQL: timings and query plans.

Rows are generated inside PostgreSQL (``generate_series``) with realistic key distributions:
50,000 businesses, 12 template versions, four months of start times, unique report ids, trace ids
and PDF digests, inputs digests shared by ~2 reports each. Snapshots and span trees are left NULL
(the lookups never read them, and 3 GB of blobs would only measure the disk). Each query runs 20
times after a warm-up; the median is reported with the plan PostgreSQL chose.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from sqlalchemy import create_engine, text

FILL = """
INSERT INTO report_lineage (
    report_generation_id, trace_id, root_span_id, business_id, template_name, template_version,
    template_sha256, inputs_sha256, inputs_bytes, html_sha256, output_sha256, output_bytes,
    output_pages, output_uri, status, started_at, ended_at, duration_ms, steps, input_tables,
    span_count, sampled, complete, incomplete_reasons, service_name, created_at)
SELECT
    (md5('r' || g)::uuid)::text,
    md5('t' || g),
    substr(md5('s' || g), 1, 16),
    1 + (g % 50000),
    CASE WHEN g % 5 = 0 THEN 'summary' ELSE 'audit_report' END,
    (1 + g % 3) || '.' || (g % 4) || '.0',
    md5('template' || (g % 12)) || md5('x' || (g % 12)),
    md5('i' || (g / 2)) || md5('j' || (g / 2)),
    12000,
    md5('h' || g) || md5('hh' || g),
    md5('o' || g) || md5('oo' || g),
    40000,
    1 + g % 7,
    'file:///data/reports/' || g || '.pdf',
    CASE WHEN g % 50 = 0 THEN 'failed' ELSE 'completed' END,
    timestamptz '2026-08-01' + (g * interval '10 seconds'),
    timestamptz '2026-08-01' + (g * interval '10 seconds') + interval '300 milliseconds',
    300.0,
    '[]', '["business", "website_assessment", "finding"]',
    14, g % 10 = 0, true, '[]', 'd6-reports', now()
FROM generate_series(1, :n) AS g
"""

QUERIES: dict[str, str] = {
    "by report id": "SELECT * FROM report_lineage WHERE report_generation_id = :v",
    "by PDF sha256": "SELECT * FROM report_lineage WHERE output_sha256 = :v",
    "by inputs sha256": "SELECT * FROM report_lineage WHERE inputs_sha256 = :v",
    "by business, newest 50": (
        "SELECT * FROM report_lineage WHERE business_id = :v ORDER BY started_at DESC LIMIT 50"
    ),
    "by template version before a date, newest 50": (
        "SELECT * FROM report_lineage WHERE template_name = 'audit_report' "
        "AND template_version = '1.1.0' AND started_at < :v ORDER BY started_at DESC LIMIT 50"
    ),
}


def run(url: str, rows: int = 1_000_000) -> dict[str, Any]:
    engine = create_engine(url)
    out: dict[str, Any] = {"rows": rows, "queries": {}}
    with engine.begin() as conn:
        started = time.perf_counter()
        conn.execute(text(FILL), {"n": rows})
        out["fill_seconds"] = round(time.perf_counter() - started, 1)
    with engine.begin() as conn:  # committed: a rolled-back ANALYZE leaves no statistics
        conn.execute(text("ANALYZE report_lineage"))
    with engine.connect() as conn:
        values = {
            "by report id": conn.scalar(text("SELECT (md5('r' || 777777)::uuid)::text")),
            "by PDF sha256": conn.scalar(text("SELECT md5('o' || 123457) || md5('oo' || 123457)")),
            "by inputs sha256": conn.scalar(text("SELECT md5('i' || 4242) || md5('j' || 4242)")),
            "by business, newest 50": 4242,
            "by template version before a date, newest 50": "2026-10-01",
        }
        for name, sql in QUERIES.items():
            params = {"v": values[name]}
            conn.execute(text(sql), params).fetchall()  # warm
            timings = []
            for _ in range(20):
                started = time.perf_counter()
                found = conn.execute(text(sql), params).fetchall()
                timings.append((time.perf_counter() - started) * 1000)
            plan = conn.execute(text(f"EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) {sql}"), params)
            out["queries"][name] = {
                "rows": len(found),
                "median_ms": round(statistics.median(timings), 3),
                "plan": [line for (line,) in plan],
            }
    engine.dispose()
    return out
