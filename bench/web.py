"""The lineage service over 1,000,000 lineage rows in PostgreSQL: latency and throughput.

What a support user waits for, measured through the real stack: ``otel-lineage serve`` started
as an operator starts it (a subprocess, 2 uvicorn workers, a key made with ``otel-lineage keys
create``), HTTP over loopback, the table of ``bench/queries.py`` (filled with its SQL when run
on its own). Figures:

- latency (median, p99) of the report page and of the API lookups (one report by id, search by
  PDF sha256, by inputs sha256, by business, by template version before a date), one request
  at a time on a keep-alive connection, so each figure is the service's own time. On one
  worker: uvicorn's multi-worker listener leaves Nagle on (Kludex/uvicorn#3149), which adds a
  delayed ACK (~40 ms on Linux) to every keep-alive request and would hide the service's time;
- requests/s of ``GET /api/v1/reports/{id}`` with 2 uvicorn workers under concurrent load
  (random ids), with the latency seen under that load.

The load generator (httpx, asyncio) runs in this process, on the same machine: on 2 cores it
competes with the two workers and PostgreSQL, so requests/s is a floor, not a ceiling.

``make bench`` runs it after the 1M-row lookups (same table); ``python -m bench.web`` runs it
alone (fills its own scratch schema) and writes bench/results/web.json and web.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import secrets
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text

from bench.common import summary
from tests.web_server import create_key, serve, service_env

RESULTS = Path(__file__).parent / "results"
#: Report ids sampled from the table for the requests (random, so no one row stays hot).
SAMPLE = 500
_HIDDEN = re.compile(r"<input\b[^>]*>", re.IGNORECASE)
_ATTR = re.compile(r'(\w+)\s*=\s*"([^"]*)"')


def _sample(url: str) -> list[dict[str, Any]]:
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT report_generation_id, output_sha256, inputs_sha256, business_id "
                "FROM report_lineage ORDER BY md5(report_generation_id) LIMIT :n"
            ),
            {"n": SAMPLE},
        )
        sample = [dict(r) for r in rows.mappings()]
    engine.dispose()
    if not sample:
        raise RuntimeError("report_lineage is empty: fill it first (bench.queries.FILL)")
    return sample


def _signed_in(base_url: str, key: str) -> httpx.Client:
    """A browser-like client: signs in through the login form (hidden CSRF fields included)."""
    client = httpx.Client(base_url=base_url, timeout=30.0, headers={"Origin": base_url})
    form = client.get("/login")
    form.raise_for_status()
    fields: dict[str, str] = {}
    for tag in _HIDDEN.findall(form.text):
        attrs = dict(_ATTR.findall(tag))
        if attrs.get("type", "").lower() == "hidden" and "name" in attrs:
            fields[attrs["name"]] = attrs.get("value", "")
    fields["api_key"] = key
    answer = client.post("/login", data=fields, headers={"Referer": f"{base_url}/login"})
    if answer.status_code != 303:
        raise RuntimeError(f"sign-in answered {answer.status_code}: {answer.text[:200]}")
    return client


def _timed(client: httpx.Client, paths: Callable[[int], str], rounds: int) -> dict[str, float]:
    for i in range(10):  # warm: connections, template compile, PostgreSQL plans and caches
        _get(client, paths(i))
    timings = []
    for i in range(rounds):
        path = paths(i)
        started = time.perf_counter()
        _get(client, path)
        timings.append((time.perf_counter() - started) * 1000)
    return summary(timings)


def _get(client: httpx.Client, path: str) -> httpx.Response:
    response = client.get(path)
    if response.status_code != 200:
        raise RuntimeError(f"GET {path} answered {response.status_code}: {response.text[:200]}")
    return response


async def _load(
    base_url: str, key: str, ids: Sequence[str], seconds: float, concurrency: int
) -> dict[str, Any]:
    latencies: list[float] = []
    failures = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(
        base_url=base_url, headers=headers, limits=limits, timeout=30.0
    ) as client:

        async def worker(seed: int) -> None:
            nonlocal failures
            rng = random.Random(seed)
            while time.perf_counter() < deadline:
                path = f"/api/v1/reports/{rng.choice(ids)}"
                started = time.perf_counter()
                response = await client.get(path)
                latencies.append((time.perf_counter() - started) * 1000)
                failures += response.status_code != 200

        started = time.perf_counter()
        await asyncio.gather(*(worker(n) for n in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {
        "concurrency": concurrency,
        "seconds": round(elapsed, 1),
        "requests": len(latencies),
        "failures": failures,
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "latency_ms": summary(latencies),
    }


def run(
    url: str,
    workdir: Path,
    *,
    rounds: int = 200,
    load_seconds: float = 15.0,
    concurrency: int = 16,
    workers: int = 2,
    latency_workers: int = 1,
) -> dict[str, Any]:
    """The figures, against the lineage table at ``url`` (already filled)."""
    workdir.mkdir(parents=True, exist_ok=True)
    sample = _sample(url)
    ids = [str(r["report_generation_id"]) for r in sample]
    env = service_env(workdir, database_url=url, reports_dir=workdir / "reports")
    key = create_key(env, name=f"bench-{secrets.token_hex(4)}", role="support", cwd=workdir)
    lookups: dict[str, Callable[[int], str]] = {
        "report page GET /reports/{id}": lambda i: f"/reports/{ids[i % len(ids)]}",
        "GET /api/v1/reports/{id}": lambda i: f"/api/v1/reports/{ids[i % len(ids)]}",
        "search by PDF sha256": lambda i: (
            f"/api/v1/reports?output_sha256={sample[i % len(sample)]['output_sha256']}"
        ),
        "search by inputs sha256": lambda i: (
            f"/api/v1/reports?inputs_sha256={sample[i % len(sample)]['inputs_sha256']}"
        ),
        "search by business": lambda i: (
            f"/api/v1/reports?business_id={sample[i % len(sample)]['business_id']}"
        ),
        "search by template version before a date": lambda i: (
            "/api/v1/reports?template=audit_report&version=1.1.0"
            f"&until=2026-{9 + i % 3:02d}-01T00:00:00"
        ),
    }
    out: dict[str, Any] = {
        "latency_workers": latency_workers,
        "workers": workers,
        "rounds": rounds,
        "latency_ms": {},
    }
    with serve(env, cwd=workdir, workers=latency_workers) as server:
        page = _signed_in(server.url, key)
        api = httpx.Client(
            base_url=server.url, timeout=30.0, headers={"Authorization": f"Bearer {key}"}
        )
        try:
            for name, paths in lookups.items():
                client = page if name.startswith("report page") else api
                out["latency_ms"][name] = _timed(client, paths, rounds)
        finally:
            page.close()
            api.close()
    with serve(env, cwd=workdir, workers=workers) as server:
        out["report_api_load"] = asyncio.run(_load(server.url, key, ids, load_seconds, concurrency))
    return out


def markdown(results: dict[str, Any], rows: int) -> list[str]:
    """The section of bench/results/latest.md (and web.md)."""
    load = results["report_api_load"]
    lines = [
        f"## Lineage service over {rows:,} lineage rows (PostgreSQL)",
        "",
        f"One request at a time, {results['rounds']} per row, "
        f"{results['latency_workers']} uvicorn worker:",
        "",
        "| request | median ms | p95 ms | p99 ms |",
        "|---|---|---|---|",
    ]
    for name, data in results["latency_ms"].items():
        lines.append(f"| {name} | {data['median']} | {data['p95']} | {data['p99']} |")
    lat = load["latency_ms"]
    lines += [
        "",
        f"`GET /api/v1/reports/{{id}}` with {results['workers']} uvicorn workers under load "
        f"({load['concurrency']} concurrent clients, "
        f"{load['seconds']} s, random ids): **{load['requests_per_s']} requests/s** "
        f"({load['requests']} requests, {load['failures']} failed; latency median "
        f"{lat['median']} ms, p99 {lat['p99']} ms). The load generator shares the machine.",
    ]
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    from bench import durability, queries
    from bench.__main__ import _postgres_url

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000, help="lineage rows to fill")
    parser.add_argument("--rounds", type=int, default=200, help="requests per lookup")
    parser.add_argument("--load-seconds", type=float, default=15.0)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args(argv)
    pg = _postgres_url()
    if pg is None:
        sys.exit("bench.web: PostgreSQL unreachable (D6_BENCH_POSTGRES_URL)")
    with durability.postgres_schema(pg) as scoped, tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(scoped)
        with engine.begin() as conn:
            print(f"bench.web: filling {args.rows:,} rows ...", file=sys.stderr, flush=True)
            conn.execute(text(queries.FILL), {"n": args.rows})
        with engine.begin() as conn:  # committed: a rolled-back ANALYZE leaves no statistics
            conn.execute(text("ANALYZE report_lineage"))
        engine.dispose()
        print("bench.web: measuring ...", file=sys.stderr, flush=True)
        results = run(
            scoped,
            Path(tmp),
            rounds=args.rounds,
            load_seconds=args.load_seconds,
            concurrency=args.concurrency,
        )
    results["rows"] = args.rows
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "web.json").write_text(json.dumps(results, indent=2) + "\n")
    text_md = "\n".join(markdown(results, args.rows)) + "\n"
    (RESULTS / "web.md").write_text(text_md)
    print(text_md)


if __name__ == "__main__":
    main()
