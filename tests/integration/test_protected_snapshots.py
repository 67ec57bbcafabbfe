"""Protected input snapshots (issue 12 part 4): dedup, encryption at rest, rotation, erasure.

Every test runs on SQLite and PostgreSQL with real reports through a real lineage pipeline.
The lineage tables live in a database of their own (SQLite: another file; PostgreSQL: another
schema), because the report service's ``business`` table holds the same e-mail addresses in the
same database by default: the raw-bytes scans below then see the lineage tables only. The raw
bytes are the SQLite file with its WAL, or ``pg_dump`` of the lineage schema (bytea comes out in
hex, so both spellings are searched). Each scan has a control that finds the address when it is
stored in clear, so the scans can fail.

The commands run as real processes (``otel-lineage ...``) with the environment a user has.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import unquote, urlsplit

import orjson
import pytest
import zstandard
from sqlalchemy import Engine, func, select, text, update
from sqlalchemy.orm import Session, sessionmaker

import otel_lineage
from d6_reports import db
from d6_reports.generator import GenerationOptions, ReportGenerator
from d6_reports.models import Business
from otel_lineage.delivery.schema import (
    lineage_access_log,
    lineage_business_keys,
    lineage_snapshots,
    report_lineage,
)
from otel_lineage.delivery.store import LineageStore
from otel_lineage.protection.keys import KEY_FILE_VARIABLE, parse_key_file
from otel_lineage.protection.snapshots import ENCRYPTED_CODEC, PLAIN_CODEC
from otel_lineage.reading.query import audit, get_row, inputs_summary
from otel_lineage.reading.retention import prune
from otel_lineage.reading.verify import VerifyError, stored_snapshot, verify
from otel_lineage.record import LineageRecord, compress
from otel_lineage.settings import LineageConfigError
from tests.conftest import _postgres_schema_url
from tests.fast_pdf import FastPDFConverter
from tests.lineage_support import lineage_pipeline

SUMMARY = GenerationOptions("summary")
BIN = Path(sys.executable).parent
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


# -- fixtures and helpers ------------------------------------------------------------------------


@pytest.fixture
def lineage_url(db_url: str, tmp_path: Path) -> Iterator[str]:
    """A migrated lineage database apart from the report database, on the same backend."""
    if db_url.startswith("sqlite"):
        url = f"sqlite:///{tmp_path / 'lineage.db'}"
        db.upgrade(url)
        yield url
        return
    schema_urls = _postgres_schema_url()
    url = next(schema_urls)
    db.upgrade(url)
    yield url
    schema_urls.close()


@pytest.fixture
def lineage_engine(lineage_url: str) -> Iterator[Engine]:
    engine = db.make_engine(lineage_url)
    yield engine
    engine.dispose()


@pytest.fixture
def emails(sessions: sessionmaker[Session], business_ids: list[int]) -> dict[int, str]:
    """A unique, greppable e-mail address per seeded business."""
    out = {b: f"seeded-{uuid.uuid4().hex[:12]}@snapshot-test.example" for b in business_ids}
    with sessions.begin() as session:
        for business_id, email in out.items():
            session.get_one(Business, business_id).email = email
    return out


def write_key_file(path: Path, *key_ids: str, keys: dict[str, bytes] | None = None) -> Path:
    """A key file with one line per id (the last one current), mode 600."""
    keys = keys if keys is not None else {}
    lines = ["# master keys of the lineage snapshots"]
    for key_id in key_ids:
        key = keys.setdefault(key_id, os.urandom(32))
        lines.append(f"{key_id}:{base64.b64encode(key).decode()}")
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


@dataclass
class Made:
    """Reports made for some businesses, by generation id."""

    by_business: dict[int, list[str]]

    def first(self, business_id: int) -> str:
        return self.by_business[business_id][0]


def make_reports(
    db_url: str,
    engine: Engine,
    sessions: sessionmaker[Session],
    lineage_url: str,
    tmp_path: Path,
    businesses: list[int],
    *,
    times: int = 1,
) -> Made:
    """``times`` reports of each business (unchanged data), through a real lineage pipeline."""
    made: dict[int, list[str]] = {}
    with lineage_pipeline(lineage_url, engine) as (lineage, _):
        generator = ReportGenerator(
            sessions,
            tmp_path / "reports",
            converter=FastPDFConverter(),
            tracer_provider=lineage.provider,
        )
        for _ in range(times):
            for business_id in businesses:
                result = generator.generate_report_sync(business_id, SUMMARY)
                assert result.success, result.error_message
                made.setdefault(business_id, []).append(result.generation_id)
        assert lineage.flush(30)
    return Made(made)


def cli(
    args: list[str], lineage_url: str, reports_url: str, key_file: Path | None, stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/tmp"),
        "OTEL_LINEAGE_DATABASE_URL": lineage_url,
        "D6_DATABASE_URL": reports_url,
    }
    if key_file is not None:
        env[KEY_FILE_VARIABLE] = str(key_file)
    return subprocess.run(
        [str(BIN / "otel-lineage"), *args], env=env, input=stdin, capture_output=True, timeout=120
    )


def one_error_line(done: subprocess.CompletedProcess[bytes]) -> str:
    lines = done.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert b"Traceback" not in done.stderr
    return lines[0]


def raw_lineage_bytes(lineage_url: str) -> bytes:
    """Every byte the lineage database holds, as a backup would."""
    if lineage_url.startswith("sqlite"):
        path = Path(lineage_url.removeprefix("sqlite:///"))
        files = [path, path.with_name(path.name + "-wal")]
        return b"".join(f.read_bytes() for f in files if f.exists())
    parts = urlsplit(lineage_url.replace("postgresql+psycopg", "postgresql"))
    schema = unquote(parts.query).split("search_path=")[1].split("&")[0]
    dumped = subprocess.run(
        [
            "pg_dump",
            "-h",
            parts.hostname or "127.0.0.1",
            "-p",
            str(parts.port or 5432),
            "-U",
            parts.username or "postgres",
            "-n",
            schema,
            "--data-only",
            parts.path.lstrip("/"),
        ],
        capture_output=True,
        check=True,
        timeout=120,
    )
    return dumped.stdout


def readable_text(raw: bytes) -> bytes:
    """``raw`` followed by the content of every zstd frame in it (and in its hex runs).

    Snapshots are zstd-compressed, and zstd entropy-codes its literals: an address in a
    compressed snapshot is not greppable as such. Decompressing every frame a scan can find is
    what a curious reader of a backup would do, so the scan does it too.
    """
    found = [raw]
    for hex_run in re.findall(rb"\\x((?:[0-9a-f]{2})+)", raw):  # pg_dump's bytea
        found.append(bytes.fromhex(hex_run.decode()))
    for blob in list(found):
        start = blob.find(ZSTD_MAGIC)
        while start != -1:
            reader = zstandard.ZstdDecompressor().stream_reader(
                io.BytesIO(blob[start:]), read_across_frames=False
            )
            with contextlib.suppress(zstandard.ZstdError):
                found.append(reader.read(1 << 24))
            start = blob.find(ZSTD_MAGIC, start + 1)
    return b"\n".join(found)


def holds(raw: bytes, value: str) -> bool:
    """Whether ``value`` can be read from ``raw``: as text, or in a compressed frame."""
    return value.encode() in readable_text(raw)


def snapshot_rows(engine: Engine) -> list[dict[str, object]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(lineage_snapshots)).mappings()]


# -- tests ---------------------------------------------------------------------------------------


def test_encrypted_snapshots_leave_no_plaintext_and_read_back_only_with_the_key(
    db_url: str,
    engine: Engine,
    sessions: sessionmaker[Session],
    emails: dict[int, str],
    lineage_url: str,
    lineage_engine: Engine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key_file = write_key_file(tmp_path / "master.keys", "k1")
    monkeypatch.setenv(KEY_FILE_VARIABLE, str(key_file))
    businesses = list(emails)[:3]
    made = make_reports(db_url, engine, sessions, lineage_url, tmp_path, businesses, times=2)

    raw = raw_lineage_bytes(lineage_url)
    for business_id in businesses:
        assert not holds(raw, emails[business_id]), business_id
    stored = snapshot_rows(lineage_engine)
    assert len(stored) == 3  # six reports of unchanged data: one snapshot per business
    assert {s["codec"] for s in stored} == {ENCRYPTED_CODEC}
    with lineage_engine.connect() as conn:
        inline = conn.scalar(
            select(func.count()).where(report_lineage.c.inputs_snapshot.is_not(None))
        )
        shared = conn.scalar(select(func.count()).where(report_lineage.c.inputs_snapshot_shared))
        keys = conn.execute(select(lineage_business_keys)).mappings().all()
    assert inline == 0 and shared == 6
    assert {k["master_key_id"] for k in keys} == {"k1"} and len(keys) == 3

    report = made.first(businesses[0])
    row = get_row(lineage_engine, report)
    with_key = cli(["inputs", report], lineage_url, db_url, key_file)
    assert with_key.returncode == 0, with_key.stderr
    assert hashlib.sha256(with_key.stdout).hexdigest() == row["inputs_sha256"]
    assert emails[businesses[0]].encode() in with_key.stdout
    summary = inputs_summary(row)
    assert summary["encrypted"] is True and summary["sha256_matches"] is True

    without = cli(["inputs", report], lineage_url, db_url, None)
    assert without.returncode == 1 and without.stdout == b""
    assert one_error_line(without) == (
        f"error: the input snapshot of report {report} is encrypted with master key k1, "
        f"which is not configured ({KEY_FILE_VARIABLE})"
    )
    other_file = write_key_file(tmp_path / "other.keys", "k9")
    wrong = cli(["inputs", report], lineage_url, db_url, other_file)
    assert wrong.returncode == 1
    assert f"master key k1, which is not in the key file {other_file}" in one_error_line(wrong)
    shown = cli(["show", report, "--json"], lineage_url, db_url, None)
    assert shown.returncode == 0, shown.stderr
    inputs = orjson.loads(shown.stdout)["inputs"]
    assert inputs["encrypted"] is True and "not configured" in inputs["error"]
    assert emails[businesses[0]].encode() not in shown.stdout


def test_a_writer_without_the_key_file_never_stores_clear_snapshots_where_others_are_encrypted(
    db_url: str,
    engine: Engine,
    sessions: sessionmaker[Session],
    emails: dict[int, str],
    lineage_url: str,
    lineage_engine: Engine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key_file = write_key_file(tmp_path / "master.keys", "k1")
    monkeypatch.setenv(KEY_FILE_VARIABLE, str(key_file))
    first, later = list(emails)[:2]
    make_reports(db_url, engine, sessions, lineage_url, tmp_path, [first])
    monkeypatch.delenv(KEY_FILE_VARIABLE)  # a second writer, configured without it
    made = make_reports(db_url, engine, sessions, lineage_url, tmp_path, [first, later])
    raw = raw_lineage_bytes(lineage_url)
    assert not holds(raw, emails[first]) and not holds(raw, emails[later])
    assert {s["codec"] for s in snapshot_rows(lineage_engine)} == {ENCRYPTED_CODEC}
    for business_id in (first, later):
        row = get_row(lineage_engine, made.first(business_id))
        assert "snapshot_not_stored:key_file_not_configured" in row["incomplete_reasons"]
        assert row["inputs_sha256"] is not None  # the digest is kept


def test_plaintext_snapshots_are_deduplicated_and_found_by_the_scan(
    db_url: str,
    engine: Engine,
    sessions: sessionmaker[Session],
    emails: dict[int, str],
    lineage_url: str,
    lineage_engine: Engine,
    tmp_path: Path,
) -> None:
    """Without a key file: one stored snapshot per business and content, in clear (the scan's
    control), and every report still reads back byte-exact."""
    businesses = list(emails)[:2]
    made = make_reports(db_url, engine, sessions, lineage_url, tmp_path, businesses, times=3)
    stored = snapshot_rows(lineage_engine)
    assert len(stored) == 2 and {s["codec"] for s in stored} == {PLAIN_CODEC}
    assert all(s["key_id"] is None and s["nonce"] is None for s in stored)
    raw = raw_lineage_bytes(lineage_url)
    assert all(holds(raw, emails[b]) for b in businesses)  # the scan sees clear text
    for business_id in businesses:
        for report in made.by_business[business_id]:
            row = get_row(lineage_engine, report)
            assert row["inputs_snapshot"] is None and row["inputs_snapshot_shared"]
            assert hashlib.sha256(stored_snapshot(row)).hexdigest() == row["inputs_sha256"]


def test_forget_makes_one_business_unreadable_and_leaves_the_others_intact(
    db_url: str,
    engine: Engine,
    sessions: sessionmaker[Session],
    emails: dict[int, str],
    lineage_url: str,
    lineage_engine: Engine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key_file = write_key_file(tmp_path / "master.keys", "k1")
    monkeypatch.setenv(KEY_FILE_VARIABLE, str(key_file))
    gone, kept = list(emails)[:2]
    made = make_reports(db_url, engine, sessions, lineage_url, tmp_path, [gone, kept], times=2)
    with lineage_engine.connect() as conn:
        before = conn.execute(select(report_lineage).order_by(report_lineage.c.id)).all()

    refused = cli(["forget", "--business", str(gone)], lineage_url, db_url, key_file)
    assert refused.returncode == 2
    assert "add --yes" in one_error_line(refused)
    done = cli(["forget", "--business", str(gone), "--yes"], lineage_url, db_url, key_file)
    assert done.returncode == 0, done.stderr
    assert f"business {gone}: data key destroyed" in done.stdout.decode()
    assert "1 stored snapshots deleted" in done.stdout.decode()
    assert "its 2 lineage rows, digests and seals are kept" in done.stdout.decode()

    for report in made.by_business[gone]:
        erased = cli(["inputs", report], lineage_url, db_url, key_file)
        assert erased.returncode == 1
        line = one_error_line(erased)
        assert line.startswith(
            f"error: the input snapshot of report {report} is erased: business {gone}'s key "
            "was destroyed on "
        )
        assert line.endswith(" (forget): the snapshot cannot be read")
        with pytest.raises(VerifyError, match=r"destroyed on .* \(forget\)"):
            verify(get_row(lineage_engine, report))
    for report in made.by_business[kept]:
        readable = cli(["inputs", report], lineage_url, db_url, key_file)
        assert readable.returncode == 0, readable.stderr
        assert emails[kept].encode() in readable.stdout

    with lineage_engine.connect() as conn:
        after = conn.execute(select(report_lineage).order_by(report_lineage.c.id)).all()
        tombstone = conn.execute(
            select(lineage_business_keys).where(lineage_business_keys.c.business_id == gone)
        ).one()
    assert [r.trace_id for r in after] == [r.trace_id for r in before]
    digests = ("inputs_sha256", "html_sha256", "output_sha256", "template_sha256")
    assert [[getattr(r, d) for d in digests] for r in after] == [
        [getattr(r, d) for d in digests] for r in before
    ]
    assert tombstone.wrapped_key is None and tombstone.destroyed_at is not None
    assert audit(engine, lineage_engine).capture_rate == 1.0
    with lineage_engine.connect() as conn:  # the erasure is in the access log, with its count
        (logged,) = conn.execute(
            select(lineage_access_log).where(lineage_access_log.c.action == "forget")
        ).all()
    assert (logged.outcome, logged.client) == ("allowed", "cli")
    assert logged.detail.startswith(f"business {gone}: key destroyed True, 1 snapshots deleted")

    # A later report of the erased business gets a new key and reads back; the old stay erased.
    again = make_reports(db_url, engine, sessions, lineage_url, tmp_path, [gone])
    fresh = cli(["inputs", again.first(gone)], lineage_url, db_url, key_file)
    assert fresh.returncode == 0 and emails[gone].encode() in fresh.stdout
    still = cli(["inputs", made.first(gone)], lineage_url, db_url, key_file)
    assert still.returncode == 1 and "destroyed on" in one_error_line(still)


def test_forget_without_encryption_leaves_no_copy_in_the_file(
    db_url: str,
    engine: Engine,
    sessions: sessionmaker[Session],
    emails: dict[int, str],
    lineage_url: str,
    lineage_engine: Engine,
    tmp_path: Path,
) -> None:
    """Clear-text snapshots (no key file) and inline ones from before revision 0010 are erased
    too; on SQLite the freed pages are zeroed, so the file itself no longer has the address."""
    gone, kept = list(emails)[:2]
    made = make_reports(db_url, engine, sessions, lineage_url, tmp_path, [gone, kept])
    legacy = made.first(gone)
    with lineage_engine.begin() as conn:  # as a row written before 0010 would be
        conn.execute(
            update(report_lineage)
            .where(report_lineage.c.report_generation_id == legacy)
            .values(
                inputs_snapshot=compress(stored_snapshot(get_row(lineage_engine, legacy))),
                inputs_snapshot_shared=None,
            )
        )
    done = cli(["forget", "--business", str(gone), "--yes", "--json"], lineage_url, db_url, None)
    assert done.returncode == 0, done.stderr
    result = orjson.loads(done.stdout)
    assert result["key_destroyed"] is False and result["snapshots_deleted"] == 1
    assert result["inline_cleared"] == 1 and result["rows_kept"] == 1
    erased = cli(["inputs", legacy], lineage_url, db_url, None)
    assert (
        erased.returncode == 1 and "(forget): the snapshot cannot be read" in erased.stderr.decode()
    )
    raw = raw_lineage_bytes(lineage_url)
    assert holds(raw, emails[kept])  # the control: clear text is visible to the scan
    if lineage_url.startswith("sqlite"):
        assert not holds(raw, emails[gone])


def test_rotation_rewraps_every_business_key_so_the_old_master_key_can_go(
    db_url: str,
    engine: Engine,
    sessions: sessionmaker[Session],
    emails: dict[int, str],
    lineage_url: str,
    lineage_engine: Engine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keys: dict[str, bytes] = {}
    old = write_key_file(tmp_path / "old.keys", "k1", keys=keys)
    monkeypatch.setenv(KEY_FILE_VARIABLE, str(old))
    businesses = list(emails)[:3]
    made = make_reports(db_url, engine, sessions, lineage_url, tmp_path, businesses)
    new_only = write_key_file(tmp_path / "new-only.keys", "k2", keys=keys)
    premature = cli(["keys", "rotate"], lineage_url, db_url, new_only)
    assert premature.returncode == 1
    assert "master keys not in the key file: k1 (3 business keys)" in one_error_line(premature)

    both = write_key_file(tmp_path / "both.keys", "k1", "k2", keys=keys)
    rotated = cli(["keys", "rotate"], lineage_url, db_url, both)
    assert rotated.returncode == 0, rotated.stderr
    assert rotated.stdout.decode().splitlines()[0] == (
        "re-wrapped 3 business keys under master key k2 (0 were already under it)"
    )
    again = cli(["keys", "rotate", "--json"], lineage_url, db_url, both)
    assert orjson.loads(again.stdout)["already_current"] == 3

    for business_id in businesses:
        readable = cli(["inputs", made.first(business_id)], lineage_url, db_url, new_only)
        assert readable.returncode == 0, readable.stderr
        assert emails[business_id].encode() in readable.stdout
    old_only = cli(["inputs", made.first(businesses[0])], lineage_url, db_url, old)
    assert old_only.returncode == 1 and "master key k2" in one_error_line(old_only)


def test_rotate_encrypts_what_was_stored_in_clear_before_the_key_file(
    db_url: str,
    engine: Engine,
    sessions: sessionmaker[Session],
    emails: dict[int, str],
    lineage_url: str,
    lineage_engine: Engine,
    tmp_path: Path,
) -> None:
    """Reports made without a key file (shared in clear), one row from before revision 0010
    (inline), then a key file and `keys rotate`: nothing readable is left in the raw bytes."""
    businesses = list(emails)[:2]
    made = make_reports(db_url, engine, sessions, lineage_url, tmp_path, businesses, times=2)
    legacy = made.by_business[businesses[0]][0]
    with lineage_engine.begin() as conn:  # as a row written before 0010 would be
        conn.execute(
            update(report_lineage)
            .where(report_lineage.c.report_generation_id == legacy)
            .values(
                inputs_snapshot=compress(stored_snapshot(get_row(lineage_engine, legacy))),
                inputs_snapshot_shared=None,
            )
        )
    assert all(holds(raw_lineage_bytes(lineage_url), emails[b]) for b in businesses)

    key_file = write_key_file(tmp_path / "master.keys", "k1")
    rotated = cli(["keys", "rotate", "--json"], lineage_url, db_url, key_file)
    assert rotated.returncode == 0, rotated.stderr
    answer = orjson.loads(rotated.stdout)
    assert answer["encrypted"] == {"shared": 2, "inline": 1, "left_inline": 0}
    stored = snapshot_rows(lineage_engine)
    assert len(stored) == 2 and {s["codec"] for s in stored} == {ENCRYPTED_CODEC}
    raw = raw_lineage_bytes(lineage_url)
    if lineage_url.startswith("sqlite"):  # PostgreSQL keeps dead tuples until VACUUM FULL
        assert not any(holds(raw, emails[b]) for b in businesses)
    for business_id in businesses:
        for report in made.by_business[business_id]:
            readable = cli(["inputs", report], lineage_url, db_url, key_file)
            assert readable.returncode == 0, readable.stderr
            assert emails[business_id].encode() in readable.stdout
        without = cli(["inputs", made.first(business_id)], lineage_url, db_url, None)
        assert without.returncode == 1 and "not configured" in one_error_line(without)


def test_a_snapshot_that_does_not_match_its_digest_is_never_shared(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Filed under a digest it does not have, it would be served as other reports' inputs."""
    engine = db.make_engine(db_url)
    good = b'{"business":{"email":"good@snapshot-test.example"}}'
    digest = hashlib.sha256(good).hexdigest()
    base = {
        "root_span_id": "0" * 16,
        "business_id": 5,
        "inputs_sha256": digest,
        "inputs_codec": "zstd",
        "status": "completed",
        "started_at": datetime.now(UTC),
        "created_at": datetime.now(UTC),
    }
    bad = {
        **base,
        "trace_id": "1" * 32,
        "report_generation_id": "bad",
        "inputs_snapshot": compress(b'{"tampered":true}'),
        "complete": False,
        "incomplete_reasons": ["inputs_snapshot_sha256_mismatch"],
    }
    fine = {**base, "trace_id": "2" * 32, "report_generation_id": "fine"}
    try:
        LineageStore(engine).upsert(
            [_record(bad), _record({**fine, "inputs_snapshot": compress(good)})]
        )
        assert stored_snapshot(get_row(engine, "fine")) == good
        kept = get_row(engine, "bad")
        assert kept["inputs_snapshot"] is not None and not kept["inputs_snapshot_shared"]
        with pytest.raises(VerifyError, match="does not match its recorded sha256"):
            stored_snapshot(kept)
        monkeypatch.setenv(KEY_FILE_VARIABLE, str(write_key_file(tmp_path / "m.keys", "k1")))
        again = {**bad, "trace_id": "3" * 32, "report_generation_id": "bad-encrypted"}
        LineageStore(engine).upsert([_record(again)])
        row = get_row(engine, "bad-encrypted")  # never in clear when encryption is on
        assert row["inputs_snapshot"] is None and not row["inputs_snapshot_shared"]
        assert "snapshot_not_stored:not_shareable" in row["incomplete_reasons"]
        assert stored_snapshot(get_row(engine, "fine")) == good
    finally:
        engine.dispose()


def test_prune_keeps_a_shared_snapshot_another_row_still_needs(
    db_url: str,
    engine: Engine,
    sessions: sessionmaker[Session],
    emails: dict[int, str],
    lineage_url: str,
    lineage_engine: Engine,
    tmp_path: Path,
) -> None:
    business_id = next(iter(emails))
    made = make_reports(db_url, engine, sessions, lineage_url, tmp_path, [business_id], times=2)
    older, newer = made.by_business[business_id]

    def backdate(report: str) -> None:
        with lineage_engine.begin() as conn:
            conn.execute(
                update(report_lineage)
                .where(report_lineage.c.report_generation_id == report)
                .values(started_at=datetime.now(UTC) - timedelta(days=30))
            )

    backdate(older)
    first = prune(lineage_engine, older_than_days=7)
    assert first.rows == 1
    assert len(snapshot_rows(lineage_engine)) == 1  # the newer report still refers to it
    with pytest.raises(VerifyError, match="pruned at"):
        stored_snapshot(get_row(lineage_engine, older))
    assert emails[business_id].encode() in stored_snapshot(get_row(lineage_engine, newer))

    backdate(newer)
    stored_bytes = len(bytes(snapshot_rows(lineage_engine)[0]["data"]))  # type: ignore[arg-type]
    dry = prune(lineage_engine, older_than_days=7, dry_run=True)
    assert dry.rows == 1 and dry.bytes_freed > stored_bytes
    assert len(snapshot_rows(lineage_engine)) == 1
    second = prune(lineage_engine, older_than_days=7)
    assert second.rows == 1 and second.bytes_freed == dry.bytes_freed
    assert snapshot_rows(lineage_engine) == []


def test_migration_0010_up_and_down_keeps_inline_and_shared_snapshots_readable(
    empty_db_url: str,
) -> None:
    """Rows from before 0010 stay inline and readable; a downgrade brings shared clear-text
    snapshots back inline, and refuses while one is encrypted."""
    db.upgrade(empty_db_url, "0009_lineage_seals")
    engine = db.make_engine(empty_db_url)
    snapshot = b'{"business":{"email":"legacy@snapshot-test.example"}}'
    digest = hashlib.sha256(snapshot).hexdigest()
    now = datetime.now(UTC)
    common = {
        "root_span_id": "0" * 16,
        "business_id": 7,
        "inputs_sha256": digest,
        "status": "completed",
        "started_at": now,
        "steps": "[]",
        "input_tables": "[]",
        "span_count": 0,
        "sampled": False,
        "complete": True,
        "incomplete_reasons": "[]",
        "created_at": now,
        "inputs_codec": "zstd",
    }
    insert = text(
        "INSERT INTO report_lineage (trace_id, report_generation_id, root_span_id, business_id, "
        "inputs_sha256, inputs_snapshot, inputs_codec, status, started_at, steps, input_tables, "
        "span_count, sampled, complete, incomplete_reasons, created_at) VALUES (:trace_id, "
        ":report_generation_id, :root_span_id, :business_id, :inputs_sha256, :inputs_snapshot, "
        ":inputs_codec, :status, :started_at, :steps, :input_tables, :span_count, :sampled, "
        ":complete, :incomplete_reasons, :created_at)"
    )
    try:
        with engine.begin() as conn:
            conn.execute(
                insert,
                {
                    **common,
                    "trace_id": "a" * 32,
                    "report_generation_id": "legacy",
                    "inputs_snapshot": compress(snapshot),
                },
            )
        db.upgrade(empty_db_url)
        assert stored_snapshot(get_row(engine, "legacy")) == snapshot
        with engine.begin() as conn:  # a report of the same data, through today's store
            conn.execute(text("DELETE FROM report_lineage"))
        record_row = {
            **common,
            "trace_id": "b" * 32,
            "report_generation_id": "shared",
            "inputs_snapshot": compress(snapshot),
        }
        LineageStore(engine).upsert([_record(record_row)])
        shared = get_row(engine, "shared")
        assert shared["inputs_snapshot"] is None and stored_snapshot(shared) == snapshot

        db.downgrade(empty_db_url, "0009_lineage_seals")
        with engine.connect() as conn:
            blob = conn.scalar(text("SELECT inputs_snapshot FROM report_lineage"))
        assert blob is not None and compress(snapshot) == bytes(blob)
        db.upgrade(empty_db_url)
        assert stored_snapshot(get_row(engine, "shared")) == snapshot
    finally:
        engine.dispose()


def test_downgrade_refuses_while_snapshots_are_encrypted(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_FILE_VARIABLE, str(write_key_file(tmp_path / "m.keys", "k1")))
    engine = db.make_engine(db_url)
    try:
        snapshot = b'{"x":1}'
        record_row = {
            "trace_id": "c" * 32,
            "report_generation_id": "enc",
            "root_span_id": "0" * 16,
            "business_id": 3,
            "inputs_sha256": hashlib.sha256(snapshot).hexdigest(),
            "inputs_snapshot": compress(snapshot),
            "inputs_codec": "zstd",
            "status": "completed",
            "started_at": datetime.now(UTC),
            "created_at": datetime.now(UTC),
        }
        LineageStore(engine).upsert([_record(record_row)])
        db.downgrade(db_url, "0010_protected_snapshots")  # the later revisions: no refusal
        with pytest.raises(RuntimeError, match="1 input snapshots are encrypted"):
            db.downgrade(db_url, "0009_lineage_seals")
        db.upgrade(db_url)
        assert stored_snapshot(get_row(engine, "enc")) == snapshot
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("content", "mode", "message"),
    [
        ("k1:" + base64.b64encode(b"x" * 32).decode() + "\n", 0o644, "accessible to group"),
        ("k1:not-base64!\n", 0o600, "line 1 (key 'k1') is not the base64 of 32 bytes"),
        ("k1:" + base64.b64encode(b"x" * 16).decode() + "\n", 0o600, "not the base64 of 32"),
        ("# only a comment\n", 0o600, "holds no key"),
        ("a key without a colon\n", 0o600, "line 1 is not '<key id>:<base64"),
    ],
)
def test_a_bad_key_file_stops_the_start_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str, mode: int, message: str
) -> None:
    path = tmp_path / "bad.keys"
    path.write_text(content)
    path.chmod(mode)
    monkeypatch.setenv(KEY_FILE_VARIABLE, str(path))
    with pytest.raises(LineageConfigError) as raised:
        otel_lineage.configure(database_url=f"sqlite:///{tmp_path / 'x.db'}", set_global=False)
    assert str(raised.value).startswith(f"{KEY_FILE_VARIABLE}='{path}': ")
    assert message in str(raised.value) and "\n" not in str(raised.value)
    assert base64.b64encode(b"x" * 32).decode() not in str(raised.value)
    rotate = cli(["keys", "rotate"], f"sqlite:///{tmp_path / 'x.db'}", "sqlite://", path)
    assert rotate.returncode == 2 and message in one_error_line(rotate)


def test_the_last_key_of_the_file_is_current(tmp_path: Path) -> None:
    path = write_key_file(tmp_path / "m.keys", "old", "new")
    keyring = parse_key_file(path)
    assert keyring.current_id == "new" and set(keyring.keys) == {"old", "new"}


def _record(values: dict[str, object]) -> LineageRecord:
    """A lineage record with the given fields, the rest empty."""
    defaults: dict[str, object] = {
        "template_name": None,
        "template_version": None,
        "template_sha256": None,
        "inputs_bytes": None,
        "html_sha256": None,
        "output_sha256": None,
        "output_bytes": None,
        "output_pages": None,
        "output_uri": None,
        "error_type": None,
        "error_message": None,
        "ended_at": None,
        "duration_ms": None,
        "steps": [],
        "input_tables": [],
        "span_count": 0,
        "span_tree": b"",
        "span_tree_codec": "zstd",
        "sampled": False,
        "complete": True,
        "incomplete_reasons": [],
        "service_name": None,
        "service_version": None,
    }
    fields = {**defaults, **values}
    for name in ("steps", "input_tables", "incomplete_reasons"):
        if isinstance(fields[name], str):
            fields[name] = orjson.loads(str(fields[name]))
    return LineageRecord(**fields)  # type: ignore[arg-type]
