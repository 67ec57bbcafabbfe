"""Access control storage on SQLite and PostgreSQL: API keys (create, authenticate, expire,
revoke, unique names, only a hash stored), the append-only access log and its filters, and the
``keys`` / ``access-log`` commands, including their bad input."""

from __future__ import annotations

import ast
import inspect as pyinspect
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from sqlalchemy import Engine, MetaData, select, text, update
from typer.testing import CliRunner, Result

from otel_lineage.access import keys as keys_module
from otel_lineage.access import log as log_module
from otel_lineage.access.keys import (
    SECRET_LENGTH,
    KeyInputError,
    KeyNameTakenError,
    KeyNotFoundError,
    authenticate,
    create_key,
    get_key,
    hash_secret,
    list_keys,
    revoke_key,
)
from otel_lineage.access.log import list_access, record_access
from otel_lineage.access.roles import Permission, Role, allows, parse_role
from otel_lineage.cli import app
from otel_lineage.delivery.schema import lineage_api_keys

runner = CliRunner()


def _everything_stored(engine: Engine) -> str:
    """Every value of every table, as one string (to look for a secret in)."""
    metadata = MetaData()
    metadata.reflect(engine)
    parts: list[str] = []
    with engine.connect() as conn:
        for table in metadata.sorted_tables:
            for row in conn.execute(select(table)):
                parts.extend(v.decode("latin-1") if isinstance(v, bytes) else str(v) for v in row)
    return "\n".join(parts)


def _expire(engine: Engine, key_id: str, when: datetime) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(lineage_api_keys).where(lineage_api_keys.c.id == key_id).values(expires_at=when)
        )


# -- roles ---------------------------------------------------------------------------------------


def test_roles_hold_everything_below_them() -> None:
    support = {p for p in Permission if allows(Role.SUPPORT, p)}
    auditor = {p for p in Permission if allows(Role.AUDITOR, p)}
    assert support == {
        Permission.SEARCH,
        Permission.READ_REPORT,
        Permission.DOWNLOAD_PDF,
        Permission.IDENTIFY,
        Permission.READ_TRACE,
    }
    assert auditor == support | {
        Permission.READ_INPUTS,
        Permission.VERIFY,
        Permission.READ_ACCESS_LOG,
    }
    assert all(allows(Role.ADMIN, p) for p in Permission)
    assert parse_role(" Auditor ") is Role.AUDITOR
    with pytest.raises(ValueError, match="unknown role 'root' \\(one of: support, auditor"):
        parse_role("root")


# -- keys ----------------------------------------------------------------------------------------


def test_create_then_authenticate_and_only_the_hash_is_stored(engine: Engine, db_url: str) -> None:
    key, secret = create_key(engine, name="alice", role=Role.SUPPORT, created_by="ops")
    assert secret.startswith("d6l_") and len(secret) == SECRET_LENGTH == 47
    assert key.prefix == secret[:12] and key.active() and key.last_used_at is None
    found = authenticate(engine, secret)
    assert found is not None and found.id == key.id and found.role is Role.SUPPORT
    assert found.last_used_at is not None and found.last_used_at.tzinfo is not None
    assert get_key(engine, key.id) == found
    assert get_key(engine, "no-such-id") is None
    assert [k.name for k in list_keys(engine)] == ["alice"]
    stored = _everything_stored(engine)
    assert secret not in stored and secret[12:] not in stored
    assert hash_secret(secret) in stored
    if db_url.startswith("sqlite"):  # and not in the file's bytes either (WAL included)
        path = Path(db_url.removeprefix("sqlite:///"))
        for file in (path, path.with_name(path.name + "-wal")):
            if file.exists():
                assert secret.encode() not in file.read_bytes()


def test_unknown_malformed_and_hash_secrets_are_refused(engine: Engine) -> None:
    _key, secret = create_key(engine, name="bob", role=Role.AUDITOR, created_by="ops")
    other = "d6l_" + "A" * 43
    for attempt in (other, secret[:-1], secret + "x", "x" + secret[1:], secret[:-1] + "*", ""):
        assert authenticate(engine, attempt) is None, attempt
    assert authenticate(engine, hash_secret(secret)) is None


def test_last_used_is_written_at_most_once_a_minute(engine: Engine) -> None:
    key, secret = create_key(engine, name="carol", role=Role.SUPPORT, created_by="ops")
    first = authenticate(engine, secret)
    assert first is not None and first.last_used_at is not None
    again = authenticate(engine, secret)
    assert again is not None
    assert get_key(engine, key.id).last_used_at == first.last_used_at  # type: ignore[union-attr]
    earlier = first.last_used_at - timedelta(minutes=2)
    with engine.begin() as conn:
        conn.execute(
            update(lineage_api_keys)
            .where(lineage_api_keys.c.id == key.id)
            .values(last_used_at=earlier)
        )
    later = authenticate(engine, secret)
    assert later is not None and later.last_used_at is not None
    assert later.last_used_at > first.last_used_at
    assert get_key(engine, key.id).last_used_at == later.last_used_at  # type: ignore[union-attr]


def test_expired_keys_are_refused(engine: Engine) -> None:
    soon = datetime.now(UTC) + timedelta(days=1)
    key, secret = create_key(
        engine, name="dave", role=Role.ADMIN, created_by="ops", expires_at=soon
    )
    assert key.expires_at == soon and authenticate(engine, secret) is not None
    _expire(engine, key.id, datetime.now(UTC) - timedelta(seconds=1))
    assert authenticate(engine, secret) is None
    assert get_key(engine, key.id).state() == "expired"  # type: ignore[union-attr]
    with pytest.raises(KeyInputError, match="not in the future"):
        create_key(
            engine,
            name="erin",
            role=Role.SUPPORT,
            created_by="ops",
            expires_at=datetime.now(UTC) - timedelta(days=1),
        )
    revoked = revoke_key(engine, "dave")  # an expired key can still be revoked
    assert revoked.state() == "revoked"


def test_revoked_keys_are_refused_and_their_names_free(engine: Engine) -> None:
    key, secret = create_key(engine, name="frank", role=Role.SUPPORT, created_by="ops")
    with pytest.raises(KeyNameTakenError, match="already named 'frank'"):
        create_key(engine, name="frank", role=Role.ADMIN, created_by="ops")
    revoked = revoke_key(engine, key.id)
    assert revoked.revoked_at is not None and not revoked.active()
    assert authenticate(engine, secret) is None
    with pytest.raises(KeyNotFoundError, match="no unrevoked key"):
        revoke_key(engine, key.id)
    with pytest.raises(KeyNotFoundError):
        revoke_key(engine, "frank")
    new, new_secret = create_key(engine, name="frank", role=Role.AUDITOR, created_by="ops")
    assert authenticate(engine, new_secret) == get_key(engine, new.id)
    assert [(k.name, k.state()) for k in list_keys(engine)] == [
        ("frank", "revoked"),
        ("frank", "active"),
    ]
    assert revoke_key(engine, "frank").id == new.id


def test_the_database_keeps_active_names_unique(engine: Engine) -> None:
    """The partial unique index refuses a second active name even past the module's check."""
    create_key(engine, name="grace", role=Role.SUPPORT, created_by="ops")
    now = datetime.now(UTC)
    with pytest.raises(Exception, match=r"(?i)unique"), engine.begin() as conn:
        conn.execute(
            lineage_api_keys.insert().values(
                id="x",
                name="grace",
                role="support",
                prefix="d6l_x",
                key_hash="0" * 64,
                created_by="ops",
                created_at=now,
            )
        )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"name": ""}, "bad key name"),
        ({"name": "<script>"}, "bad key name"),
        ({"name": "a" * 101}, "bad key name"),
        ({"name": "al\u202eice"}, "bad key name"),
        ({"created_by": ""}, "bad creator"),
        ({"created_by": "ops\n"}, "bad creator"),
        ({"role": "root"}, "unknown role"),
    ],
)
def test_bad_key_input_is_refused(engine: Engine, values: dict[str, str], message: str) -> None:
    arguments: dict[str, object] = {"name": "ok", "role": Role.SUPPORT, "created_by": "ops"}
    arguments.update(values)
    with pytest.raises(KeyInputError, match=message):
        create_key(engine, **arguments)  # type: ignore[arg-type]
    assert list_keys(engine) == []


# -- access log ----------------------------------------------------------------------------------


def _record(engine: Engine, **values: object) -> None:
    row: dict[str, object] = {
        "user": "alice",
        "role": "support",
        "action": "download_pdf",
        "report_id": "r1",
        "client": "10.0.0.1",
        "user_agent": "test",
        "outcome": "allowed",
    }
    row.update(values)
    with engine.begin() as conn:
        record_access(conn, **row)  # type: ignore[arg-type]


def test_access_log_filters_newest_first(engine: Engine) -> None:
    before = datetime.now(UTC)
    _record(engine)
    _record(engine, user="bob", role="auditor", action="read_inputs")
    middle = datetime.now(UTC)
    _record(engine, user="bob", role="auditor", action="verify", report_id="r2")
    _record(engine, user="carol", action="read_inputs", outcome="denied", report_id="r2")
    items, total = list_access(engine)
    assert total == 4
    assert [i["action"] for i in items] == ["read_inputs", "verify", "read_inputs", "download_pdf"]
    assert all(i["at"].tzinfo is not None and i["at"] >= before for i in items)
    assert set(items[0]) == {
        "id",
        "at",
        "user",
        "role",
        "action",
        "report_id",
        "client",
        "user_agent",
        "outcome",
        "detail",
    }
    assert list_access(engine, report_id="r2")[1] == 2
    assert [i["outcome"] for i in list_access(engine, report_id="r2")[0]] == ["denied", "allowed"]
    assert [i["action"] for i in list_access(engine, user="bob")[0]] == ["verify", "read_inputs"]
    assert list_access(engine, since=middle)[1] == 2
    assert list_access(engine, until=middle)[1] == 2
    assert list_access(engine, since=middle, user="carol")[1] == 1
    naive_middle = middle.replace(tzinfo=None)  # naive bounds are UTC
    assert list_access(engine, since=naive_middle)[1] == 2
    page, total = list_access(engine, limit=1, offset=1)
    assert total == 4 and [i["action"] for i in page] == ["verify"]
    assert list_access(engine, report_id="nothing") == ([], 0)
    for bad in ({"limit": -1}, {"limit": 10_001}, {"offset": -1}):
        with pytest.raises(ValueError):
            list_access(engine, **bad)  # type: ignore[arg-type]


def test_access_rows_share_the_transaction_of_the_read(engine: Engine) -> None:
    with pytest.raises(RuntimeError), engine.begin() as conn:
        record_access(
            conn,
            user="alice",
            role="auditor",
            action="read_inputs",
            report_id="r1",
            client=None,
            user_agent=None,
            outcome="allowed",
        )
        raise RuntimeError("the read failed")  # rolled back: no claim of a read that failed
    assert list_access(engine) == ([], 0)


def test_access_log_values_are_bounded_and_escaped(engine: Engine) -> None:
    _record(
        engine,
        user="eve\x1b]0;owned\x07",
        client="\u202e1.0.0.127",
        user_agent="x" * 5000,
        detail="line\nbreak",
    )
    (item,), _ = list_access(engine)
    assert item["user"] == "eve\\u001b]0;owned\\u0007"
    assert item["client"] == "\\u202e1.0.0.127"
    assert len(item["user_agent"]) == 500 and item["user_agent"].endswith("\u2026")
    assert item["detail"] == "line\\u000abreak"


def test_access_log_refuses_unknown_actions_and_outcomes(engine: Engine) -> None:
    with pytest.raises(ValueError, match="action"):
        _record(engine, action="read_everything")
    with pytest.raises(ValueError, match="outcome"):
        _record(engine, outcome="maybe")
    assert list_access(engine)[1] == 0


def test_the_access_log_module_cannot_change_rows() -> None:
    """Append-only by construction: no function of the module updates or deletes."""
    tree = ast.parse(pyinspect.getsource(log_module))
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert not imported & {"update", "delete", "text"}, imported  # no UPDATE/DELETE, no raw SQL
    public = [n for n in dir(log_module) if callable(getattr(log_module, n))]
    assert not [n for n in public if n.startswith(("update", "delete", "remove", "clear"))]
    assert "lineage_access_log" not in pyinspect.getsource(keys_module)


# -- the command line ----------------------------------------------------------------------------


@pytest.fixture
def cli_env(db_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("D6_DATABASE_URL", db_url)
    monkeypatch.delenv("OTEL_LINEAGE_DATABASE_URL", raising=False)
    return db_url


def _one_error(result: Result, code: int, fragment: str) -> None:
    lines = result.stderr.splitlines()
    assert result.exit_code == code, (result.exit_code, result.stderr, result.stdout)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_keys_commands_and_their_access_log(cli_env: str, engine: Engine) -> None:
    created = runner.invoke(
        app, ["keys", "create", "--name", "alice", "--role", "Support", "--expires", "90d"]
    )
    assert created.exit_code == 0, created.stderr
    secret = created.stdout.strip()
    assert len(created.stdout.splitlines()) == 1 and len(secret) == SECRET_LENGTH
    assert "not shown again" in created.stderr and secret not in created.stderr
    key = authenticate(engine, secret)
    assert key is not None and key.role is Role.SUPPORT and key.created_by
    assert key.expires_at is not None
    assert timedelta(days=89) < key.expires_at - datetime.now(UTC) <= timedelta(days=90)

    by = runner.invoke(
        app,
        ["keys", "create", "--name", "bob", "--role", "auditor", "--created-by", "lead",
         "--expires", "2999-01-31"],
    )  # fmt: skip
    assert by.exit_code == 0, by.stderr
    listed = runner.invoke(app, ["keys", "list", "--json"])
    assert listed.exit_code == 0, listed.stderr
    rows = orjson.loads(listed.stdout)
    assert [(r["name"], r["role"], r["state"], r["created_by"]) for r in rows] == [
        ("alice", "support", "active", key.created_by),
        ("bob", "auditor", "active", "lead"),
    ]
    assert rows[1]["expires_at"] == "2999-01-31T00:00:00+00:00"
    assert not any("hash" in field for field in rows[0])
    assert secret not in listed.stdout
    table = runner.invoke(app, ["keys", "list"])
    assert table.exit_code == 0 and "alice" in table.stdout and secret not in table.stdout

    revoked = runner.invoke(app, ["keys", "revoke", "bob", "--created-by", "lead"])
    assert revoked.exit_code == 0, revoked.stderr
    assert "revoked key bob" in revoked.stdout
    assert get_key(engine, rows[1]["id"]).state() == "revoked"  # type: ignore[union-attr]

    log = runner.invoke(app, ["access-log", "--json"])
    assert log.exit_code == 0, log.stderr
    entries = orjson.loads(log.stdout)
    assert entries["total"] == 3
    assert [(e["action"], e["user"], e["outcome"], e["client"]) for e in entries["items"]] == [
        ("key_revoke", "lead", "allowed", "cli"),
        ("key_create", "lead", "allowed", "cli"),
        ("key_create", key.created_by, "allowed", "cli"),
    ]
    assert "bob" in entries["items"][0]["detail"] and secret not in log.stdout
    only_lead = orjson.loads(runner.invoke(app, ["access-log", "--user", "lead", "--json"]).stdout)
    assert only_lead["total"] == 2
    limited = orjson.loads(runner.invoke(app, ["access-log", "--limit", "1", "--json"]).stdout)
    assert limited["total"] == 3 and len(limited["items"]) == 1
    future = orjson.loads(
        runner.invoke(app, ["access-log", "--since", "2999-01-01", "--json"]).stdout
    )
    assert future == {"total": 0, "items": []}
    shown = runner.invoke(app, ["access-log"])
    assert shown.exit_code == 0 and "key_revoke" in shown.stdout
    assert secret not in _everything_stored(engine)


def test_access_log_by_report(cli_env: str, engine: Engine) -> None:
    _record(engine, report_id="r1", user="[/]<b>")  # markup and HTML shown as text
    _record(engine, report_id="r2")
    result = runner.invoke(app, ["access-log", "--report", "r1"])
    assert result.exit_code == 0, result.stderr
    assert "[/]<b>" in result.stdout and "r2" not in result.stdout
    assert "1 of 1 entries" in result.stdout


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["keys", "create", "--name", "x", "--role", "root"], 2, "--role: unknown role 'root'"),
        (["keys", "create", "--name", "x", "--role", "support", "--expires", "90x"], 2,
         "--expires: not a duration"),
        (["keys", "create", "--name", "x", "--role", "support", "--expires", "0d"], 2,
         "between 1d and 3650d"),
        (["keys", "create", "--name", "x", "--role", "support", "--expires", "99999d"], 2,
         "between 1d and 3650d"),
        (["keys", "create", "--name", "x", "--role", "support", "--expires", "2000-01-01"], 2,
         "is not in the future"),
        (["keys", "create", "--name", "<b>", "--role", "support"], 2, "bad key name"),
        (["keys", "create", "--name", "x", "--role", "support", "--created-by", "a\tb"], 2,
         "--created-by contains control characters"),
        (["keys", "create", "--role", "support"], 2, "--name"),
        (["keys", "revoke", "nobody"], 1, "no unrevoked key has the name or id 'nobody'"),
        (["access-log", "--since", "yesterday"], 2, "--since: not an ISO 8601 time"),
        (["access-log", "--limit", "0"], 2, "--limit"),
        (["access-log", "--report", "r" * 37], 2, "--report is longer than 36"),
    ],
)  # fmt: skip
def test_bad_input_is_one_error_line(
    cli_env: str, engine: Engine, args: list[str], code: int, fragment: str
) -> None:
    _one_error(runner.invoke(app, args), code, fragment)
    assert list_keys(engine) == []


def test_failed_key_changes_are_logged(cli_env: str, engine: Engine) -> None:
    assert runner.invoke(app, ["keys", "create", "--name", "a", "--role", "admin"]).exit_code == 0
    taken = runner.invoke(app, ["keys", "create", "--name", "a", "--role", "support"])
    _one_error(taken, 2, "an unrevoked key is already named 'a'")
    _one_error(runner.invoke(app, ["keys", "revoke", "zed"]), 1, "no unrevoked key")
    items, _ = list_access(engine)
    assert [(i["action"], i["outcome"]) for i in items] == [
        ("key_revoke", "not_found"),
        ("key_create", "error"),
        ("key_create", "allowed"),
    ]


def test_commands_on_an_unmigrated_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    from sqlalchemy import create_engine

    bare = create_engine(url)
    with bare.connect() as conn:
        conn.execute(text("SELECT 1"))
    bare.dispose()
    monkeypatch.setenv("D6_DATABASE_URL", url)
    monkeypatch.delenv("OTEL_LINEAGE_DATABASE_URL", raising=False)
    for args in (["keys", "list"], ["access-log"], ["keys", "create", "--name", "a", "--role",
                                                     "admin"]):  # fmt: skip
        _one_error(runner.invoke(app, args), 2, "not migrated")
    missing = f"sqlite:///{tmp_path / 'nothing.db'}"
    monkeypatch.setenv("D6_DATABASE_URL", missing)
    _one_error(
        runner.invoke(app, ["keys", "create", "--name", "a", "--role", "admin"]), 2, "no database"
    )
    assert not (tmp_path / "nothing.db").exists()
