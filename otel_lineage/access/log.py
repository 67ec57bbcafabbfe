"""The access log: who read customers' data, changed keys or pruned, and what came of it.

``record_access`` takes the *connection* serving the read, not an engine: the row is written in
the same transaction, so a read that is served is always logged and a log row never claims a
read that rolled back. There is deliberately no function to update or delete a row.

Every text field is stored bounded and with non-printable characters (terminal escapes, RTL
overrides, newlines) escaped: ``client`` and ``user_agent`` come from the request, and the log
is read in terminals and pages by the people it is meant to protect.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, func, insert, select

from otel_lineage.delivery.schema import lineage_access_log

ACTIONS = frozenset(
    {
        "read_inputs",
        "download_pdf",
        "verify",
        "identify",
        "key_create",
        "key_revoke",
        "prune",
        "forget",
        "keys_rotate",
        "sign_in",
        "read_access_log",
    }
)
OUTCOMES = frozenset({"allowed", "denied", "not_found", "error"})
#: Longest value kept per field (longer ones are cut and end with an ellipsis).
LIMITS = {
    "user": 200,
    "role": 16,
    "client": 200,
    "user_agent": 500,
    "detail": 1000,
    "report_id": 36,
}
#: Most rows ``list_access`` returns in one page.
MAX_LIMIT = 10_000
COLUMNS = (
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
)


def record_access(
    conn: Connection,
    *,
    user: str,
    role: str | None,
    action: str,
    report_id: str | None,
    client: str | None,
    user_agent: str | None,
    outcome: str,
    detail: str | None = None,
) -> None:
    """Append one row, in the transaction of ``conn`` (the caller commits).

    Raises ``ValueError`` for an action or outcome outside ``ACTIONS``/``OUTCOMES``: a typo in
    a route must fail its test, not write rows no filter finds.
    """
    if action not in ACTIONS:
        raise ValueError(f"unknown access log action {action!r}")
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown access log outcome {outcome!r}")
    conn.execute(
        insert(lineage_access_log).values(
            at=datetime.now(UTC),
            user=_clean(user, "user") or "-",
            role=_clean(role, "role"),
            action=action,
            report_id=_clean(report_id, "report_id"),
            client=_clean(client, "client"),
            user_agent=_clean(user_agent, "user_agent"),
            outcome=outcome,
            detail=_clean(detail, "detail"),
        )
    )


def list_access(
    engine: Engine,
    *,
    report_id: str | None = None,
    user: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
    offset: int = 0,
) -> tuple[list[dict[str, Any]], int]:
    """One page of rows, newest first, and how many rows match in all.

    ``since`` is inclusive, ``until`` exclusive; naive times are taken as UTC. Raises
    ``ValueError`` for a ``limit`` outside 0..``MAX_LIMIT`` or a negative ``offset``.
    """
    if not 0 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be between 0 and {MAX_LIMIT}")
    if offset < 0:
        raise ValueError("offset must not be negative")
    table = lineage_access_log
    where = []
    if report_id is not None:
        where.append(table.c.report_id == report_id)
    if user is not None:
        where.append(table.c.user == user)
    if since is not None:
        where.append(table.c.at >= _utc(since))
    if until is not None:
        where.append(table.c.at < _utc(until))
    with engine.connect() as conn:
        total = conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()
        rows = conn.execute(
            select(*(table.c[name] for name in COLUMNS))
            .where(*where)
            .order_by(table.c.at.desc(), table.c.id.desc())
            .limit(limit)
            .offset(offset)
        )
        # Plain str keys: column names are ``quoted_name`` objects, which orjson refuses.
        items = [{**dict(zip(COLUMNS, row, strict=True)), "at": _utc(row.at)} for row in rows]
    return items, int(total)


def _clean(value: str | None, field: str) -> str | None:
    """``value`` bounded, with every non-printable character written as ``\\uXXXX``."""
    if value is None:
        return None
    limit = LIMITS[field]
    escaped = "".join(ch if ch.isprintable() else f"\\u{ord(ch):04x}" for ch in value[: limit * 2])
    return escaped if len(escaped) <= limit else escaped[: limit - 1] + "\u2026"


def _utc(value: datetime) -> datetime:
    """The same instant in UTC; SQLite gives back naive times, which were stored as UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
