"""A report whose process dies mid-report: its open-report marker becomes an "abandoned"
lineage record, and its ``report_generation`` row is marked failed (contract 3). Also: text
no database accepts (surrogates, NUL, any length) never loses a record or the counters row."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from d6_reports.models import ReportGeneration
from otel_lineage.cli.app import app as lineage_cli
from otel_lineage.delivery.handoff import MemoryHandOff
from otel_lineage.delivery.outbox import OutboxHandOff, open_reports
from otel_lineage.delivery.recovery import mark_abandoned
from otel_lineage.delivery.schema import lineage_counters
from otel_lineage.delivery.stats import Counts, LineageStats
from otel_lineage.delivery.store import LineageStore
from otel_lineage.delivery.writer import BackgroundWriter
from otel_lineage.startup.configuration import create_lineage_engine
from tests.integration.test_writer import _record
from tests.lineage_support import lineage_rows

#: A report process whose PDF step never ends: it says so, then waits to be killed.
_STUCK_WORKER = """
import sys, time
import otel_lineage
from d6_reports.generator import GenerationOptions
from d6_reports.service import ReportService
from tests.fast_pdf import FastPDFConverter

class Stuck(FastPDFConverter):
    def convert(self, html, **options):
        print("converting", flush=True)
        time.sleep(3600)

service = ReportService.from_settings()
otel_lineage.configure(engines=[service.engine])
service.generator._converter = Stuck()
service.generator.generate_report_sync(int(sys.argv[1]), GenerationOptions("summary"))
"""


def test_sigkill_mid_report_gives_an_abandoned_row_and_a_failed_generation(
    db_url: str,
    engine: Engine,
    sessions: sessionmaker[Session],
    business_ids: list[int],
    tmp_path: Path,
    outbox_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = {**os.environ, "D6_DATABASE_URL": db_url, "D6_REPORTS_DIR": str(tmp_path / "r")}
    process = subprocess.Popen(
        [sys.executable, "-c", _STUCK_WORKER, str(business_ids[0])],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "converting"
    live = open_reports(outbox_dir)
    process.send_signal(signal.SIGKILL)
    process.wait()
    with sessions() as session:
        (generation,) = session.scalars(select(ReportGeneration)).all()
    assert generation.status == "generating"
    assert live == {generation.id: True}  # in progress while its process lived
    assert open_reports(outbox_dir) == {generation.id: False}  # abandoned once it is gone

    box = OutboxHandOff(outbox_dir)  # the next process
    assert box.recover() == 1
    store = LineageStore(create_lineage_engine(db_url))
    batch = box.take(10, 0)
    store.upsert([item.record for item in batch])
    box.ack(batch)
    assert mark_abandoned(engine, box.abandoned) == 1
    assert mark_abandoned(engine, box.abandoned) == 0  # only rows still 'generating'
    box.close()
    store.engine.dispose()

    (row,) = lineage_rows(engine)
    assert (row["report_generation_id"], row["status"], row["error_type"]) == (
        generation.id,
        "failed",
        "abandoned",
    )
    assert row["incomplete_reasons"] == ["process_died_before_report_ended"]
    assert row["trace_id"] == generation.trace_id and row["span_count"] == 0
    # What the report was is known from its start (ids and names, no input value).
    assert (row["business_id"], row["template_name"], row["attempt"]) == (
        business_ids[0],
        "summary",
        1,
    )
    with sessions() as session:
        flipped = session.get(ReportGeneration, generation.id)
        assert flipped is not None
        assert (flipped.status, flipped.error_type) == ("failed", "abandoned")
    assert list(outbox_dir.glob("outbox-*")) == []
    # No span ended, so there is no trace to export: one line and exit 1, not an empty trace.
    monkeypatch.setenv("D6_DATABASE_URL", db_url)
    for format in ("jaeger", "otlp"):
        exported = CliRunner().invoke(lineage_cli, ["trace", generation.id, "--format", format])
        assert exported.exit_code == 1, exported.output
        assert exported.output.count("error:") == 1
        assert "no stored trace" in exported.output and "abandoned" in exported.output


def test_put_clears_the_marker_and_close_keeps_an_open_one(outbox_dir: Path) -> None:
    done, open_ = _record(), _record()
    box = OutboxHandOff(outbox_dir)
    box.begin(done.trace_id, done.report_generation_id)
    box.begin(open_.trace_id, "still-running")
    assert box.put(done)
    assert open_reports(outbox_dir) == {"still-running": True}
    box.ack(box.take(10, 0))
    box.close()  # a report still open at exit: the file stays for the next recovery
    assert open_reports(outbox_dir) == {"still-running": False}
    assert MemoryHandOff().begin(done.trace_id, None) is None


def test_text_no_database_accepts_never_loses_a_record_or_the_counters(
    db_url: str, engine: Engine, outbox_dir: Path
) -> None:
    bad = _record()
    bad.error_message = "bad \udcff byte and a \x00 NUL"
    bad.template_name = "t" * 5000  # longer than any former bound
    bad.service_name = "\udcff" * 300
    bad.steps = [{**bad.steps[0], "name": "step \ud800"}] if bad.steps else [{"n": "\ud800"}]
    good = _record()
    box = OutboxHandOff(outbox_dir)  # the outbox accepts it (orjson refuses surrogates)
    stats = LineageStats()
    store = LineageStore(create_lineage_engine(db_url), service_name="svc-\udcff" + "x" * 300)
    writer = BackgroundWriter(box, store, stats, linger_s=0)
    writer.start()
    try:
        assert box.put(bad) and box.put(good)
        assert writer.flush(30)
    finally:
        writer.stop()
    rows = {r["trace_id"]: r for r in lineage_rows(engine)}
    assert set(rows) == {bad.trace_id, good.trace_id}
    stored = rows[bad.trace_id]
    assert stored["error_message"] == "bad \ufffd byte and a  NUL"
    assert stored["template_name"] == "t" * 5000
    assert not stored["complete"]
    assert {"invalid_text:error_message", "invalid_text:service_name"} <= set(
        stored["incomplete_reasons"]
    )
    assert rows[good.trace_id]["complete"] == good.complete
    assert stats.snapshot().written == 2
    store.save_counters(Counts(written=2), 0)
    with engine.connect() as conn:
        service = conn.scalar(select(lineage_counters.c.service_name))
    assert service == "svc-\ufffd" + "x" * 300
    store.engine.dispose()


def test_an_orphan_of_an_older_version_is_still_recovered(outbox_dir: Path) -> None:
    """An outbox written before markers held the business, template and attempt."""
    import sqlite3

    outbox_dir.mkdir(parents=True, exist_ok=True)
    old = outbox_dir / "outbox-0123456789abcdef0123456789abcdef.db"
    conn = sqlite3.connect(old)
    conn.executescript(
        """
        CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, trace_id TEXT NOT NULL,
            report_generation_id TEXT, created_at REAL NOT NULL, size INTEGER NOT NULL,
            record BLOB NOT NULL);
        CREATE TABLE open_report (trace_id TEXT PRIMARY KEY, report_generation_id TEXT,
            started_at REAL NOT NULL);
        """
    )
    conn.execute("INSERT INTO open_report VALUES (?, ?, ?)", ("a" * 32, "old-report", 1.0e9))
    conn.commit()
    conn.close()
    box = OutboxHandOff(outbox_dir)
    assert box.recover() == 1
    (item,) = box.take(10, 0)
    record = item.record
    assert (record.report_generation_id, record.error_type) == ("old-report", "abandoned")
    assert (record.business_id, record.template_name, record.attempt) == (None, None, None)
    box.ack([item])
    box.close()
