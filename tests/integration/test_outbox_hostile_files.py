"""What a hostile or broken outbox directory holds never hangs, strands or silently skips.

FIFOs (which block whoever opens them) in place of a lock, an outbox file or a quarantine note;
an open-report marker with an absurd time next to good records; a quarantine path that is a
plain file. Every command that reads the directory returns, the good records arrive, and what
could not be recovered makes ``outbox flush`` say so with a non-zero exit.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from sqlalchemy import Engine, select

from otel_lineage.delivery.outbox import (
    OutboxHandOff,
    inspect_outboxes,
    inspect_quarantine,
    open_reports,
    pending_generation_ids,
)
from otel_lineage.delivery.schema import report_lineage
from tests.integration.test_outbox_quarantine import _crash, _deliver, _fresh, _trace_ids
from tests.integration.test_writer import _record

BIN = Path(sys.executable).parent


def _orphan_with_one_record(directory: Path) -> tuple[OutboxHandOff, str]:
    box = OutboxHandOff(directory)
    record = _fresh(_record())
    assert box.put(record)
    _crash(box)
    return box, record.trace_id


def _flush(directory: Path, url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OTEL_LINEAGE_OUTBOX": str(directory), "D6_DATABASE_URL": url}
    return subprocess.run(
        [str(BIN / "otel-lineage"), "outbox", "flush"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_fifos_in_the_outbox_never_block_anyone(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    directory = tmp_path / "outbox"
    _box, good = _orphan_with_one_record(directory)
    os.mkfifo(directory / "outbox-fifolock.lock")
    os.mkfifo(directory / "outbox-fifodb.db")
    (directory / "quarantine").mkdir()
    os.mkfifo(directory / "quarantine" / "record-x.bin.json")
    # Every reader returns (a blocked open would hang the test until its timeout).
    inspect_outboxes(directory)
    pending_generation_ids(directory)
    open_reports(directory)
    inspect_quarantine(directory)
    _stats, _ = _deliver(directory, db_url)
    assert good in _trace_ids(engine)


def test_an_absurd_marker_never_strands_the_records_beside_it(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    directory = tmp_path / "outbox"
    box, good = _orphan_with_one_record(directory)
    conn = sqlite3.connect(box.path)
    marker = "INSERT INTO open_report (trace_id, report_generation_id, started_at"
    conn.execute(f"{marker}) VALUES (?, NULL, 1e300)", ("f" * 32,))
    conn.execute(f"{marker}) VALUES ('not hex', 'x', 1.0)")
    # Absurd details only lose themselves, never the record.
    conn.execute(
        f"{marker}, business_id, template_name, attempt) VALUES (?, 'y', 1.0, ?, ?, ?)",
        ("e" * 32, 2**40, "t" * 500, "three"),
    )
    conn.commit()
    conn.close()
    done = _flush(directory, db_url)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert good in _trace_ids(engine)
    with engine.connect() as conn:
        (absurd,) = conn.execute(
            select(report_lineage).where(report_lineage.c.trace_id == "e" * 32)
        ).mappings()
    assert (absurd["report_generation_id"], absurd["error_type"]) == ("y", "abandoned")
    assert (absurd["business_id"], absurd["template_name"], absurd["attempt"]) == (
        None,
        None,
        None,
    )


def test_what_cannot_be_recovered_makes_flush_fail_loudly(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    directory = tmp_path / "outbox"
    _orphan_with_one_record(directory)
    (directory / "outbox-garbage.db").write_bytes(b"not a database at all" * 10)
    (directory / "quarantine").write_text("a plain file where the quarantine should be")
    done = _flush(directory, db_url)
    assert done.returncode == 1, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "could not be recovered" in errors[0], done.stderr
    assert (directory / "outbox-garbage.db").exists()  # left in place, never deleted
