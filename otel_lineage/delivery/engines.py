"""Engines for the lineage (and, from the CLI, the report) database, with deadlines.

Every engine hides bound parameters in its error strings: a failed statement would otherwise
print the values it carried (business names, snapshots), which are customer data. SQLite gets
WAL and a busy timeout (several writers share one file); PostgreSQL a connect timeout and,
when asked, a statement timeout, so a server that accepts connections and never answers makes
a call fail instead of hanging. ``read_only`` engines never create a missing SQLite file: a
reader that "finds" an empty database it just made would report nonsense.
"""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url

#: Busy timeout of SQLite writers when no statement timeout is given (as before this module).
SQLITE_BUSY_TIMEOUT_S = 30.0
UPGRADE_HINT = "run `d6-reports db upgrade`"


def json_text(value: Any) -> str:
    """A JSON column's value as text: orjson (the writer encodes a few per record, and the
    stdlib encoder cost more than the rest of a row's parameters), the stdlib for what orjson
    refuses (an integer beyond 64 bits, a key that is not a string)."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value)


class MissingDatabaseError(LookupError):
    """A read-only engine was asked for an SQLite file that does not exist."""


def create_lineage_engine(
    url: str,
    *,
    connect_timeout_s: float = 10,
    statement_timeout_s: float | None = None,
    read_only: bool = False,
) -> Engine:
    """An engine for ``url`` whose calls cannot hang: see the module docstring.

    Raises ``sqlalchemy.exc.ArgumentError`` for an unparsable URL and ``MissingDatabaseError``
    for a ``read_only`` SQLite URL naming a file that does not exist.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, statement_timeout_s, read_only)
    if parsed.get_backend_name() == "postgresql":
        return _postgresql_engine(parsed, connect_timeout_s, statement_timeout_s, read_only)
    return create_engine(
        parsed, pool_pre_ping=True, hide_parameters=True, json_serializer=json_text
    )


def sqlite_path(url: str | URL) -> Path | None:
    """The file an SQLite URL names (``None`` for other databases and in-memory ones)."""
    parsed = make_url(url) if isinstance(url, str) else url
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(database)


def _sqlite_engine(parsed: URL, statement_timeout_s: float | None, read_only: bool) -> Engine:
    busy = SQLITE_BUSY_TIMEOUT_S if statement_timeout_s is None else statement_timeout_s
    path = sqlite_path(parsed)
    options: dict[str, Any] = {"connect_args": {"timeout": busy}}
    if read_only and path is not None:
        if not path.is_file():
            raise MissingDatabaseError(f"no database at {path}; {UPGRADE_HINT}")
        uri = f"file:{quote(str(path.resolve()))}?mode=rw"  # mode=rw: never creates the file

        def _connect() -> sqlite3.Connection:
            return sqlite3.connect(uri, uri=True, timeout=busy, check_same_thread=False)

        options = {"creator": _connect}
    engine = create_engine(parsed, hide_parameters=True, json_serializer=json_text, **options)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: object) -> None:
        cursor = dbapi_connection.cursor()
        if read_only:
            cursor.execute("PRAGMA query_only=ON")
        else:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")  # WAL: safe against process crashes
        cursor.close()

    return engine


def _postgresql_engine(
    parsed: URL, connect_timeout_s: float, statement_timeout_s: float | None, read_only: bool
) -> Engine:
    # libpq (and psycopg) take whole seconds, and treat anything below 2 as 2.
    connect_args: dict[str, Any] = {"connect_timeout": max(1, math.ceil(connect_timeout_s))}
    settings = []
    if statement_timeout_s is not None:
        settings.append(f"-c statement_timeout={max(1, math.ceil(statement_timeout_s * 1000))}")
    if read_only:
        settings.append("-c default_transaction_read_only=on")
    if settings:
        # connect_args replace the URL's own ``options`` (e.g. a search_path): keep them.
        existing = parsed.query.get("options")
        given = [existing] if isinstance(existing, str) else list(existing or ())
        connect_args["options"] = " ".join([*given, *settings])
    return create_engine(
        parsed,
        pool_pre_ping=True,
        hide_parameters=True,
        json_serializer=json_text,
        connect_args=connect_args,
    )
