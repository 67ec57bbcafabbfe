"""Tamper-evident seals, on SQLite and PostgreSQL: every kind of tampering is named, honest
changes (prune, rows written after a seal) are not, and concurrent sealers keep one chain."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine, create_engine, delete, func, select, text, update
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from d6_reports import db
from d6_reports.generator import GenerationOptions
from otel_lineage.cli import app
from otel_lineage.delivery.schema import lineage_seal_rows, lineage_seals, report_lineage
from otel_lineage.delivery.store import LineageStore
from otel_lineage.evidence.seals import (
    DIGEST_COLUMNS,
    DIGEST_VERSION,
    INVALID,
    UNSEALED_COLUMNS,
    UNSIGNED,
    VALID,
    SealSettings,
    audit_seals,
    load_signer,
    row_digest,
    seal,
    seal_all,
)
from otel_lineage.record import LineageRecord
from otel_lineage.settings import LineageConfigError
from tests.lineage_support import lineage_pipeline, make_generator

BIN = Path(sys.executable).parent
runner = CliRunner()


def make_record(n: int, *, created_at: datetime | None = None) -> LineageRecord:
    """A lineage record with a value of every kind the digest must encode the same way on
    both databases: floats that are not short in decimal, nested JSON, non-ASCII text, NULLs."""
    now = created_at or datetime.now(UTC)
    return LineageRecord(
        trace_id=uuid.uuid4().hex,
        root_span_id=uuid.uuid4().hex[:16],
        report_generation_id=str(uuid.uuid4()),
        business_id=n,
        template_name="summary",
        template_version="1.0.0",
        template_sha256="a" * 64,
        inputs_sha256=f"{n:064x}",
        inputs_bytes=1000 + n,
        inputs_snapshot=b"zstd bytes of customer data",
        inputs_codec="zstd",
        html_sha256="c" * 64,
        output_sha256=f"{n + 7:064x}",
        output_bytes=40_000,
        output_pages=2,
        output_uri=f"file:///reports/{n}.pdf",
        status="completed" if n % 5 else "failed",
        error_type=None if n % 5 else "InputsError",
        error_message=None if n % 5 else "Café Müller: überlang ✓",
        started_at=now - timedelta(microseconds=123_457),
        ended_at=now,
        duration_ms=0.1 + 0.2 + n,
        steps=[{"name": "report.load_inputs", "ms": 1 / 3, "attrs": {"z": 1, "a": [1.5, None]}}],
        input_tables=["business", "finding"],
        span_count=7,
        span_tree=b"span tree",
        span_tree_codec="zstd",
        sampled=n % 2 == 0,
        complete=True,
        incomplete_reasons=[],
        service_name="d6-reports",
        service_version=None,
        created_at=now,
        caller_trace_id=None,
        exported=False,
        attempt=1,
        renderer={"weasyprint": "62.3", "fonts": [{"family": "DejaVu", "sha256": "f" * 64}]},
    )


def _write(engine: Engine, count: int, **kwargs: Any) -> list[LineageRecord]:
    records = [make_record(n, **kwargs) for n in range(count)]
    store = LineageStore(engine)
    store.upsert(records)
    return records


def _row_id(engine: Engine, trace_id: str) -> int:
    with engine.connect() as conn:
        value = conn.scalar(
            select(report_lineage.c.id).where(report_lineage.c.trace_id == trace_id)
        )
    assert value is not None
    return int(value)


def _refs(rows: list[dict[str, Any]]) -> set[tuple[str | None, str]]:
    return {(r["report_generation_id"], r["trace_id"]) for r in rows}


def _key_files(tmp_path: Path, name: str) -> tuple[Path, Path]:
    key = Ed25519PrivateKey.generate()
    private = tmp_path / f"{name}.pem"
    public = tmp_path / f"{name}.pub.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def test_every_column_is_sealed_or_deliberately_not() -> None:
    """A new report_lineage column must be put in a new digest version or named as unsealed."""
    sealed = set(DIGEST_COLUMNS[DIGEST_VERSION])
    assert not sealed & UNSEALED_COLUMNS
    columns = {c.name for c in report_lineage.columns}
    assert columns - UNSEALED_COLUMNS == sealed


def test_a_digest_is_the_same_read_from_sqlite_and_from_postgresql(
    engine: Engine, tmp_path: Path
) -> None:
    """The same records written to this database and to a fresh SQLite file read back to the
    same digests (so a seal made on one database checks on a copy in the other)."""
    other_url = f"sqlite:///{tmp_path / 'other.db'}"
    db.upgrade(other_url)
    other = create_engine(other_url)
    records = [make_record(n) for n in range(20)]
    LineageStore(engine).upsert(records)
    LineageStore(other).upsert(records)
    columns = [report_lineage.c[n] for n in DIGEST_COLUMNS[DIGEST_VERSION]]

    def digests(e: Engine) -> dict[str, str]:
        with e.connect() as conn:
            rows = conn.execute(select(*columns)).mappings().all()
        return {r["trace_id"]: row_digest(r) for r in rows}

    assert digests(engine) == digests(other)
    assert len(set(digests(engine).values())) == 20
    other.dispose()


def test_seal_covers_each_row_once_and_the_audit_holds(engine: Engine) -> None:
    _write(engine, 25)
    results = seal_all(engine, max_rows=10)
    assert [(r.seal_no, r.rows, r.exhaustive) for r in results] == [
        (1, 10, False),
        (2, 10, False),
        (3, 5, True),
    ]
    assert seal(engine) is None  # nothing left
    report = audit_seals(engine)
    assert report.ok and report.seals == 3 and report.rows_covered == 25
    assert report.not_yet_sealed == 0 and report.chain_head == results[-1].seal_hash
    assert report.signature_counts == {UNSIGNED: 3}
    _write(engine, 4)  # written after the last seal: waiting, not an error
    later = audit_seals(engine)
    assert later.ok and later.not_yet_sealed == 4


def test_rows_from_before_sealing_existed_are_not_yet_sealed(empty_db_url: str) -> None:
    """Migration 0009 up and down: rows written under 0008 are 'not yet sealed', not errors,
    and the first seal takes them; downgrading drops only the seal tables."""
    db.upgrade(empty_db_url, "0008_renderer_fingerprint")
    engine = create_engine(empty_db_url)
    try:
        with engine.begin() as conn:  # as the writer of that release wrote them
            rows = [make_record(n).as_row() for n in range(3)]
            for row in rows:
                del row["span_recording"]  # revision 0011
            conn.execute(report_lineage.insert(), rows)
        db.upgrade(empty_db_url, "0009_lineage_seals")
        before = audit_seals(engine)
        assert before.ok and before.seals == 0 and before.not_yet_sealed == 3
        assert seal(engine) is not None and audit_seals(engine).rows_covered == 3
        db.downgrade(empty_db_url, "0008_renderer_fingerprint")
        with engine.connect() as conn:
            assert conn.scalar(select(func.count()).select_from(report_lineage)) == 3
            tables = set(engine.dialect.get_table_names(conn))
        assert not {"lineage_seals", "lineage_seal_rows"} & tables
        db.upgrade(empty_db_url)
        assert audit_seals(engine).not_yet_sealed == 3
    finally:
        engine.dispose()


TAMPERING = [
    ("output_sha256", "0" * 64),
    ("inputs_sha256", "e" * 64),
    ("status", "completed"),
    ("error_message", None),
    ("business_id", 424242),
    ("duration_ms", 300.0000001),
    ("started_at", datetime(2026, 1, 1, tzinfo=UTC)),
    ("sampled", True),
    ("steps", [{"name": "report.load_inputs", "ms": 1 / 3}]),
    ("renderer", {"weasyprint": "61.0"}),
    ("report_generation_id", "00000000-0000-0000-0000-000000000000"),
]


@pytest.mark.parametrize(("column", "value"), TAMPERING, ids=[c for c, _ in TAMPERING])
def test_tampering_with_a_sealed_column_names_the_row(
    engine: Engine, column: str, value: object
) -> None:
    records = _write(engine, 10)
    seal_all(engine)
    target = records[5]  # a failed report: every column has a value to change
    with engine.begin() as conn:
        conn.execute(
            update(report_lineage)
            .where(report_lineage.c.trace_id == target.trace_id)
            .values({column: value})
        )
    report = audit_seals(engine)
    assert not report.ok
    assert _refs(report.modified) == {(target.report_generation_id, target.trace_id)}
    assert not (report.deleted or report.inserted or report.broken)


@pytest.mark.parametrize(
    "values",
    [
        {"inputs_snapshot": None, "span_tree": None, "pruned_at": datetime.now(UTC)},
        {"inputs_snapshot": b"re-encrypted", "inputs_codec": "zstd+aes-256-gcm"},
    ],
    ids=["pruned", "snapshot-rewritten"],
)
def test_blobs_and_pruning_are_not_sealed(engine: Engine, values: dict[str, object]) -> None:
    _write(engine, 5)
    seal_all(engine)
    with engine.begin() as conn:
        conn.execute(update(report_lineage).values(values))
    assert audit_seals(engine).ok


def test_prune_after_sealing_keeps_the_seals_clean(
    db_url: str,
    engine: Engine,
    sessions: sessionmaker[Session],
    business_ids: list[int],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Real reports, sealed from the command line, then pruned: `audit --seals` still holds."""
    monkeypatch.setenv("D6_DATABASE_URL", db_url)
    monkeypatch.delenv("OTEL_LINEAGE_DATABASE_URL", raising=False)
    with lineage_pipeline(db_url, engine) as (lineage, _):
        generator = make_generator(sessions, lineage, tmp_path / "pdfs")
        for business in business_ids[:3]:
            generator.generate_report_sync(business, GenerationOptions("summary"))
        assert lineage.flush(30)
    sealed = runner.invoke(app, ["seal"])
    assert sealed.exit_code == 0, sealed.output
    assert sealed.output.startswith("sealed 3 rows in seal #1 (chain head ")
    assert runner.invoke(app, ["seal"]).output == "nothing to seal\n"
    pruned = runner.invoke(app, ["prune", "--snapshots-older-than", "0", "--yes"])
    assert pruned.exit_code == 0 and "freed" in pruned.output
    audited = runner.invoke(app, ["audit", "--seals"])
    assert audited.exit_code == 0, audited.output
    assert "seals hold: 1 seals checked, 3 rows covered" in audited.output
    assert "not yet sealed: 0" in audited.output


def test_a_deleted_sealed_row_is_named(engine: Engine) -> None:
    records = _write(engine, 6)
    seal_all(engine)
    with engine.begin() as conn:
        conn.execute(delete(report_lineage).where(report_lineage.c.trace_id == records[2].trace_id))
    result = runner.invoke(app, ["audit", "--seals", "--json"], env=_env(engine))
    assert result.exit_code == 1
    report = orjson.loads(result.stdout)
    assert _refs(report["deleted"]) == {(records[2].report_generation_id, records[2].trace_id)}
    assert report["modified"] == [] and report["broken_links"] == []


def _env(engine: Engine) -> dict[str, str]:
    url = engine.url.render_as_string(hide_password=False)
    return {"OTEL_LINEAGE_DATABASE_URL": url, "D6_DATABASE_URL": url}


def test_a_back_dated_row_is_inserted_after_sealing_whether_sealed_later_or_not(
    engine: Engine,
) -> None:
    _write(engine, 4)
    seal_all(engine)
    forged = make_record(99, created_at=datetime.now(UTC) - timedelta(days=2))
    LineageStore(engine).upsert([forged])
    report = audit_seals(engine)
    assert _refs(report.inserted) == {(forged.report_generation_id, forged.trace_id)}
    assert report.inserted[0]["seal"] is None and "before seal #1" in report.inserted[0]["why"]
    seal_all(engine)  # a sealer that later takes the forged row does not launder it
    again = audit_seals(engine)
    assert _refs(again.inserted) == {(forged.report_generation_id, forged.trace_id)}
    assert again.inserted[0]["seal"] == 2 and not again.ok


def test_an_altered_seal_breaks_the_chain(engine: Engine) -> None:
    _write(engine, 9)
    seal_all(engine, max_rows=3)
    with engine.begin() as conn:
        conn.execute(
            update(lineage_seals).where(lineage_seals.c.seal_no == 2).values(seal_hash="f" * 64)
        )
    report = audit_seals(engine)
    assert {(b["seal"], b["problem"]) for b in report.broken} == {
        (2, "its stored hash was altered (its rows and successor agree)"),
        (3, "does not link to seal #2's hash"),
    }
    assert not (report.modified or report.deleted or report.inserted)


def test_altered_seal_rows_and_a_removed_seal_are_named(engine: Engine) -> None:
    records = _write(engine, 9)
    seal_all(engine, max_rows=3)
    row = _row_id(engine, records[0].trace_id)
    with engine.begin() as conn:
        conn.execute(
            update(lineage_seal_rows)
            .where(lineage_seal_rows.c.row_id == row)
            .values(digest="0" * 64)
        )
        conn.execute(delete(lineage_seals).where(lineage_seals.c.seal_no == 2))
    report = audit_seals(engine)
    problems = {(b["seal"], b["problem"]) for b in report.broken}
    assert (1, "its hash does not match its rows and record") in problems
    assert (3, "seal #2 is missing") in problems
    assert (2, "3 sealed rows name a seal that does not exist") in problems
    assert _refs(report.modified) == {(records[0].report_generation_id, records[0].trace_id)}


def test_signatures_valid_altered_and_checked_with_the_wrong_key(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    private, public = _key_files(tmp_path, "sealer")
    _, stranger = _key_files(tmp_path, "stranger")
    for name, value in _env(engine).items():
        monkeypatch.setenv(name, value)
    _write(engine, 3)
    unsigned = runner.invoke(app, ["seal", "--json"])
    assert orjson.loads(unsigned.stdout)["seals"][0]["signed"] is False
    _write(engine, 3)
    monkeypatch.setenv("OTEL_LINEAGE_SEAL_KEY_FILE", str(private))
    signed = runner.invoke(app, ["seal"])
    assert signed.exit_code == 0 and "signed by key" in signed.output
    # The private key's public half checks the signatures when no public key file is given.
    held = runner.invoke(app, ["audit", "--seals", "--json"])
    assert held.exit_code == 0, held.output
    assert orjson.loads(held.stdout)["signature_counts"] == {UNSIGNED: 1, VALID: 1}
    monkeypatch.delenv("OTEL_LINEAGE_SEAL_KEY_FILE")
    monkeypatch.setenv("OTEL_LINEAGE_SEAL_PUBLIC_KEY_FILE", str(public))
    assert runner.invoke(app, ["audit", "--seals"]).exit_code == 0
    monkeypatch.setenv("OTEL_LINEAGE_SEAL_PUBLIC_KEY_FILE", str(stranger))
    wrong = runner.invoke(app, ["audit", "--seals", "--json"])
    assert wrong.exit_code == 1
    (bad,) = [s for s in orjson.loads(wrong.stdout)["signatures"] if s["result"] == INVALID]
    assert bad["seal"] == 2 and "signed by key" in bad["detail"]
    monkeypatch.setenv("OTEL_LINEAGE_SEAL_PUBLIC_KEY_FILE", str(public))
    with engine.begin() as conn:
        signature = bytearray(
            conn.scalar(select(lineage_seals.c.signature).where(lineage_seals.c.seal_no == 2))
        )
        signature[0] ^= 1
        conn.execute(
            update(lineage_seals)
            .where(lineage_seals.c.seal_no == 2)
            .values(signature=bytes(signature))
        )
    altered = runner.invoke(app, ["audit", "--seals"])
    assert altered.exit_code == 1
    assert "seal #2: signature INVALID (the signature does not match the seal hash)" in (
        altered.output
    )


def test_bad_seal_settings_are_one_line_naming_the_variable(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    not_a_key = tmp_path / "not-a-key.pem"
    not_a_key.write_text("hello\n")
    with pytest.raises(LineageConfigError, match="OTEL_LINEAGE_SEAL_EVERY_S='-1' is out of range"):
        SealSettings.from_env({"OTEL_LINEAGE_SEAL_EVERY_S": "-1"})
    with pytest.raises(LineageConfigError, match="is not an unencrypted Ed25519 private key"):
        load_signer("OTEL_LINEAGE_SEAL_KEY_FILE", str(not_a_key))
    for name, value in _env(engine).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("OTEL_LINEAGE_SEAL_KEY_FILE", str(tmp_path / "missing.pem"))
    result = runner.invoke(app, ["seal"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: OTEL_LINEAGE_SEAL_KEY_FILE=")
    assert "cannot be read" in result.stderr and result.stderr.count("\n") == 1
    monkeypatch.delenv("OTEL_LINEAGE_SEAL_KEY_FILE")
    monkeypatch.setenv("OTEL_LINEAGE_SEAL_PUBLIC_KEY_FILE", str(not_a_key))
    audited = runner.invoke(app, ["audit", "--seals"])
    assert audited.exit_code == 2 and "is not an Ed25519 public key" in audited.stderr


WRITER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, sys.argv[3])
    from otel_lineage.delivery.engines import create_lineage_engine
    from otel_lineage.delivery.handoff import MemoryHandOff
    from otel_lineage.delivery.stats import LineageStats
    from otel_lineage.delivery.store import LineageStore
    from otel_lineage.delivery.writer import BackgroundWriter
    from otel_lineage.evidence.seals import writer_sealer
    from tests.integration.test_seals import make_record

    engine = create_lineage_engine(sys.argv[1])
    handoff = MemoryHandOff()
    writer = BackgroundWriter(
        handoff, LineageStore(engine), LineageStats(), batch_size=7, idle_wait_s=0.005,
        linger_s=0.005, sealer=writer_sealer(engine, None), seal_every_s=0.01,
    )
    writer.start()
    for n in range(int(sys.argv[2])):
        handoff.put(make_record(n))
        if n % 10 == 0:
            time.sleep(0.01)
    assert writer.flush(60)
    time.sleep(0.2)  # a few more sealing rounds
    writer.stop()
    """
)


def test_two_writer_processes_sealing_concurrently_keep_one_chain(
    engine: Engine, tmp_path: Path
) -> None:
    """Two real writer processes write and seal every 10 ms while `otel-lineage seal` runs
    too: the chain stays linear, every row is sealed exactly once, and tampering after it is
    still named on both databases."""
    script = tmp_path / "writer.py"
    script.write_text(WRITER_SCRIPT)
    url = engine.url.render_as_string(hide_password=False)
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, **_env(engine)}
    writers = [
        subprocess.Popen([sys.executable, str(script), url, "300", root], env=env) for _ in range(2)
    ]
    cli_seals = 0
    while any(w.poll() is None for w in writers) and cli_seals < 50:
        done = subprocess.run(
            [str(BIN / "otel-lineage"), "seal"], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        cli_seals += 1
    assert [w.wait(120) for w in writers] == [0, 0]
    final = subprocess.run(
        [str(BIN / "otel-lineage"), "seal"], env=env, capture_output=True, text=True, timeout=60
    )
    assert final.returncode == 0, final.stderr
    with engine.connect() as conn:
        seals = conn.execute(
            select(
                lineage_seals.c.seal_no,
                lineage_seals.c.prev_hash,
                lineage_seals.c.seal_hash,
                lineage_seals.c.sealed_by,
            ).order_by(lineage_seals.c.seal_no)
        ).all()
        rows = conn.scalar(select(func.count()).select_from(report_lineage))
        sealed = conn.execute(
            select(func.count(), func.count(func.distinct(lineage_seal_rows.c.row_id)))
        ).one()
    assert rows == 600 and tuple(sealed) == (600, 600)
    assert [s.seal_no for s in seals] == list(range(1, len(seals) + 1))
    assert [s.prev_hash for s in seals[1:]] == [s.seal_hash for s in seals[:-1]]
    assert len({s.sealed_by for s in seals}) >= 2  # more than one sealer really took part
    report = audit_seals(engine)
    assert report.ok and report.rows_covered == 600 and report.not_yet_sealed == 0
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE report_lineage SET output_pages = 99 "
                "WHERE id = (SELECT min(id) FROM report_lineage)"
            )
        )
    tampered = audit_seals(engine)
    assert len(tampered.modified) == 1 and not tampered.ok


def test_a_writer_whose_sealing_fails_keeps_writing(db_url: str, engine: Engine) -> None:
    """A seal table gone: every seal fails, every record still arrives."""
    from otel_lineage.delivery.handoff import MemoryHandOff
    from otel_lineage.delivery.stats import LineageStats
    from otel_lineage.delivery.writer import BackgroundWriter
    from otel_lineage.evidence.seals import writer_sealer

    with engine.begin() as conn:
        conn.execute(text("DROP TABLE lineage_seal_rows"))
    handoff = MemoryHandOff()
    store = LineageStore(create_engine(db_url))
    real = writer_sealer(store.engine, None)
    failures: list[str] = []

    def sealer() -> bool:
        try:
            return real()
        except Exception as exc:
            failures.append(type(exc).__name__)
            raise

    writer = BackgroundWriter(
        handoff,
        store,
        LineageStats(),
        idle_wait_s=0.01,
        linger_s=0.01,
        sealer=sealer,
        seal_every_s=0.01,
    )
    writer.start()
    for n in range(30):
        handoff.put(make_record(n))
        time.sleep(0.005)
    assert writer.flush(30)
    writer.stop()
    # Missing table: OperationalError on SQLite, ProgrammingError on PostgreSQL.
    assert len(failures) >= 2 and set(failures) <= {"OperationalError", "ProgrammingError"}
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(report_lineage)) == 30
    store.engine.dispose()


def test_the_configured_pipeline_seals_and_signs_by_itself(
    db_url: str,
    engine: Engine,
    sessions: sessionmaker[Session],
    business_ids: list[int],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """OTEL_LINEAGE_SEAL_EVERY_S and the key file reach the writer of a configured pipeline."""
    private, _ = _key_files(tmp_path, "writer")
    monkeypatch.setenv("OTEL_LINEAGE_SEAL_EVERY_S", "0.05")
    monkeypatch.setenv("OTEL_LINEAGE_SEAL_KEY_FILE", str(private))
    with lineage_pipeline(db_url, engine) as (lineage, _):
        generator = make_generator(sessions, lineage, tmp_path / "pdfs")
        for business in business_ids[:2]:
            generator.generate_report_sync(business, GenerationOptions("summary"))
        assert lineage.flush(30)
        deadline = time.monotonic() + 30
        while audit_seals(engine).rows_covered < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    report = audit_seals(engine, public_key=load_signer("K", str(private)).private_key.public_key())
    assert report.ok and report.rows_covered == 2
    assert set(report.signature_counts) == {VALID}


def test_a_bad_seal_interval_stops_configure(monkeypatch: pytest.MonkeyPatch, db_url: str) -> None:
    import otel_lineage

    monkeypatch.setenv("OTEL_LINEAGE_SEAL_EVERY_S", "soon")
    with pytest.raises(LineageConfigError, match="OTEL_LINEAGE_SEAL_EVERY_S='soon' is not valid"):
        otel_lineage.configure(database_url=db_url, set_global=False)


@pytest.mark.parametrize("args", [["seal"], ["audit", "--seals"]], ids=["seal", "audit"])
def test_seal_commands_before_revision_0009_say_to_migrate(
    empty_db_url: str, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    db.upgrade(empty_db_url, "0008_renderer_fingerprint")
    monkeypatch.setenv("D6_DATABASE_URL", empty_db_url)
    monkeypatch.delenv("OTEL_LINEAGE_DATABASE_URL", raising=False)
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert "not migrated" in result.stderr and "lineage_seals" in result.stderr


def test_a_row_slipped_in_below_the_sealed_ids_is_never_sealed_and_always_named(
    engine: Engine,
) -> None:
    """A row given an id below those of a seal older than the grace (an explicit id: no
    writer's row can be that late) is left out by every later seal and named by the audit."""
    with engine.begin() as conn:
        rows = [{**make_record(n).as_row(), "id": 10 * (n + 1)} for n in range(3)]
        conn.execute(report_lineage.insert(), rows)
    assert seal(engine) is not None
    forged = make_record(7)
    with engine.begin() as conn:
        conn.execute(report_lineage.insert(), [{**forged.as_row(), "id": 15}])
    assert audit_seals(engine).ok  # within the grace it is only waiting for the next seal
    no_grace = timedelta(0)
    assert seal(engine, grace=no_grace) is None  # below the floor: never sealed
    report = audit_seals(engine, grace=no_grace)
    assert _refs(report.inserted) == {(forged.report_generation_id, forged.trace_id)}
    assert "below those of seal #1" in report.inserted[0]["why"]
    assert report.not_yet_sealed == 1
