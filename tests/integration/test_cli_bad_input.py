"""Both command lines under bad input: one ``error:`` line on stderr, a non-zero exit, never a
traceback (issue 9 item 7), and the safety rails of issue 8 item 8 (confirmations, read-only
readers, id prefixes, deadlines)."""

from __future__ import annotations

import hashlib
import socket
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from sqlalchemy import Engine, column, create_engine, insert, table, text
from typer.testing import CliRunner, Result

from d6_reports.cli import app as d6_app
from otel_lineage.cli import app as lineage_app
from otel_lineage.delivery.schema import report_lineage
from otel_lineage.record import CODEC, compress

runner = CliRunner()
MARKUP = "[/][bold]x[/bold]"
BAD_UTF8 = b"audit\xff".decode("utf-8", "surrogateescape")  # what argv gives for a bad byte


def insert_lineage(
    engine: Engine,
    report_id: str,
    *,
    started_at: datetime = datetime(2025, 12, 1, 12, 0, tzinfo=UTC),
    business_name: str = "Acme",
    **values: object,
) -> None:
    """A lineage row as the writer stores it (only the columns every schema version has)."""
    snapshot = orjson.dumps({"business": {"name": business_name}, "findings": []})
    trace_id, root_span_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    root = {
        "trace_id": trace_id,
        "span_id": root_span_id,
        "parent_span_id": None,
        "name": "report.generate",
        "kind": "INTERNAL",
        "start_ns": int(started_at.timestamp() * 1e9),
        "end_ns": int(started_at.timestamp() * 1e9) + 1_000_000,
        "status": "OK",
        "attributes": {},
        "events": [],
        "links": [],
    }
    row: dict[str, object] = {
        "report_generation_id": report_id,
        "trace_id": trace_id,
        "root_span_id": root_span_id,
        "business_id": 1,
        "template_name": "summary",
        "template_version": "1.0.0",
        "status": "completed",
        "started_at": started_at,
        "steps": [
            {
                "name": "report.load_inputs",
                "duration_ms": 1.0,
                "start_offset_ms": 0.0,
                "status": "OK",
            }
        ],
        "input_tables": ["business"],
        "span_count": 1,
        "sampled": False,
        "complete": True,
        "incomplete_reasons": [],
        "created_at": started_at,
        "inputs_snapshot": compress(snapshot),
        "inputs_codec": CODEC,
        "inputs_sha256": hashlib.sha256(snapshot).hexdigest(),
        "span_tree": compress(orjson.dumps({"resource": {}, "spans": [root]})),
        "span_tree_codec": CODEC,
        "duration_ms": 1.0,
    }
    row.update(values)
    with engine.begin() as conn:
        conn.execute(insert(report_lineage).values(**row))


generations = table(
    "report_generation",
    column("id"),
    column("business_id"),
    column("template_name"),
    column("template_version"),
    column("status"),
    column("requested_at"),
    column("pdf_sha256"),
)


def insert_generation(engine: Engine, report_id: str, **values: object) -> None:
    row: dict[str, object] = {
        "id": report_id,
        "business_id": 1,
        "template_name": "summary",
        "template_version": "1.0.0",
        "status": "completed",
        "requested_at": datetime(2025, 12, 1, 12, 0, tzinfo=UTC),
    }
    row.update(values)
    with engine.begin() as conn:
        conn.execute(insert(generations).values(**row))


def assert_one_line_error(result: Result, code: int | None = None) -> str:
    assert result.exit_code != 0, result.output
    if code is not None:
        assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture
def sqlite_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    """A migrated SQLite database with one lineage row, for the argument table."""
    from d6_reports import db

    url = f"sqlite:///{tmp_path / 'lineage.db'}"
    db.upgrade(url)
    monkeypatch.setenv("D6_DATABASE_URL", url)
    monkeypatch.delenv("OTEL_LINEAGE_DATABASE_URL", raising=False)
    engine = create_engine(url)
    insert_lineage(engine, "11111111-aaaa-4000-8000-000000000001")
    yield engine
    engine.dispose()


REPORT = "11111111-aaaa-4000-8000-000000000001"
LINEAGE_CASES = [
    ["list", "--business", "99999999999999999999"],
    ["list", "--business", "-1"],
    ["list", "--page", "0"],
    ["list", "--page", "99999999999999999999"],
    ["list", "--limit", "inf"],
    ["list", "--template", "x" * 300],
    ["list", "--template", BAD_UTF8],
    ["list", "--since", "yesterday"],
    ["list", "--until", "2026-13-01"],
    ["audit", "--since", "not a time"],
    ["audit", "--limit", "-1"],
    ["stats", "--since", "2026-12-01T25:00"],
    ["show"],
    ["show", REPORT, "--latest"],
    ["show", "x" * 100],
    ["show", BAD_UTF8],
    ["show", "no-such-report"],
    ["verify", "no-such-report"],
    ["prune", "--snapshots-older-than", "inf"],
    ["prune", "--snapshots-older-than", "nan"],
    ["prune", "--snapshots-older-than", "-1"],
    ["prune", "--snapshots-older-than", "0"],  # stdin is not a terminal and no --yes
    ["identify", "/dev/zero"],
    ["identify", "/"],
    ["identify", "/no/such.pdf"],
    ["inputs", REPORT, "-o", "/no/such/dir/inputs.json"],
    ["inputs", REPORT, "-o", "/"],
    ["inputs", REPORT, "-o", "/dev/full"],
    ["inputs", REPORT, "-o", "/dev/full", "--force"],
    ["trace", REPORT, "-o", "/dev/full", "--force"],
    ["trace", REPORT, "--format", "zipkin"],
    ["openlineage", "--since", "2000-01-01", "--emit", "not a url"],
    ["openlineage", "--since", "2000-01-01", "--emit", "file:///etc/passwd"],
    ["openlineage", "--since", "2000-01-01", "--emit", "http://127.0.0.1:99999"],
    ["openlineage"],
    ["--db-timeout", "0", "list"],
    ["no-such-command"],
]


@pytest.mark.parametrize("args", LINEAGE_CASES, ids=lambda a: " ".join(a)[:60])
def test_otel_lineage_bad_arguments(sqlite_env: Engine, args: list[str]) -> None:
    assert_one_line_error(runner.invoke(lineage_app, args))


def test_identify_refuses_a_huge_file(sqlite_env: Engine, tmp_path: Path) -> None:
    huge = tmp_path / "huge.pdf"
    with open(huge, "wb") as out:
        out.write(b"%PDF-1.7\n")
        out.truncate(600 << 20)  # sparse: no disk used
    line = assert_one_line_error(runner.invoke(lineage_app, ["identify", str(huge)]), 2)
    assert "larger than 512 MiB" in line


def test_output_files_need_force(sqlite_env: Engine, tmp_path: Path) -> None:
    out = tmp_path / "inputs.json"
    out.write_bytes(b"keep me")
    line = assert_one_line_error(runner.invoke(lineage_app, ["inputs", REPORT, "-o", str(out)]))
    assert "exists; use --force" in line and out.read_bytes() == b"keep me"
    forced = runner.invoke(lineage_app, ["inputs", REPORT, "-o", str(out), "--force"])
    assert forced.exit_code == 0, forced.output
    assert orjson.loads(out.read_bytes())["business"]["name"] == "Acme"


def test_markup_in_values_is_shown_verbatim(sqlite_env: Engine) -> None:
    report_id = "22222222-bbbb-4000-8000-000000000002"
    insert_lineage(
        sqlite_env,
        report_id,
        business_name=MARKUP,
        status="failed",
        error_type="InputsError",
        error_message=f"bad value {MARKUP}",
        service_name=MARKUP,
        template_name=MARKUP,
        incomplete_reasons=[MARKUP],
        complete=False,
    )
    for args in (["show", report_id], ["list"], ["stats"], ["audit"]):
        result = runner.invoke(lineage_app, args)
        assert "Traceback" not in result.output, args
        assert result.exception is None or isinstance(result.exception, SystemExit), args
        assert result.exit_code in (0, 1), (args, result.output)
    shown = runner.invoke(lineage_app, ["show", report_id]).stdout
    assert shown.count(MARKUP) >= 3  # error, template, service (and the business in inputs)


def test_id_prefix_unique_and_ambiguous(sqlite_env: Engine) -> None:
    insert_lineage(sqlite_env, "11111111-aaaa-4000-8000-000000000099")
    insert_lineage(sqlite_env, "33333333-cccc-4000-8000-000000000003")
    shown = orjson.loads(runner.invoke(lineage_app, ["show", "3333", "--json"]).stdout)
    assert shown["report_generation_id"] == "33333333-cccc-4000-8000-000000000003"
    line = assert_one_line_error(runner.invoke(lineage_app, ["show", "1111"]), 1)
    assert "matches 2 reports" in line
    assert runner.invoke(lineage_app, ["inputs", "3333"]).exit_code == 0
    # LIKE wildcards are literal characters in a prefix
    assert_one_line_error(runner.invoke(lineage_app, ["show", "%"]), 1)
    assert_one_line_error(runner.invoke(lineage_app, ["show", "_"]), 1)


def test_prune_asks_unless_yes(sqlite_env: Engine) -> None:
    refused = runner.invoke(lineage_app, ["prune", "--snapshots-older-than", "0"])
    assert "confirm with --yes" in assert_one_line_error(refused, 2)
    with sqlite_env.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM report_lineage WHERE span_tree IS NULL")) == 0
    done = runner.invoke(lineage_app, ["prune", "--snapshots-older-than", "0", "--yes"])
    assert done.exit_code == 0 and "1 rows" in done.output
    with sqlite_env.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM report_lineage WHERE span_tree IS NULL")) == 1


def test_bad_environment_value_is_one_line(
    sqlite_env: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_LINEAGE_BATCH_SIZE", "0")
    line = assert_one_line_error(runner.invoke(lineage_app, ["list"]), 2)
    assert "OTEL_LINEAGE_BATCH_SIZE" in line


def test_readers_never_create_a_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nothing" / "here.db"
    monkeypatch.setenv("D6_DATABASE_URL", f"sqlite:///{missing}")
    monkeypatch.delenv("OTEL_LINEAGE_DATABASE_URL", raising=False)
    for args in (
        ["audit"],
        ["list"],
        ["stats"],
        ["show", "--latest"],
        ["prune", "--snapshots-older-than", "1", "--yes"],
        ["outbox", "flush"],
        ["recover"],
    ):
        line = assert_one_line_error(runner.invoke(lineage_app, args), 2)
        assert f"no database at {missing}; run `d6-reports db upgrade`" in line, args
    assert not missing.parent.exists()


@pytest.mark.parametrize(
    "args",
    [
        ["audit"],
        ["list"],
        ["stats"],
        ["show", REPORT],
        ["show", "--latest"],
        ["verify", REPORT],
        ["inputs", REPORT],
        ["trace", REPORT],
        ["openlineage", "--since", "2000-01-01"],
        ["prune", "--snapshots-older-than", "1", "--yes"],
        ["identify", "PDF"],
    ],
    ids=lambda a: " ".join(a),
)
def test_every_command_against_an_unmigrated_database(
    empty_db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    if empty_db_url.startswith("sqlite"):
        create_engine(empty_db_url).connect().close()  # the file exists, the tables do not
    monkeypatch.setenv("D6_DATABASE_URL", empty_db_url)
    monkeypatch.delenv("OTEL_LINEAGE_DATABASE_URL", raising=False)
    pdf = tmp_path / "some.pdf"
    pdf.write_bytes(b"%PDF-1.7\n%%EOF\n")
    args = [str(pdf) if a == "PDF" else a for a in args]
    line = assert_one_line_error(runner.invoke(lineage_app, args), 2)
    assert "not migrated" in line and "run `d6-reports db upgrade`" in line


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A TCP server on 127.0.0.1 that accepts connections and never says a word."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


@pytest.mark.parametrize("args", [["list"], ["audit"], ["show", REPORT], ["outbox", "flush"]])
def test_a_database_that_never_answers(
    black_hole: int, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    url = f"postgresql+psycopg://nobody@127.0.0.1:{black_hole}/nothing"
    monkeypatch.setenv("D6_DATABASE_URL", url)
    monkeypatch.setenv("OTEL_LINEAGE_DATABASE_URL", url)
    result = runner.invoke(lineage_app, ["--db-timeout", "2", *args])
    line = assert_one_line_error(result, 2)
    assert "database did not answer within 2 s" in line


# -- d6-reports ----------------------------------------------------------------------------------


@pytest.fixture
def d6_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'd6.db'}"
    monkeypatch.setenv("D6_DATABASE_URL", url)
    monkeypatch.setenv("D6_REPORTS_DIR", str(tmp_path / "reports"))
    monkeypatch.delenv("OTEL_LINEAGE_DATABASE_URL", raising=False)
    return url


D6_CASES = [
    ["generate", "--business-id", "99999999999999999999"],
    ["generate", "--business-id", "-3"],
    ["generate", "--business-id", "1", "--template", "x" * 300],
    ["generate", "--business-id", "1", "--template", BAD_UTF8],
    ["generate", "--business-id", "1", "--version", "1\n0"],
    ["generate"],
    ["generate-all", "--workers", "0"],
    ["generate-all", "--workers", "100000"],
    ["seed-demo", "--count", "-1"],
    ["seed-demo"],  # unmigrated database
    ["db", "downgrade"],  # no revision
    ["db", "downgrade", "no-such-revision", "--yes"],
    ["no-such-command"],
]


@pytest.mark.parametrize("args", D6_CASES, ids=lambda a: " ".join(a)[:60])
def test_d6_reports_bad_arguments(d6_env: str, args: list[str]) -> None:
    if args == ["db", "downgrade", "no-such-revision", "--yes"]:
        assert runner.invoke(d6_app, ["db", "upgrade"]).exit_code == 0
    assert_one_line_error(runner.invoke(d6_app, args))


def test_unmigrated_report_database_says_upgrade(d6_env: str) -> None:
    line = assert_one_line_error(runner.invoke(d6_app, ["seed-demo"]), 2)
    assert "run `d6-reports db upgrade`" in line


def test_downgrade_needs_a_revision_and_yes_and_names_the_loss(d6_env: str) -> None:
    assert runner.invoke(d6_app, ["db", "upgrade"]).exit_code == 0
    refused = runner.invoke(d6_app, ["db", "downgrade", "0001_report_service"])
    line = assert_one_line_error(refused, 2)
    assert "0002_report_lineage" in line and "0003_lineage_pruned_at" in line
    assert "--yes" in line and "back up" in line
    engine = create_engine(d6_env)
    with engine.connect() as conn:  # nothing was dropped
        assert conn.scalar(text("SELECT count(*) FROM report_lineage")) == 0
    done = runner.invoke(d6_app, ["db", "downgrade", "0001_report_service", "--yes"])
    assert done.exit_code == 0, done.output
    with engine.connect() as conn:
        tables = {r[0] for r in conn.execute(text("SELECT name FROM sqlite_master"))}
    engine.dispose()
    assert "report_lineage" not in tables and "report_generation" in tables


def test_upgrade_migrates_a_separate_lineage_database(
    d6_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lineage_url = f"sqlite:///{tmp_path / 'lineage-only.db'}"
    monkeypatch.setenv("OTEL_LINEAGE_DATABASE_URL", lineage_url)
    result = runner.invoke(d6_app, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert "lineage-only.db" in result.output
    engine = create_engine(lineage_url)
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM report_lineage")) == 0
    engine.dispose()


def test_version_on_both_command_lines() -> None:
    for app, name in ((d6_app, "d6-reports"), (lineage_app, "otel-lineage")):
        result = runner.invoke(app, ["--version"])
        assert result.exit_code == 0 and result.stdout.startswith(f"{name} "), result.output


def test_identify_knows_a_report_generated_without_lineage(
    sqlite_env: Engine, tmp_path: Path
) -> None:
    pdf = tmp_path / "sent.pdf"
    pdf.write_bytes(b"%PDF-1.7\nmade while lineage was off\n")
    digest = hashlib.sha256(pdf.read_bytes()).hexdigest()
    unknown = runner.invoke(lineage_app, ["identify", str(pdf)])
    assert "unknown PDF" in assert_one_line_error(unknown, 1)
    report_id = str(uuid.uuid4())
    insert_generation(sqlite_env, report_id, pdf_sha256=digest)
    known = runner.invoke(lineage_app, ["identify", str(pdf)])
    assert known.exit_code == 1
    assert f"no lineage row, but report {report_id}" in known.stdout
    assert "generated without lineage" in known.stdout
    as_json = orjson.loads(runner.invoke(lineage_app, ["identify", str(pdf), "--json"]).stdout)
    assert [g["id"] for g in as_json["generations_without_lineage"]] == [report_id]


def test_unparsable_database_url_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("D6_DATABASE_URL", "not a url at all")
    monkeypatch.delenv("OTEL_LINEAGE_DATABASE_URL", raising=False)
    for app, args in ((lineage_app, ["list"]), (d6_app, ["seed-demo"])):
        assert "D6_DATABASE_URL" in assert_one_line_error(runner.invoke(app, args), 2)
