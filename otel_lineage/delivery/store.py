"""Writing lineage rows: idempotent batch upserts into ``report_lineage``.

A record is keyed by its trace id (one report = one trace), so writing the same record twice,
or replaying a batch after a crash, leaves one row. All of the store's SQL runs with
OpenTelemetry instrumentation suppressed: the SQLAlchemy instrumentation may wrap every engine
(zero-code mode wraps ``create_engine`` globally), and lineage must never trace itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from opentelemetry import context as otel_context
from opentelemetry.instrumentation.utils import suppress_instrumentation
from sqlalchemy import (
    JSON,
    Connection,
    Dialect,
    Engine,
    Float,
    LargeBinary,
    Table,
    TextClause,
    bindparam,
    event,
    inspect,
    text,
)

from otel_lineage import semconv
from otel_lineage.delivery.schema import lineage_counters, report_lineage
from otel_lineage.delivery.stats import COUNTER_NAMES, Counts
from otel_lineage.protection.keys import keyring_from_env
from otel_lineage.protection.snapshots import SHARED_COLUMN, SnapshotStore
from otel_lineage.record import (
    LineageRecord,
    clean_json,
    clean_text,
    may_need_cleaning,
    needs_cleaning,
)

_log = logging.getLogger(__name__)

#: The lineage columns a record writes (every field of ``LineageRecord``).
RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(LineageRecord))
_TEXT_FIELDS = tuple(
    f.name for f in dataclasses.fields(LineageRecord) if str(f.type) in ("str", "str | None")
)
_JSON_FIELDS = ("steps", "input_tables", "incomplete_reasons")
_CHECKED_FIELDS = (*_TEXT_FIELDS, *_JSON_FIELDS)


#: A report whose connection was lost at its final commit cannot know whether it completed; its
#: ``report_generation`` row does, once the database is back, which is when the writer gets to
#: write. The generation row names the trace of the attempt that holds it, so a completed row
#: naming this trace means this attempt's commit went through: its lineage row says completed
#: (the span tree keeps what the process saw). Any other failure keeps its own status.
_SETTLE = text(
    "UPDATE report_lineage SET status = 'completed', error_type = NULL, error_message = NULL "
    "WHERE trace_id = :trace_id AND status = 'failed' "
    f"AND error_type = '{semconv.ERROR_DATABASE_UNAVAILABLE}' AND EXISTS ("
    "SELECT 1 FROM report_generation g WHERE g.id = report_lineage.report_generation_id "
    "AND g.trace_id = report_lineage.trace_id AND g.status = 'completed')"
)


def _outcome_unknown(record: LineageRecord) -> bool:
    return record.status == "failed" and record.error_type == semconv.ERROR_DATABASE_UNAVAILABLE


def clean_record(record: LineageRecord) -> LineageRecord:
    """``record`` with text no database or encoder accepts (NUL, lone surrogates) cleaned.

    Such text comes from the environment (``os.environ`` turns invalid bytes into lone
    surrogates), the resource or exception messages. A record that needed cleaning is marked
    incomplete and names each cleaned field, so nothing is changed silently; the record itself
    is never refused for it.
    """
    if not may_need_cleaning([getattr(record, name) for name in _CHECKED_FIELDS]):
        return record
    cleaned: dict[str, Any] = {}
    for name in _TEXT_FIELDS:
        value = getattr(record, name)
        if isinstance(value, str) and needs_cleaning(value):
            cleaned[name] = clean_text(value)
    for name in _JSON_FIELDS:
        value = getattr(record, name)
        fixed = clean_json(value)
        if fixed != value:
            cleaned[name] = fixed
    if not cleaned:
        return record
    reasons = list(cleaned.get("incomplete_reasons", record.incomplete_reasons))
    reasons += [f"invalid_text:{name}" for name in cleaned]
    cleaned["incomplete_reasons"] = reasons
    return dataclasses.replace(record, **cleaned, complete=False)


@contextlib.contextmanager
def untraced() -> Iterator[None]:
    """Run a block with no current span and instrumentation suppressed.

    Detaching from the current span matters too: a store call made on a thread that is inside
    a report span must not parent anything to it.
    """
    token = otel_context.attach(otel_context.Context())
    try:
        with suppress_instrumentation():
            yield
    finally:
        otel_context.detach(token)


def _conflict_update(key: str, columns: Sequence[str], clear_on_update: Sequence[str]) -> str:
    updates = [f"{n} = excluded.{n}" for n in columns if n != key]
    updates += [f"{n} = NULL" for n in clear_on_update]
    return f"ON CONFLICT ({key}) DO UPDATE SET {', '.join(updates)}"


def upsert_statement(
    table: Table, key: str, columns: Sequence[str], *, clear_on_update: Sequence[str] = ()
) -> TextClause:
    """``INSERT ... ON CONFLICT (key) DO UPDATE`` of ``columns``, as one cacheable statement.

    SQLite (>= 3.24) and PostgreSQL accept the same syntax. It is written as ``text()`` with
    typed bind parameters because the dialect ``insert().on_conflict_do_update()`` constructs
    opt out of SQLAlchemy's statement cache (``inherit_cache = False`` in 2.0): compiled anew
    on every execution, they cost about 0.5 ms of CPU per single-row batch here, ten times the
    insert itself. ``clear_on_update`` columns are reset to NULL when a row is rewritten.
    """
    sql = (
        f"INSERT INTO {table.name} ({', '.join(columns)}) "
        f"VALUES ({', '.join(':' + n for n in columns)}) "
        f"{_conflict_update(key, columns, clear_on_update)}"
    )
    return text(sql).bindparams(*(bindparam(n, type_=table.c[n].type) for n in columns))


def batch_upsert_statement(
    table: Table, key: str, columns: Sequence[str], *, clear_on_update: Sequence[str] = ()
) -> TextClause:
    """PostgreSQL: the upsert of a whole batch as one statement with one parameter, the batch
    as a JSON array of rows (``BatchEncoder``), unpacked by ``json_populate_recordset``.

    One statement per batch is planned and executed once, not once per row; one parameter
    keeps it under every bind limit and within psycopg's query cache (a multi-row ``VALUES``
    list has one parameter per value, which psycopg parses anew at every execution), and the
    encoding is one orjson call instead of a driver conversion per value. The record type's
    own columns convert the values, so an oversized id is refused as by a one-row insert.
    A JSON column whose value is None gets JSON ``null``, as the typed one-row statement
    stores it (``json_populate_recordset`` would give SQL NULL).
    """
    selected = [f"coalesce({n}, 'null')" if _is_json(table, n) else n for n in columns]
    return text(
        f"INSERT INTO {table.name} ({', '.join(columns)}) SELECT {', '.join(selected)} "
        f"FROM json_populate_recordset(NULL::{table.name}, CAST(:rows AS JSON)) "
        f"{_conflict_update(key, columns, clear_on_update)}"
    )


def _is_json(table: Table, column: str) -> bool:
    return isinstance(table.c[column].type, JSON)


def _bytea_text(value: Any) -> Any:
    """A blob as PostgreSQL's bytea text (hex), which JSON can carry."""
    return value if value is None else "\\x" + bytes(value).hex()


def _float_text(value: Any) -> Any:
    """NaN and infinities as the text PostgreSQL reads (orjson would write them as null)."""
    return value if value is None or math.isfinite(value) else str(value)


class BatchEncoder:
    """Rows of ``table`` as the JSON parameter of a ``batch_upsert_statement``."""

    def __init__(self, table: Table) -> None:
        self._converters: list[tuple[str, Callable[[Any], Any]]] = []
        for column in table.columns:
            if isinstance(column.type, LargeBinary):
                self._converters.append((column.name, _bytea_text))
            elif isinstance(column.type, Float):
                self._converters.append((column.name, _float_text))

    def encode(self, rows: Sequence[dict[str, Any]]) -> str:
        """Raises ``TypeError`` for what orjson refuses (an integer over 64 bits, say)."""
        converted = [
            {
                **row,
                **{name: convert(row[name]) for name, convert in self._converters if name in row},
            }
            for row in rows
        ]
        return orjson.dumps(converted, option=orjson.OPT_NON_STR_KEYS).decode()


class BindProcessors:
    """Rows of ``table`` converted for the driver as SQLAlchemy's typed statement would convert
    them (each column type's own bind processor for ``dialect``), without the statement's
    per-execution work: building and processing a parameter dict per row cost the SQLite
    writer more CPU than the driver's insert of it."""

    def __init__(self, table: Table, columns: Sequence[str], dialect: Dialect) -> None:
        self._processors = [
            (name, table.c[name].type.dialect_impl(dialect).bind_processor(dialect))
            for name in columns
        ]

    def convert(self, row: dict[str, Any]) -> dict[str, Any]:
        return {
            name: row[name] if process is None else process(row[name])
            for name, process in self._processors
        }


class LineageStore:
    """The lineage database, as the writer sees it."""

    def __init__(
        self,
        engine: Engine,
        *,
        service_name: str | None = None,
        snapshots: SnapshotStore | None = None,
    ) -> None:
        """``snapshots``: how input snapshots are stored; by default as the environment says
        (encrypted when ``OTEL_LINEAGE_SNAPSHOT_KEY_FILE`` is set), so no store, not even
        ``outbox flush``'s, writes a snapshot in clear where encryption is configured."""
        self.engine = engine
        self.snapshots = snapshots or SnapshotStore(keyring_from_env())
        columns = (*RECORD_FIELDS, SHARED_COLUMN)
        self._lineage_upsert = upsert_statement(
            report_lineage, "trace_id", columns, clear_on_update=("pruned_at",)
        )
        self._batch_upsert = None
        if engine.dialect.name == "postgresql":
            self._batch_upsert = batch_upsert_statement(
                report_lineage, "trace_id", columns, clear_on_update=("pruned_at",)
            )
        self._batch_encoder = BatchEncoder(report_lineage)
        self._sqlite_rows: BindProcessors | None = None
        if engine.dialect.name == "sqlite":  # the driver takes ``:name`` parameters as they are
            self._sqlite_rows = BindProcessors(report_lineage, columns, engine.dialect)
        self._rows_sql = str(self._lineage_upsert)
        self._counters_upsert = upsert_statement(
            lineage_counters, "instance_id", [c.name for c in lineage_counters.columns]
        )
        self._generations_seen = False
        self.instance_id = str(uuid.uuid4())
        self._service_name = clean_text(service_name) if service_name else service_name
        self._started_at = datetime.now(UTC)
        # The pool's open DBAPI connections, by id: held from "connect" to "close" (an
        # sqlite3 connection cannot be weakly referenced, so a WeakSet would miss it).
        self._connections: dict[int, Any] = {}
        self._connections_lock = threading.Lock()
        event.listen(engine, "connect", self._remember_connection)
        event.listen(engine, "close", self._forget_connection)
        event.listen(engine, "close_detached", self._forget_connection)

    def upsert(self, records: Sequence[LineageRecord]) -> None:
        """Insert or update ``records`` in one transaction (text cleaned: ``clean_record``).

        Snapshots go to ``lineage_snapshots`` in the same transaction (deduplicated, maybe
        encrypted: ``SnapshotStore``), so a row never names a snapshot that is not stored.
        A trace id twice in ``records`` (a replayed record) is written once, in its last
        version: PostgreSQL refuses a statement that would update one row twice.
        """
        latest = list({r.trace_id: r for r in records}.values())
        if not latest:
            return
        rows = [{**clean_record(r).as_row(), SHARED_COLUMN: None} for r in latest]
        with untraced(), self.engine.begin() as conn:
            self.snapshots.prepare(conn, rows)
            self._write_rows(conn, rows)
            unsettled = [{"trace_id": r.trace_id} for r in latest if _outcome_unknown(r)]
            if unsettled and self._has_generations(conn):
                conn.execute(_SETTLE, unsettled)

    def _write_rows(self, conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
        """SQLite (in process, where a statement per row costs no round trip): the one-row
        statement, executed by the driver for every row with the values converted by the
        columns' own types (``BindProcessors``). PostgreSQL: one statement for the batch, and
        for values orjson refuses the typed one-row statement per row."""
        if self._sqlite_rows is not None:
            converted = [self._sqlite_rows.convert(row) for row in rows]
            conn.exec_driver_sql(self._rows_sql, converted)
        elif self._batch_upsert is None:
            conn.execute(self._lineage_upsert, rows)
        else:
            try:
                batch = self._batch_encoder.encode(rows)
            except TypeError:
                conn.execute(self._lineage_upsert, rows)
            else:
                conn.execute(self._batch_upsert, {"rows": batch})

    def _has_generations(self, conn: Connection) -> bool:
        """Whether the report service's ``report_generation`` table is in this database."""
        if not self._generations_seen:
            self._generations_seen = inspect(conn).has_table("report_generation")
        return self._generations_seen

    def save_counters(self, counts: Counts, pending: int) -> None:
        row = {name: getattr(counts, name) for name in COUNTER_NAMES}
        row.update(
            instance_id=self.instance_id,
            service_name=self._service_name,
            host=clean_text(socket.gethostname()),
            pid=os.getpid(),
            started_at=self._started_at,
            updated_at=datetime.now(UTC),
            pending=pending,
        )
        with untraced(), self.engine.begin() as conn:
            conn.execute(self._counters_upsert, [row])

    def interrupt(self) -> None:
        """Break off whatever database call this store has in progress, from another thread.

        A server that accepts a connection and then never answers (a network black hole)
        leaves a client blocked in ``recv`` for ever: server-side statement timeouts never
        arrive and TCP keepalives see a healthy peer. The writer's watchdog calls this at its
        deadline: a PostgreSQL connection's socket is shut down (the driver raises a
        disconnect, the pool discards the connection), a SQLite connection is interrupted.
        Either way the call fails like an outage and its batch is retried.
        """
        with self._connections_lock:
            connections = list(self._connections.values())
        for dbapi_connection in connections:
            with contextlib.suppress(Exception):  # already closed, or never connected
                pgconn = getattr(dbapi_connection, "pgconn", None)
                if pgconn is not None:
                    fd = os.dup(pgconn.socket)
                    with socket.socket(fileno=fd) as sock:
                        sock.shutdown(socket.SHUT_RDWR)
                elif hasattr(dbapi_connection, "interrupt"):
                    dbapi_connection.interrupt()
        _log.warning("lineage database call interrupted at its deadline")

    def _remember_connection(self, dbapi_connection: Any, _record: object) -> None:
        with self._connections_lock:
            self._connections[id(dbapi_connection)] = dbapi_connection

    def _forget_connection(self, dbapi_connection: Any, *_record: object) -> None:
        with self._connections_lock:
            self._connections.pop(id(dbapi_connection), None)

    def reset_after_fork(self) -> None:
        """A forked child gets its own identity and never reuses the parent's connections."""
        self.engine.dispose(close=False)
        self._connections_lock = threading.Lock()
        self._connections = {}  # the parent's: never to be shut down from here
        self.instance_id = str(uuid.uuid4())
        self._started_at = datetime.now(UTC)
