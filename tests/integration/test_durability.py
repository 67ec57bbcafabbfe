"""Lineage on a bad day: database outages, crashes, replays, many workers, long runs."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import orjson
import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

import otel_lineage
from d6_reports.generator import GenerationOptions, ReportGenerator
from d6_reports.models import ReportGeneration
from d6_reports.seed import seed_demo
from otel_lineage.cli import app as lineage_cli
from otel_lineage.delivery.outbox import OutboxHandOff, inspect_outboxes
from otel_lineage.delivery.schema import report_lineage
from tests.fast_pdf import FastPDFConverter
from tests.lineage_support import lineage_pipeline, lineage_rows, make_generator
from tests.tcp_proxy import TCPProxy
from tests.unit.test_fold_and_processor import _fold, _report, _tracer

SUMMARY = GenerationOptions("summary")
BIN = Path(sys.executable).parent
runner = CliRunner()


def _record(**kwargs: object) -> otel_lineage.LineageRecord:
    provider, exporter = _tracer()
    _report(provider, **kwargs)  # type: ignore[arg-type]
    return _fold(exporter)


def _count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(report_lineage)) or 0)


# -- the outbox itself ------------------------------------------------------------------------


def test_outbox_keeps_records_across_a_crash_and_the_next_process_adopts_them(
    outbox_dir: Path,
) -> None:
    _crash_with_records_in_outbox(outbox_dir, 3)
    (orphan,) = inspect_outboxes(outbox_dir)
    assert (orphan.records, orphan.owner_alive) == (3, False)
    live = OutboxHandOff(outbox_dir)
    assert live.recover() == 3
    assert live.pending() == 3
    taken = live.take(10, 0)
    assert len(taken) == 3 and all(p.record.complete for p in taken)
    live.ack(taken)
    assert live.pending() == 0
    assert [f.owner_alive for f in inspect_outboxes(outbox_dir)] == [True]
    live.close()


def _crash_with_records_in_outbox(outbox_dir: Path, count: int) -> None:
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from otel_lineage.delivery.outbox import OutboxHandOff\n"
        "from tests.integration.test_durability import _record\n"
        "box = OutboxHandOff(Path(sys.argv[1]))\n"
        f"for _ in range({count}): assert box.put(_record())\n"
        "os.kill(os.getpid(), 9)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(outbox_dir)], cwd=Path.cwd())
    assert done.returncode == -signal.SIGKILL


def test_a_starting_process_ships_what_a_dead_one_left(
    db_url: str, engine: Engine, outbox_dir: Path
) -> None:
    _crash_with_records_in_outbox(outbox_dir, 3)
    with lineage_pipeline(db_url, engine) as (lineage, _):  # same OTEL_LINEAGE_OUTBOX
        assert lineage.flush(30)
        assert _count(engine) == 3
    assert list(outbox_dir.glob("*.db")) == []


def test_outbox_take_ack_release_and_close(outbox_dir: Path) -> None:
    box = OutboxHandOff(outbox_dir)
    records = [_record() for _ in range(4)]
    for record in records:
        assert box.put(record)
    first = box.take(3, 0)
    assert [p.record for p in first] == records[:3]
    box.release(first[1:])
    box.ack(first[:1])
    again = box.take(10, 0)
    assert [p.record.trace_id for p in again] == [r.trace_id for r in records[1:]]
    box.ack(again)
    assert box.pending() == 0
    assert box.take(1, 0.01) == []
    box.close()
    assert list(outbox_dir.iterdir()) == []  # an empty outbox leaves nothing behind


def test_outbox_overflow_is_refused_and_counted(
    db_url: str,
    engine: Engine,
    sessions: sessionmaker[Session],
    business_ids: list[int],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("OTEL_LINEAGE_MAX_PENDING", "2")
    url = f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}"  # a lineage database that is down
    with lineage_pipeline(url, engine) as (lineage, _):
        generator = make_generator(sessions, lineage, tmp_path)
        results = [generator.generate_report_sync(b, SUMMARY) for b in business_ids[:4]]
        assert all(r.success for r in results)  # the report never fails for lineage
        assert lineage.processor is not None
        counts = lineage.processor.stats.snapshot()
        assert (counts.folded, counts.dropped) == (4, 2)


def test_unwritable_outbox_never_fails_the_report(
    db_url: str,
    engine: Engine,
    sessions: sessionmaker[Session],
    business_ids: list[int],
    tmp_path: Path,
) -> None:
    with lineage_pipeline(db_url, engine) as (lineage, _):
        assert lineage.processor is not None
        box = lineage.processor.handoff
        assert isinstance(box, OutboxHandOff)
        box._conn.close()  # the disk went away under the outbox
        generator = make_generator(sessions, lineage, tmp_path)
        result = generator.generate_report_sync(business_ids[0], SUMMARY)
        assert result.success
        assert lineage.processor.stats.snapshot().dropped == 1


# -- database outages (PostgreSQL through a proxy the test can cut) ---------------------------


def _via_proxy(url: str, proxy: TCPProxy) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{proxy.port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))


POSTGRES_ONLY = pytest.mark.parametrize(
    "empty_db_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
SQLITE_ONLY = pytest.mark.parametrize("empty_db_url", ["sqlite"], indirect=True)


@pytest.fixture
def pg_proxy(db_url: str) -> TCPProxy:
    parts = urlsplit(db_url)
    return TCPProxy(parts.hostname or "127.0.0.1", parts.port or 5432)


@POSTGRES_ONLY  # network outages are a PostgreSQL matter
def test_database_down_for_the_whole_run_then_back(
    db_url: str,
    engine: Engine,
    sessions: sessionmaker[Session],
    business_ids: list[int],
    tmp_path: Path,
    pg_proxy: TCPProxy,
) -> None:
    with lineage_pipeline(_via_proxy(db_url, pg_proxy), engine) as (lineage, _):
        generator = make_generator(sessions, lineage, tmp_path)
        results = [generator.generate_report_sync(b, SUMMARY) for b in business_ids * 2]
        # Never blocked by the dead database: every report finished while it was still down.
        assert all(r.success for r in results)
        assert lineage.processor is not None and lineage.processor.handoff.pending() == 12
        assert not lineage.flush(0.5)
        assert _count(engine) == 0
        pg_proxy.start()
        try:
            assert lineage.flush(60)
        finally:
            pg_proxy.stop()
    assert _count(engine) == len(results) == 12


@POSTGRES_ONLY
def test_database_killed_mid_batch_and_restarted(
    db_url: str,
    engine: Engine,
    sessions: sessionmaker[Session],
    business_ids: list[int],
    tmp_path: Path,
    pg_proxy: TCPProxy,
) -> None:
    pg_proxy.start()
    results = []
    try:
        with lineage_pipeline(_via_proxy(db_url, pg_proxy), engine) as (lineage, _):
            generator = ReportGenerator(
                sessions, tmp_path, tracer_provider=lineage.provider, converter=FastPDFConverter()
            )
            for _ in range(4):
                # The server dies while reports (and writer batches) are in flight ...
                cut = threading.Timer(0.05, pg_proxy.stop)
                cut.start()
                results += [generator.generate_report_sync(b, SUMMARY) for b in business_ids * 10]
                cut.join()
                assert not lineage.flush(0.3)  # ... a write is attempted against the dead server
                pg_proxy.start()  # ... and it comes back
            assert all(r.success for r in results)
            assert lineage.flush(60)
            assert lineage.processor is not None
            assert lineage.processor.stats.snapshot().errors >= 4  # every cut was felt
    finally:
        pg_proxy.stop()
    assert _count(engine) == len(results) == 240


# -- crashes and replays ------------------------------------------------------------------------


def test_sigkill_after_k_reports_then_restart(
    db_url: str,
    engine: Engine,
    sessions: sessionmaker[Session],
    business_ids: list[int],
    tmp_path: Path,
    outbox_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = {
        **os.environ,
        "D6_DATABASE_URL": db_url,
        "D6_REPORTS_DIR": str(tmp_path / "r"),
        "OTEL_LINEAGE_OUTBOX": str(outbox_dir),
    }
    k = 4
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.crash_worker", *map(str, business_ids * 2)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    returned = [process.stdout.readline().strip() for _ in range(k)]
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert all(re.fullmatch(r"[0-9a-f-]{36}", r) for r in returned)
    # A new process starts: it adopts the dead one's outbox and ships it.
    monkeypatch.setenv("D6_DATABASE_URL", db_url)
    flushed = runner.invoke(lineage_cli, ["outbox", "flush"])
    assert flushed.exit_code == 0, flushed.output
    rows = {r["report_generation_id"] for r in lineage_rows(engine)}
    assert set(returned) <= rows
    audit = runner.invoke(lineage_cli, ["audit", "--json"])
    report = orjson.loads(audit.stdout)
    for missing in report["missing"]:  # whatever has no row is explained
        assert missing["reason"]
        assert missing["report_generation_id"] not in returned


def test_outbox_replayed_twice_gives_no_duplicates(
    db_url: str,
    engine: Engine,
    outbox_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    box = OutboxHandOff(outbox_dir)
    for _ in range(5):
        box.put(_record())
    saved = tmp_path / "copy"
    saved.mkdir()
    for path in outbox_dir.iterdir():
        if ".db" in path.name:  # the database and its WAL, where fresh records live
            shutil.copy(path, saved / path.name)
    box._conn.close()  # crash: the file and its lock stay behind
    box._lock_file.close()
    monkeypatch.setenv("D6_DATABASE_URL", db_url)
    assert runner.invoke(lineage_cli, ["outbox", "flush"]).exit_code == 0
    assert _count(engine) == 5
    for path in saved.iterdir():  # the same outbox comes back (a restored backup, a retry)
        shutil.copy(path, outbox_dir / path.name)
        (outbox_dir / path.name.split(".db")[0]).with_suffix(".lock").touch()
    status = runner.invoke(lineage_cli, ["outbox", "status", "--json"])
    assert orjson.loads(status.stdout)["files"][0]["records"] == 5
    assert runner.invoke(lineage_cli, ["outbox", "flush"]).exit_code == 0
    assert _count(engine) == 5
    assert list(outbox_dir.glob("*.db")) == []


# -- many workers, long runs -------------------------------------------------------------------


@POSTGRES_ONLY  # many processes share PostgreSQL
def test_four_workers_by_250_reports(
    db_url: str,
    engine: Engine,
    sessions: sessionmaker[Session],
    tmp_path: Path,
    outbox_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with sessions() as session:
        seed_demo(session, count=1000)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(
        D6_DATABASE_URL=db_url,
        D6_REPORTS_DIR=str(tmp_path / "r"),
        OTEL_LINEAGE_OUTBOX=str(outbox_dir),
        OTEL_SERVICE_NAME="workers",
        OTEL_TRACES_SAMPLER="lineage_parentbased_traceidratio",
        OTEL_TRACES_SAMPLER_ARG="0.01",
        OTEL_TRACES_EXPORTER="none",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
    )
    done = subprocess.run(
        [
            str(BIN / "opentelemetry-instrument"),
            str(BIN / "d6-reports"),
            "generate-all",
            "--workers",
            "4",
            "--template",
            "summary",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(ReportGeneration)) == 1000
    assert _count(engine) == 1000
    monkeypatch.setenv("D6_DATABASE_URL", db_url)
    audit = runner.invoke(lineage_cli, ["audit", "--json"])
    assert audit.exit_code == 0, audit.output
    report = orjson.loads(audit.stdout)
    assert report["capture_rate"] == 1.0
    assert report["processes"] >= 4  # the workers (and the parent, which generated nothing)
    assert report["counters"]["written"] == 1000 and report["counters"]["dropped"] == 0


@SQLITE_ONLY  # one backend is enough for a memory profile
def test_memory_is_flat_over_10000_reports(db_url: str, engine: Engine, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tests.memory_probe", db_url, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rss = orjson.loads(done.stdout.strip().splitlines()[-1])
    print(f"RSS {rss['before_kb']} kB -> {rss['after_kb']} kB over 10,000 reports")  # pytest -s
    assert rss["after_kb"] - rss["before_kb"] < 10 * 1024, rss
    assert _count(engine) == 11_000


def test_an_unusable_outbox_directory_falls_back_to_memory(
    db_url: str,
    engine: Engine,
    sessions: sessionmaker[Session],
    business_ids: list[int],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the outbox directory should be")
    monkeypatch.setenv("OTEL_LINEAGE_OUTBOX", str(blocker / "outbox"))
    with lineage_pipeline(db_url, engine) as (lineage, _):
        assert lineage.processor is not None
        assert not isinstance(lineage.processor.handoff, OutboxHandOff)
        generator = make_generator(sessions, lineage, tmp_path)
        assert generator.generate_report_sync(business_ids[0], SUMMARY).success
        assert lineage.flush(30)
    assert _count(engine) == 1
