"""The README's and docs' commands, run literally as a new user would: one lineage row per PDF.

Each test runs the console scripts as subprocesses in an empty directory with no ``OTEL_*`` or
``D6_*`` variable set (the "no configuration" default: SQLite and the outbox under ``./var``),
then counts PDFs on disk, ``ReportGeneration`` rows and ``report_lineage`` rows, and asks
``otel-lineage audit`` (exit 0 only at 100% capture).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

BIN = Path(sys.executable).parent
#: Set-up commands of the README's "Using it" section (seed only three businesses: speed).
SET_UP = ("d6-reports db upgrade", "d6-reports seed-demo --count 3")


def _clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OTEL_", "D6_", "ENABLE_REPORT_LINEAGE", "PYTHONPATH"))
    }
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def _sh(command: str, cwd: Path, env: dict[str, str], *, ok: bool = True) -> str:
    done = subprocess.run(
        command, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    if ok:
        assert done.returncode == 0, f"{command}: {done.stdout}\n{done.stderr}"
        assert "Traceback" not in done.stderr, done.stderr
    return done.stdout + done.stderr


def _counts(cwd: Path) -> tuple[int, int, int]:
    pdfs = len(list((cwd / "var" / "reports").rglob("*.pdf")))
    conn = sqlite3.connect(cwd / "var" / "d6_reports.db")
    try:
        generations = conn.execute(
            "SELECT count(*) FROM report_generation WHERE status = 'completed'"
        ).fetchone()[0]
        lineage = conn.execute(
            "SELECT count(*) FROM report_lineage l JOIN report_generation g "
            "ON g.id = l.report_generation_id AND g.trace_id = l.trace_id"
        ).fetchone()[0]
    finally:
        conn.close()
    return pdfs, generations, lineage


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    env = _clean_env()
    for command in SET_UP:
        _sh(command, tmp_path, env)
    return tmp_path


def test_bare_commands_give_every_pdf_its_lineage(workdir: Path) -> None:
    env = _clean_env()
    _sh("d6-reports generate --business-id 3", workdir, env)
    _sh(
        "d6-reports generate --business-id 3 --template summary --version 1.0.0 --json",
        workdir,
        env,
    )
    _sh("d6-reports generate-all --workers 2", workdir, env)
    pdfs, generations, lineage = _counts(workdir)
    assert pdfs == generations == lineage == 5
    assert "capture rate 100.00%" in _sh("otel-lineage audit", workdir, env)
    conn = sqlite3.connect(workdir / "var" / "d6_reports.db")
    try:  # the service names itself when the environment does not
        names = {n for (n,) in conn.execute("SELECT DISTINCT service_name FROM report_lineage")}
    finally:
        conn.close()
    assert names == {"d6-reports"}


def test_zero_code_line_gives_every_pdf_its_lineage(workdir: Path) -> None:
    env = _clean_env(
        OTEL_TRACES_SAMPLER="lineage_parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG="0.1"
    )
    _sh("opentelemetry-instrument d6-reports generate-all", workdir, env)
    _sh("opentelemetry-instrument d6-reports generate-all --workers 2", workdir, env)
    pdfs, generations, lineage = _counts(workdir)
    assert pdfs == generations == lineage == 6
    _sh("otel-lineage audit", workdir, _clean_env())


@pytest.mark.parametrize("launcher", ["", "opentelemetry-instrument "])
def test_otlp_line_exports_traces_and_keeps_lineage(
    workdir: Path,
    otlp_receiver: tuple[str, list[bytes]],
    launcher: str,
) -> None:
    url, bodies = otlp_receiver
    endpoint = url.removesuffix("/v1/traces")
    env = _clean_env(OTEL_TRACES_EXPORTER="otlp", OTEL_EXPORTER_OTLP_ENDPOINT=endpoint)
    _sh(f"{launcher}d6-reports generate --business-id 2", workdir, env)
    pdfs, generations, lineage = _counts(workdir)
    assert pdfs == generations == lineage == 1
    names = set()
    for body in bodies:
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                names.update(span.name for span in scope_spans.spans)
    assert {"report.generate", "report.convert_pdf"} <= names


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("OTEL_LINEAGE_BATCH_SIZE", "0", "OTEL_LINEAGE_BATCH_SIZE='0' is out of range"),
        ("OTEL_LINEAGE_MAX_TRACES", "many", "OTEL_LINEAGE_MAX_TRACES='many' is not valid"),
        ("ENABLE_REPORT_LINEAGE", "maybe", "ENABLE_REPORT_LINEAGE='maybe' is not valid"),
        ("OTEL_TRACES_SAMPLER_ARG", "2", "sampling ratio must be within [0, 1]"),
        ("OTEL_TRACES_EXPORTER", "zipkin", "zipkin"),
        ("OTEL_TRACES_SAMPLER", "lineage_bogus", "is not a known sampler"),
        ("OTEL_LINEAGE_DATABASE_URL", "sqlite:///:memory:", "in-memory SQLite database"),
        ("OTEL_LINEAGE_OUTBOX", "/proc/no-outbox-here", "a crash would lose lineage"),
    ],
)
@pytest.mark.parametrize("launcher", ["", "opentelemetry-instrument "])
@pytest.mark.parametrize("command", ["generate --business-id 1", "generate-all --workers 2"])
def test_a_failed_start_is_loud_and_makes_no_pdf(
    workdir: Path, variable: str, value: str, says: str, launcher: str, command: str
) -> None:
    """Also with a pool: forked before this check (``d6_reports.batch``), its processes bring
    nothing up until their first report; spawned (under ``opentelemetry-instrument``), they
    start after it. Either way the command's lines are the only ones."""
    env = _clean_env(**{"OTEL_TRACES_SAMPLER": "lineage_parentbased_traceidratio", variable: value})
    done = subprocess.run(
        f"{launcher}d6-reports {command}",
        shell=True,
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert says in done.stderr
    our_lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(our_lines) == 1, done.stderr
    # Said once, by the command: no pool process repeats a lineage line (traceback frames
    # of the launcher's own log are indented and left out).
    said = [ln for ln in done.stderr.splitlines() if "lineage" in ln and not ln[:1].isspace()]
    assert len(said) == len(set(said)), done.stderr
    if not launcher:  # under opentelemetry-instrument, its own start-up may log a traceback
        assert "Traceback" not in done.stderr
    assert _counts(workdir)[0] == 0


def test_explicit_opt_outs_are_warnings(workdir: Path) -> None:
    for variable in ("ENABLE_REPORT_LINEAGE=false", "OTEL_SDK_DISABLED=true"):
        name, value = variable.split("=")
        output = _sh("d6-reports generate --business-id 1", workdir, _clean_env(**{name: value}))
        assert "warning: " in output and "no lineage rows" in output
    assert _counts(workdir)[2] == 0


def test_the_readme_python_example_runs_as_written(workdir: Path) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    example = readme.split("```python\n", 1)[1].split("```", 1)[0]
    done = subprocess.run(
        [sys.executable, "-c", example],
        cwd=workdir,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("True "), done.stdout
    pdfs, generations, lineage = _counts(workdir)
    assert pdfs == generations == lineage == 1


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_readme_service_commands_run(workdir: Path) -> None:
    """The README's service lines (the port is a free one instead of 8080)."""
    import json
    import time
    import urllib.error
    import urllib.request

    env = _clean_env()
    key = _sh("otel-lineage keys create --name alice --role support --expires 90d", workdir, env)
    secret = next(word for word in key.split() if word.startswith("d6l_"))
    port = _free_port()
    server = subprocess.Popen(
        ["otel-lineage", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/api/v1/reports"
        deadline = time.monotonic() + 60
        while True:
            try:
                request = urllib.request.Request(url, headers={"Authorization": f"Bearer {secret}"})
                with urllib.request.urlopen(request, timeout=5) as response:
                    assert "total" in json.loads(response.read())
                break
            except (urllib.error.URLError, ConnectionError):
                assert server.poll() is None, server.stderr.read() if server.stderr else ""
                assert time.monotonic() < deadline, "the service did not answer"
                time.sleep(0.3)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=5)
        assert refused.value.code == 401
    finally:
        server.terminate()
        server.wait(timeout=30)
    listed = _sh("otel-lineage keys list", workdir, env)
    assert "alice" in listed and secret not in listed
    _sh("otel-lineage keys revoke alice", workdir, env)
    assert "key_create" in _sh("otel-lineage access-log", workdir, env)
