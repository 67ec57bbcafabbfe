"""Protected snapshots: what dedup saves, what encryption costs, and on which thread.

Three measurements (issue 12 part 4; target: < 0.1 ms added to the report thread):

- **Report thread**: real reports (fast PDF stand-in, so WeasyPrint's noise does not drown the
  figure) through two real lineage pipelines, one with a key file and one without, interleaved.
  The time in the lineage processor's span hooks (fold and outbox put included) is all lineage
  does on the report thread; encryption is not part of it, so the difference should be noise.
  The same run gives the writer's CPU per record and the dedup figures (100 reports of the
  same 10 businesses with unchanged data: bytes stored once per content, against one inline
  copy per row as before revision 0010).
- **Writer thread, isolated**: CPU time of ``LineageStore.upsert`` per record on records of
  unchanged data (the run's real snapshots), in batches of 50: inline as before revision 0010
  (the baseline), deduplicated in clear, deduplicated and encrypted. SQLite, and PostgreSQL when
  reachable.
- One AES-256-GCM pass over the largest real compressed snapshot.

Run: ``.venv/bin/python -m bench.snapshots`` (also part of ``make bench``).
"""

from __future__ import annotations

import base64
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from hashlib import sha256
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from sqlalchemy import Connection, Engine, func, select

import otel_lineage
from bench.common import summary
from d6_reports import db
from d6_reports.generator import GenerationOptions, ReportGenerator
from d6_reports.seed import seed_demo
from otel_lineage.delivery.schema import lineage_snapshots, report_lineage
from otel_lineage.delivery.store import LineageStore
from otel_lineage.protection.keys import KEY_FILE_VARIABLE, parse_key_file
from otel_lineage.protection.snapshots import SnapshotStore, associated_data
from otel_lineage.record import LineageRecord, compress, decompress
from tests.fast_pdf import FastPDFConverter

RESULTS = Path(__file__).parent / "results"
BUSINESSES = 10
#: Reports per business and set-up in the report-thread run.
ROUNDS = 10
BATCH = 50


class _Inline(SnapshotStore):
    """Snapshots left in the row, as before revision 0010: the writer's baseline."""

    def prepare(self, conn: Connection, rows: Any) -> None:
        return None


def _key_file(directory: Path) -> Path:
    path = directory / "master.keys"
    path.write_text(f"bench:{base64.b64encode(os.urandom(32)).decode()}\n")
    path.chmod(0o600)
    return path


@contextmanager
def _env(name: str, value: str | None) -> Iterator[None]:
    old = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def _timed(target: Any, name: str, clock: Callable[[], int], totals: dict[str, int]) -> None:
    """Wrap ``target.name`` on the instance, adding its time to ``totals[name]``."""
    method = getattr(target, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = clock()
        try:
            return method(*args, **kwargs)
        finally:
            totals[name] = totals.get(name, 0) + clock() - started

    setattr(target, name, wrapper)


def _hooks(totals: dict[str, int]) -> int:
    return totals.get("on_start", 0) + totals.get("on_end", 0)


def report_thread(tmp: Path, real_snapshots: dict[int, bytes]) -> dict[str, Any]:
    """Hooks + fold per report with and without encryption, writer CPU per record, dedup.

    Fills ``real_snapshots`` (business id -> snapshot) for the isolated writer figures.
    """
    reports_url = f"sqlite:///{tmp / 'reports.db'}"
    db.upgrade(reports_url)
    engine = db.make_engine(reports_url)
    sessions = db.make_session_factory(engine)
    with sessions() as session:
        businesses = seed_demo(session, count=BUSINESSES)
    key_file = _key_file(tmp)
    setups: dict[str, dict[str, Any]] = {}
    for label, keys in (("clear", None), ("encrypted", str(key_file))):
        url = f"sqlite:///{tmp / f'lineage-{label}.db'}"
        db.upgrade(url)
        provider = TracerProvider(sampler=otel_lineage.LineageSampler(ALWAYS_ON))
        with _env(KEY_FILE_VARIABLE, keys):
            lineage = otel_lineage.configure(
                tracer_provider=provider, database_url=url, set_global=False
            )
        assert lineage.processor is not None and lineage.store is not None
        totals: dict[str, int] = {}
        for hook in ("on_start", "on_end"):
            _timed(lineage.processor, hook, time.perf_counter_ns, totals)
        _timed(lineage.store, "upsert", time.thread_time_ns, totals)
        generator = ReportGenerator(
            sessions, tmp / "pdf", converter=FastPDFConverter(), tracer_provider=provider
        )
        setups[label] = {
            "url": url,
            "lineage": lineage,
            "totals": totals,
            "generator": generator,
            "samples": [],
        }
    options = GenerationOptions("summary")
    for setup in setups.values():  # warm-up, then start counting
        setup["generator"].generate_report_sync(businesses[0], options)
        setup["lineage"].flush(30)
        setup["totals"].clear()
    for _ in range(ROUNDS):
        for business in businesses:
            for setup in setups.values():  # interleaved: drift hits both alike
                before = _hooks(setup["totals"])
                setup["generator"].generate_report_sync(business, options)
                setup["samples"].append((_hooks(setup["totals"]) - before) / 1e6)
    records = ROUNDS * len(businesses)
    out: dict[str, Any] = {"reports_per_setup": records}
    for label, setup in setups.items():
        setup["lineage"].flush(60)
        lineage_engine = db.make_engine(setup["url"])
        with lineage_engine.connect() as conn:
            stored = _dedup(conn)
            if label == "clear":
                found = conn.execute(
                    select(lineage_snapshots.c.business_id, lineage_snapshots.c.data)
                )
                real_snapshots.update({b: decompress(bytes(d)) for b, d in found})
        lineage_engine.dispose()
        out[label] = {
            "report_thread_hooks_ms_per_report": summary(setup["samples"]),
            "writer_cpu_ms_per_record": round(setup["totals"].get("upsert", 0) / records / 1e6, 4),
            "dedup": stored,
        }
        setup["lineage"].shutdown()
    medians = [out[k]["report_thread_hooks_ms_per_report"]["median"] for k in setups]
    out["report_thread_added_by_encryption_ms_median"] = round(medians[1] - medians[0], 4)
    engine.dispose()
    return out


def _dedup(conn: Connection) -> dict[str, int]:
    """Bytes stored once per content, against one copy per row (inline, before 0010)."""
    s, c = lineage_snapshots.c, report_lineage.c
    stored = conn.execute(select(func.count(), func.sum(func.length(s.data)))).one()
    per_row = conn.scalar(
        select(func.sum(func.length(s.data))).select_from(
            report_lineage.join(
                lineage_snapshots,
                (c.business_id == s.business_id) & (c.inputs_sha256 == s.inputs_sha256),
            )
        )
    )
    rows = conn.scalar(select(func.count()).select_from(report_lineage))
    return {
        "rows": int(rows or 0),
        "snapshots_stored": int(stored[0]),
        "bytes_stored": int(stored[1] or 0),
        "bytes_one_copy_per_row": int(per_row or 0),
    }


def _records(snapshots: dict[int, bytes], count: int) -> list[LineageRecord]:
    """``count`` records cycling over the businesses, each with its business's snapshot."""
    now = datetime.now(UTC)
    ids = sorted(snapshots)
    out = []
    for n in range(count):
        business = ids[n % len(ids)]
        raw = snapshots[business]
        out.append(
            LineageRecord(
                trace_id=f"{n:032x}",
                root_span_id="0" * 16,
                report_generation_id=f"bench-{n}",
                business_id=business,
                template_name="summary",
                template_version="1.0.0",
                template_sha256="0" * 64,
                inputs_sha256=sha256(raw).hexdigest(),
                inputs_bytes=len(raw),
                inputs_snapshot=compress(raw),
                inputs_codec="zstd",
                html_sha256="0" * 64,
                output_sha256="0" * 64,
                output_bytes=1,
                output_pages=1,
                output_uri=None,
                status="completed",
                error_type=None,
                error_message=None,
                started_at=now,
                ended_at=now,
                duration_ms=1.0,
                steps=[],
                input_tables=[],
                span_count=0,
                span_tree=b"",
                span_tree_codec="zstd",
                sampled=False,
                complete=True,
                incomplete_reasons=[],
                service_name="bench",
                service_version=None,
                created_at=now,
            )
        )
    return out


def writer_cost(
    engine_for: Callable[[str], Engine], key_file: Path, snapshots: dict[int, bytes], count: int
) -> dict[str, Any]:
    """CPU per record of ``LineageStore.upsert`` for each way of storing snapshots."""
    stores = {
        "inline_before_0010": _Inline(None),
        "dedup_clear": SnapshotStore(None),
        "dedup_encrypted": SnapshotStore(parse_key_file(key_file)),
    }
    out: dict[str, Any] = {}
    for label, snapshot_store in stores.items():
        engine = engine_for(label)
        store = LineageStore(engine, snapshots=snapshot_store)
        records = _records(snapshots, count + BATCH)
        store.upsert(records[:BATCH])  # warm-up: connection, statement cache, keys
        started = time.thread_time_ns()
        for start in range(BATCH, len(records), BATCH):
            store.upsert(records[start : start + BATCH])
        out[label] = round((time.thread_time_ns() - started) / count / 1e6, 4)
        engine.dispose()
    out["encryption_added_ms_per_record"] = round(out["dedup_encrypted"] - out["dedup_clear"], 4)
    return out


def aes_pass(snapshot: bytes, repeat: int = 20_000) -> dict[str, float]:
    """One AES-256-GCM encryption of a compressed snapshot, as the writer does it."""
    blob = compress(snapshot)
    cipher = AESGCM(os.urandom(32))
    aad = associated_data(1, "0" * 64)
    samples = []
    for _ in range(repeat):
        started = time.perf_counter_ns()
        cipher.encrypt(os.urandom(12), blob, aad)
        samples.append(time.perf_counter_ns() - started)
    return {"compressed_bytes": len(blob), "median_us": round(statistics.median(samples) / 1e3, 2)}


def run(pg_url: str | None = None, count: int = 6000) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        snapshots: dict[int, bytes] = {}
        results: dict[str, Any] = {"reports": report_thread(tmp, snapshots)}
        key_file = _key_file(tmp)

        def sqlite_engine(label: str) -> Engine:
            url = f"sqlite:///{tmp / f'writer-{label}.db'}"
            db.upgrade(url)
            return db.make_engine(url)

        results["writer_sqlite"] = writer_cost(sqlite_engine, key_file, snapshots, count)
        if pg_url is not None:
            from bench import durability

            with durability.postgres_schema(pg_url) as scoped:
                db.upgrade(scoped)

                def pg_engine(label: str) -> Engine:
                    engine = db.make_engine(scoped)
                    with engine.begin() as conn:
                        for table in (
                            "report_lineage",
                            "lineage_snapshots",
                            "lineage_business_keys",
                        ):
                            conn.exec_driver_sql(f"DELETE FROM {table}")
                    return engine

                results["writer_postgres"] = writer_cost(pg_engine, key_file, snapshots, count)
        results["aes_gcm"] = aes_pass(max(snapshots.values(), key=len))
    return results


def markdown(results: dict[str, Any]) -> list[str]:
    reports = results["reports"]
    lines = [
        "## Protected snapshots (dedup and encryption at rest)",
        "",
        f"{reports['reports_per_setup']} reports of {BUSINESSES} businesses with unchanged data, "
        "interleaved through two real pipelines (fast PDF stand-in):",
        "",
        "| set-up | report thread (hooks + fold), median ms/report | writer CPU ms/record | "
        "rows (with warm-up) | snapshots stored | bytes stored | bytes with one copy per row |",
        "|---|---|---|---|---|---|---|",
    ]
    for label in ("clear", "encrypted"):
        data = reports[label]
        dedup = data["dedup"]
        hooks = data["report_thread_hooks_ms_per_report"]
        lines.append(
            f"| {label} | {hooks['median']} (p95 {hooks['p95']}) | "
            f"{data['writer_cpu_ms_per_record']} | {dedup['rows']} | {dedup['snapshots_stored']} | "
            f"{dedup['bytes_stored']} | {dedup['bytes_one_copy_per_row']} |"
        )
    lines += [
        "",
        "Added to the report thread by encryption (difference of the medians): "
        f"{reports['report_thread_added_by_encryption_ms_median']} ms/report; encryption runs "
        "on the writer thread, so this is noise around zero.",
        "",
        f"Writer CPU per record, batches of {BATCH}, 10 businesses of unchanged data:",
        "",
        "| database | inline (before 0010) | dedup, clear | dedup, encrypted | encryption adds |",
        "|---|---|---|---|---|",
    ]
    for name in ("writer_sqlite", "writer_postgres"):
        if name in results:
            w = results[name]
            lines.append(
                f"| {name.removeprefix('writer_')} | {w['inline_before_0010']} ms | "
                f"{w['dedup_clear']} ms | {w['dedup_encrypted']} ms | "
                f"{w['encryption_added_ms_per_record']} ms |"
            )
    aes = results["aes_gcm"]
    lines += [
        "",
        f"One AES-256-GCM pass over a {aes['compressed_bytes']}-byte compressed snapshot: "
        f"{aes['median_us']} µs (median).",
    ]
    return lines


def main() -> None:
    from bench.__main__ import _postgres_url

    results = run(_postgres_url())
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "snapshots.json").write_text(json.dumps(results, indent=2) + "\n")
    print("\n".join(markdown(results)), file=sys.stdout)


if __name__ == "__main__":
    main()
