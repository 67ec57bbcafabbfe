from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from sqlalchemy import create_engine, func, select, text
from typer.testing import CliRunner

from d6_reports.batch import WorkerPool, run_batch
from d6_reports.cli import app
from d6_reports.generator import GenerationOptions
from d6_reports.models import ReportGeneration

runner = CliRunner()
BIN = Path(sys.executable).parent


@pytest.fixture
def env(empty_db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("D6_DATABASE_URL", empty_db_url)
    monkeypatch.setenv("D6_REPORTS_DIR", str(tmp_path / "reports"))
    return empty_db_url


def _count(url: str, where: str = "1=1") -> int:
    engine = create_engine(url)
    with engine.connect() as conn:
        value = conn.execute(text(f"SELECT count(*) FROM report_generation WHERE {where}"))
        count = int(value.scalar_one())
    engine.dispose()
    return count


def test_upgrade_seed_generate(env: str, tmp_path: Path) -> None:
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    seeded = runner.invoke(app, ["seed-demo", "--count", "3"])
    assert seeded.exit_code == 0 and "3 businesses" in seeded.output
    ok = runner.invoke(app, ["generate", "--business-id", "1", "--template", "summary"])
    assert ok.exit_code == 0, ok.output
    assert "completed" in ok.output and ".pdf" in ok.output
    as_json = runner.invoke(app, ["generate", "--business-id", "2", "--json"])
    result = orjson.loads(as_json.stdout)
    assert result["success"] is True and result["pages"] >= 2
    assert Path(result["pdf_path"]).read_bytes().startswith(b"%PDF")
    failed = runner.invoke(app, ["generate", "--business-id", "99"])
    assert failed.exit_code == 1
    assert "BusinessNotFound" in failed.output
    missing = runner.invoke(app, ["generate", "--business-id", "1", "--version", "0.0.1"])
    assert missing.exit_code == 1 and "TemplateNotFound" in missing.output
    assert _count(env) == 4
    assert _count(env, "status = 'failed'") == 2


def test_demo_generates_every_report(env: str, tmp_path: Path) -> None:
    result = runner.invoke(app, ["demo"])
    assert result.exit_code == 0, result.output
    assert "12/12 reports" in result.output
    assert len(list((tmp_path / "reports").rglob("*.pdf"))) == 12
    again = runner.invoke(app, ["demo"])  # re-runnable: no duplicate seed data
    assert again.exit_code == 0 and "12/12 reports" in again.output
    assert _count(env) == 24


def test_generate_all_with_worker_processes(env: str, tmp_path: Path) -> None:
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    assert runner.invoke(app, ["seed-demo", "--count", "4"]).exit_code == 0
    result = runner.invoke(app, ["generate-all", "--workers", "2", "--template", "summary"])
    assert result.exit_code == 0, result.output
    assert _count(env, "status = 'completed'") == 4


def test_run_batch_reports_failures_per_item(env: str) -> None:
    runner.invoke(app, ["db", "upgrade"])
    runner.invoke(app, ["seed-demo", "--count", "2"])
    with WorkerPool(2) as pool:
        items = list(run_batch([1, 2, 5000], GenerationOptions("summary"), pool=pool))
    assert sorted((i.business_id, i.success, i.error_type) for i in items) == [
        (1, True, None),
        (2, True, None),
        (5000, False, "BusinessNotFound"),
    ]
    engine = create_engine(env)
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(ReportGeneration)) == 3
    engine.dispose()
    with pytest.raises(ValueError):
        WorkerPool(1)


#: A batch in a pool where the report of one business kills its process (SIGKILL).
_KILLING_BATCH = """
import os, signal, sys
import orjson
from d6_reports import batch
from d6_reports.generator import GenerationOptions

real = batch._generate_in_worker


def killing(business_id, options):
    if business_id == int(sys.argv[1]):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(business_id, options)


if __name__ == "__main__":
    batch._generate_in_worker = killing
    with batch.WorkerPool(2) as pool:
        items = list(batch.run_batch(range(1, 9), GenerationOptions("summary"), pool=pool))
    print(orjson.dumps([(i.business_id, i.success, i.error_type) for i in items]).decode())
"""


def test_a_report_that_kills_its_process_fails_alone(env: str, tmp_path: Path) -> None:
    """The executor breaks with every report in it; the ones it may have been running are
    run again alone, so only the killer fails and the batch goes on to the end."""
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    assert runner.invoke(app, ["seed-demo", "--count", "8"]).exit_code == 0
    script = tmp_path / "killing_batch.py"
    script.write_text(_KILLING_BATCH)
    done = subprocess.run(
        [sys.executable, str(script), "3"], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    items = sorted(tuple(i) for i in orjson.loads(done.stdout))
    assert items == [(b, b != 3, None if b != 3 else "BrokenProcessPool") for b in range(1, 9)]
    # A report whose result was on its way back when the executor broke is run again, so a
    # business may have two completed generations (each with its own lineage row).
    engine = create_engine(env)
    with engine.connect() as conn:
        done_for = conn.scalars(
            text("SELECT DISTINCT business_id FROM report_generation WHERE status = 'completed'")
        ).all()
    engine.dispose()
    assert sorted(done_for) == [b for b in range(1, 9) if b != 3]


#: A batch whose pool lost a process before it was given any report.
_EARLY_DEATH_BATCH = """
import multiprocessing, os, signal, time
import orjson
from d6_reports import batch
from d6_reports.generator import GenerationOptions

if __name__ == "__main__":
    with batch.WorkerPool(2) as pool:
        victim = multiprocessing.active_children()[0]
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(10)
        time.sleep(0.5)  # the executor has seen it
        items = list(batch.run_batch(range(1, 7), GenerationOptions("summary"), pool=pool))
    print(orjson.dumps([(i.business_id, i.success) for i in items]).decode())
"""


def test_a_pool_that_lost_a_process_before_its_first_report_runs_them_all(
    env: str, tmp_path: Path
) -> None:
    """The command starts its pool first: a process can die while it is still starting."""
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    assert runner.invoke(app, ["seed-demo", "--count", "6"]).exit_code == 0
    script = tmp_path / "early_death.py"
    script.write_text(_EARLY_DEATH_BATCH)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    assert sorted(tuple(i) for i in orjson.loads(done.stdout)) == [(b, True) for b in range(1, 7)]


_POOL_START_METHODS = """
from d6_reports.batch import WorkerPool
from d6_reports.bootstrap import start_telemetry
with WorkerPool(2) as pool:
    print(pool.start_method)
start_telemetry()
with WorkerPool(2) as pool:
    print(pool.start_method)
"""


@pytest.mark.parametrize(
    ("launcher", "methods"),
    [((), ["fork", "spawn"]), (("opentelemetry-instrument",), ["spawn", "spawn"])],
    ids=["plain", "opentelemetry-instrument"],
)
def test_a_pool_is_forked_only_from_a_process_without_telemetry(
    env: str, launcher: tuple[str, ...], methods: list[str]
) -> None:
    """A fork copies no SDK thread or state only before telemetry is up: after
    ``start_telemetry``, or under ``opentelemetry-instrument`` (which starts the SDK before
    the program runs), the pool's processes are spawned."""
    command = [*(str(BIN / name) for name in launcher), sys.executable, "-c", _POOL_START_METHODS]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == methods


def test_templates_list_and_lock_check() -> None:
    listed = runner.invoke(app, ["templates", "list"])
    assert listed.exit_code == 0
    assert "audit_report" in listed.output and "2.0.0" in listed.output
    assert runner.invoke(app, ["templates", "lock", "--check"]).exit_code == 0


def test_db_downgrade(env: str) -> None:
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    assert runner.invoke(app, ["db", "downgrade"]).exit_code == 2  # a revision is required
    refused = runner.invoke(app, ["db", "downgrade", "base"])
    assert refused.exit_code == 2 and "0001_report_service" in refused.stderr
    assert _count(env) == 0  # the tables are still there
    down = runner.invoke(app, ["db", "downgrade", "base", "--yes"])
    assert down.exit_code == 0 and "base" in down.output


def _batch_in_progress(
    tmp_path: Path, *, working: bool = True
) -> tuple[subprocess.Popen[bytes], list[int]]:
    """``generate-all --workers 2`` in a session of its own (stderr in ``tmp_path/err``), its
    pool started, and ``working`` (a first PDF made) or not yet."""
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    assert runner.invoke(app, ["seed-demo", "--count", "40"]).exit_code == 0
    command = [str(BIN / "d6-reports"), "generate-all", "--workers", "2"]
    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "err").open("wb"),
        start_new_session=True,
    )
    children: list[int] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = subprocess.run(
            ["pgrep", "-P", str(process.pid)], capture_output=True, text=True, check=False
        ).stdout.split()
        children = [int(pid) for pid in found]
        made = list((tmp_path / "reports").rglob("*.pdf"))
        if len(children) >= 2 and (made or not working):
            break
        time.sleep(0.05)
    assert len(children) >= 2, "the pool is not running"
    if not working:
        time.sleep(0.3)  # its processes idle, waiting for their first report
    return process, children


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def _all_gone(pids: list[int]) -> bool:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.1)
    return not any(_alive(pid) for pid in pids)


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_pool_processes_end_with_their_command(
    env: str, tmp_path: Path, how: signal.Signals
) -> None:
    """Killed, the command takes its pool with it: no process lives on holding its outbox."""
    process, children = _batch_in_progress(tmp_path)
    os.kill(process.pid, how)
    process.wait(30)
    assert _all_gone(children)


@pytest.mark.parametrize("working", [False, True], ids=["starting", "working"])
@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_ends_the_command_quietly(
    env: str, tmp_path: Path, working: bool, presses: int
) -> None:
    """Ctrl-C reaches the whole process group: the command stops its pool (an idle pool
    process does not die of it with a traceback), and a second one during the stop does
    not leave the command waiting on its pool for ever."""
    process, children = _batch_in_progress(tmp_path, working=working)
    for _ in range(presses):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGINT)
        time.sleep(0.3)
    assert process.wait(60) != 0
    assert _all_gone(children)
    assert "Traceback" not in (tmp_path / "err").read_text()


def test_ctrl_c_ends_a_command_whose_pool_process_is_stopped(env: str, tmp_path: Path) -> None:
    """A stopped process (SIGSTOP) never acts on SIGTERM: the stop kills it."""
    process, children = _batch_in_progress(tmp_path)
    os.kill(children[0], signal.SIGSTOP)
    time.sleep(0.5)
    os.killpg(process.pid, signal.SIGINT)
    assert process.wait(60) != 0
    assert _all_gone(children)
