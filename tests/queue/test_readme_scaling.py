"""The README's "Scaling out" commands, run as written: two worker nodes on the real broker.

The block is taken from README.md itself and run by bash in an empty directory (with the
project's venv where ``make demo`` leaves it, ``./.venv``) and no ``OTEL_*`` or ``D6_*``
variable set. One thing is changed, for isolation: the database name (``reports``) becomes one
of the test's own, and the test's own queue name is set (``D6_QUEUE``), so that runs never
share a database or a queue.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCUMENTED_DATABASE = "reports"


def _scaling_block() -> str:
    section = README.read_text().split("## Scaling out", 1)[1]
    match = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert match is not None, "README: no sh block under 'Scaling out'"
    return match.group(1)


def test_the_readme_scaling_out_block_runs_as_written(broker_url: str, tmp_path: Path) -> None:
    admin = os.environ.get("D6_TEST_POSTGRES_URL")
    if not admin:
        if os.environ.get("D6_TEST_REQUIRE_POSTGRES") == "1":
            pytest.fail("D6_TEST_POSTGRES_URL is not set")
        pytest.skip("D6_TEST_POSTGRES_URL not set")
    block = _scaling_block()
    assert f"createdb -h 127.0.0.1 -U postgres {DOCUMENTED_DATABASE}" in block
    database = f"d6_readme_{uuid.uuid4().hex[:10]}"
    script = block.replace(f"-U postgres {DOCUMENTED_DATABASE}", f"-U postgres {database}").replace(
        f"5432/{DOCUMENTED_DATABASE}", f"5432/{database}"
    )
    assert script.count(database) == 2
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OTEL_", "D6_", "ENABLE_REPORT_LINEAGE", "PYTHONPATH", "VIRTUAL_ENV"))
    }
    env["D6_QUEUE"] = f"d6-readme-{uuid.uuid4().hex[:10]}"
    env["D6_BROKER_URL"] = broker_url
    url = make_url(admin).set(database=database)
    try:
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=420,
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0, output[-4000:]
        assert "capture rate 100.00%" in done.stdout, output[-4000:]
        assert "Traceback" not in output
        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                statuses = dict(
                    conn.execute(
                        text("SELECT status, count(*) FROM report_generation GROUP BY status")
                    ).all()
                )
                joined = conn.scalar(
                    text(
                        "SELECT count(*) FROM report_lineage l JOIN report_generation g "
                        "ON g.id = l.report_generation_id AND g.trace_id = l.trace_id "
                        "WHERE l.status = 'completed'"
                    )
                )
                services = {
                    s for (s,) in conn.execute(text("SELECT service_name FROM report_lineage"))
                }
        finally:
            engine.dispose()
        assert statuses == {"completed": 13}  # enqueue-all's 12 and the one followed
        assert joined == 13
        assert services == {"d6-reports-worker"}
        assert _processes_in(tmp_path) == []  # the warm stop stopped both nodes
    finally:
        _drop(admin, database)
        _delete_queue(broker_url, env["D6_QUEUE"])


def _processes_in(directory: Path) -> list[int]:
    """Processes whose working directory is ``directory`` (the nodes the block started)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if Path(os.readlink(entry / "cwd")) == directory:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _drop(admin_url: str, database: str) -> None:
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
    finally:
        engine.dispose()


def _delete_queue(broker_url: str, queue: str) -> None:
    from tests.queue.harness import delete_queue

    delete_queue(broker_url, queue)
