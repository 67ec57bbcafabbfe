"""``otel-lineage keys ...`` and ``otel-lineage access-log``: who may use the service, who did.

``keys create`` prints the secret alone on stdout (so ``KEY=$(otel-lineage keys create ...)``
works) and everything else, with the warning that it is never shown again, on stderr. Every
key change, and every attempt that reached the database and failed, is appended to the access
log in the transaction of the change (user: ``--created-by``, else the OS user; client
``cli``). Reading the log from the command line is not itself logged: whoever runs it already
holds the database credentials, which the log cannot constrain.
"""

from __future__ import annotations

import getpass
import os
import re
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from sqlalchemy import Connection, Engine

from otel_lineage.access.keys import (
    ApiKey,
    AuditHook,
    KeyInputError,
    KeyNameTakenError,
    KeyNotFoundError,
    create_key,
    list_keys,
    revoke_key,
)
from otel_lineage.access.log import MAX_LIMIT, list_access, record_access
from otel_lineage.access.roles import parse_role
from otel_lineage.cli.support import MAX_ID, CliError, check_text, cli_engine, parse_time, text
from otel_lineage.settings import LineageSettings

keys_app = typer.Typer(help="API keys of the lineage service.", no_args_is_help=True)
console = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, soft_wrap=True, highlight=False)
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
#: Longest ``--expires`` in days (ten years).
MAX_EXPIRY_DAYS = 3650
_DAYS = re.compile(r"(\d{1,5})d")
#: The ``client`` the access log records for command-line changes.
CLI_CLIENT = "cli"


# -- engine and parsing --------------------------------------------------------------------------


def _engine(ctx: typer.Context, *, write: bool) -> Engine:
    """The lineage database with the deadline of ``--db-timeout``; never creates a file."""
    try:
        url = LineageSettings.from_env().database_url
    except ValueError as exc:  # LineageConfigError: one line naming the variable
        raise CliError(str(exc)) from exc
    timeout = float(ctx.find_root().params.get("db_timeout") or 30.0)
    return cli_engine(url, "lineage", write=write, timeout_s=timeout)


def parse_expiry(value: str | None, now: datetime) -> datetime | None:
    """``--expires``: ``<n>d`` from now, an ISO date (00:00 UTC that day) or an ISO time."""
    if value is None:
        return None
    check_text(value, "--expires", 64)
    days = _DAYS.fullmatch(value.strip())
    if days:
        count = int(days.group(1))
        if not 1 <= count <= MAX_EXPIRY_DAYS:
            raise CliError(f"--expires: between 1d and {MAX_EXPIRY_DAYS}d, not {value!r}")
        return now + timedelta(days=count)
    try:
        if len(value) == 10:
            when = datetime.combine(date.fromisoformat(value), time(), UTC)
        else:
            when = datetime.fromisoformat(value)
    except ValueError:
        raise CliError(
            f"--expires: not a duration (90d) or an ISO date or time: {value!r}"
        ) from None
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    if when <= now:
        raise CliError(f"--expires: {when.isoformat()} is not in the future")
    return when


def os_user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (some containers)
        return f"uid {os.getuid()}"


def _audit(user: str, action: str) -> AuditHook:
    """An ``audit`` hook that logs ``action`` by ``user`` for the changed key."""

    def hook(conn: Connection, key: ApiKey) -> None:
        record_access(
            conn,
            user=user,
            role=None,
            action=action,
            report_id=None,
            client=CLI_CLIENT,
            user_agent=None,
            outcome="allowed",
            detail=f"key {key.name} ({key.id}, role {key.role.value})",
        )

    return hook


def _log_failure(engine: Engine, user: str, action: str, outcome: str, detail: str) -> None:
    """Log an attempted key change that failed (its own transaction: the change rolled back)."""
    with engine.begin() as conn:
        record_access(
            conn,
            user=user,
            role=None,
            action=action,
            report_id=None,
            client=CLI_CLIENT,
            user_agent=None,
            outcome=outcome,
            detail=detail,
        )


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.isoformat(timespec="seconds")


def _day(value: datetime | None) -> str:
    return "-" if value is None else value.date().isoformat()


def _dump(value: Any) -> None:
    typer.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2, default=str).decode())


# -- keys ----------------------------------------------------------------------------------------


@keys_app.command("create")
def keys_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Option("--name", help="Unique among unrevoked keys.")],
    role: Annotated[str, typer.Option("--role", help="support, auditor or admin.")],
    expires: Annotated[
        str | None,
        typer.Option("--expires", help="90d, 30d..., or an ISO date or time (default: never)."),
    ] = None,
    created_by: Annotated[
        str | None, typer.Option("--created-by", help="Who asked (default: the OS user).")
    ] = None,
) -> None:
    """Create a key; its secret is printed once, on stdout, and cannot be shown again."""
    try:
        chosen = parse_role(role)
    except ValueError as exc:
        raise CliError(f"--role: {exc}") from None
    user = check_text(created_by, "--created-by") or os_user()
    expires_at = parse_expiry(expires, datetime.now(UTC))
    engine = _engine(ctx, write=True)
    try:
        key, secret = create_key(
            engine,
            name=name,
            role=chosen,
            created_by=user,
            expires_at=expires_at,
            audit=_audit(user, "key_create"),
        )
    except KeyInputError as exc:
        if isinstance(exc, KeyNameTakenError):
            _log_failure(engine, user, "key_create", "error", f"name {name!r} taken")
        raise CliError(str(exc)) from None
    err.print(
        text(
            f"created key {key.name} ({key.id}): role {key.role.value}, "
            f"expires {_when(key.expires_at) if key.expires_at else 'never'}"
        )
    )
    err.print(
        text("store this secret now: it is not shown again and cannot be recovered"),
        style="bold yellow",
    )
    typer.echo(secret)


@keys_app.command("list")
def keys_list(ctx: typer.Context, json: JsonOpt = False) -> None:
    """Every key (revoked and expired ones too) with its state; never the secrets."""
    now = datetime.now(UTC)
    keys = list_keys(_engine(ctx, write=False))
    if json:
        _dump([key.as_dict(now) for key in keys])
        return
    # One line per key: a table of nine columns folds into nonsense in 80 columns.
    console.print(text(f"{len(keys)} API keys (revoked and expired ones included)"))
    for key in keys:
        last = "never" if key.last_used_at is None else key.last_used_at.strftime("%Y-%m-%d %H:%M")
        console.print(
            text(
                f"{key.name}  {key.role.value}  {key.state(now)}  {key.prefix}\u2026  "
                f"created {_day(key.created_at)} by {key.created_by}  "
                f"expires {_day(key.expires_at) if key.expires_at else 'never'}  "
                f"last used {last}  id {key.id}"
            )
        )


@keys_app.command("revoke")
def keys_revoke(
    ctx: typer.Context,
    name_or_id: Annotated[str, typer.Argument(help="The key's name or id.")],
    created_by: Annotated[
        str | None, typer.Option("--created-by", help="Who asked (default: the OS user).")
    ] = None,
) -> None:
    """Revoke a key: it stops working at once, also for signed-in browser sessions."""
    check_text(name_or_id, "name or id", 100)
    user = check_text(created_by, "--created-by") or os_user()
    engine = _engine(ctx, write=True)
    try:
        key = revoke_key(engine, name_or_id, audit=_audit(user, "key_revoke"))
    except KeyNotFoundError as exc:
        _log_failure(engine, user, "key_revoke", "not_found", f"name or id {name_or_id!r}")
        raise CliError(str(exc), 1) from None
    console.print(text(f"revoked key {key.name} ({key.id}, role {key.role.value})"))


# -- access log ----------------------------------------------------------------------------------


def access_log(
    ctx: typer.Context,
    report: Annotated[
        str | None, typer.Option("--report", help="Only this ReportGeneration id.")
    ] = None,
    user: Annotated[str | None, typer.Option("--user", help="Only this user.")] = None,
    since: Annotated[str | None, typer.Option(help="At/after this time (ISO 8601).")] = None,
    until: Annotated[str | None, typer.Option(help="Before this time (ISO 8601).")] = None,
    limit: Annotated[int, typer.Option(min=1, max=MAX_LIMIT, help="Rows shown at most.")] = 100,
    json: JsonOpt = False,
) -> None:
    """Who read input snapshots and PDFs, verified, identified, changed keys: newest first."""
    items, total = list_access(
        _engine(ctx, write=False),
        report_id=check_text(report, "--report", MAX_ID),
        user=check_text(user, "--user"),
        since=parse_time(since, "--since"),
        until=parse_time(until, "--until"),
        limit=limit,
    )
    if json:
        _dump({"total": total, "items": [{**i, "at": i["at"].isoformat()} for i in items]})
        return
    # One line per entry (a log reads and greps better than a table folded into 80 columns).
    console.print(text(f"access log: {len(items)} of {total} entries, newest first"))
    for item in items:
        console.print(
            text(
                "  ".join(
                    (
                        _when(item["at"]),
                        item["user"],
                        item["role"] or "-",
                        item["action"],
                        item["outcome"],
                        f"report {item['report_id'] or '-'}",
                        f"from {item['client'] or '-'}",
                        item["detail"] or "",
                    )
                ).rstrip()
            )
        )


__all__ = ["access_log", "keys_app"]
