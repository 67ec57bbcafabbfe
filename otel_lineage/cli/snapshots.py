"""``otel-lineage forget`` and ``otel-lineage keys rotate``: erasure and master key rotation.

Both change lineage in one transaction and print what they did on stdout (``--json`` for
scripts); neither prints a key or a snapshot value. ``forget`` is irreversible, so it asks
first, and without a terminal to ask on it refuses unless ``--yes`` is given (a cron job or a
pipe must say so explicitly).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from sqlalchemy import Connection, Engine

from otel_lineage.access.log import record_access
from otel_lineage.cli.access import CLI_CLIENT, os_user
from otel_lineage.cli.support import CliError, cli_engine, text
from otel_lineage.delivery.store import untraced
from otel_lineage.protection.keys import (
    KEY_FILE_VARIABLE,
    Keyring,
    KeyUnavailableError,
    keyring_from_env,
    rotate,
)
from otel_lineage.protection.snapshots import EncryptResult, encrypt_existing, forget
from otel_lineage.settings import LineageConfigError, LineageSettings

console = Console(soft_wrap=True, highlight=False)
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
#: Largest business id (the column is a 32-bit integer).
_MAX_BUSINESS = 2**31 - 1


def _engine(ctx: typer.Context) -> Engine:
    """The lineage database, writable, with the deadline of ``--db-timeout``."""
    try:
        url = LineageSettings.from_env().database_url
    except LineageConfigError as exc:
        raise CliError(str(exc)) from exc
    timeout = float(ctx.find_root().params.get("db_timeout") or 30.0)
    return cli_engine(url, "lineage", write=True, timeout_s=timeout)


def _dump(value: dict[str, Any]) -> None:
    sys.stdout.buffer.write(orjson.dumps(value, option=orjson.OPT_INDENT_2) + b"\n")


def _logged(action: str, detail: Callable[[Any], str]) -> Callable[[Connection, Any], None]:
    """An access-log entry for ``action`` by the OS user, in the caller's transaction."""

    def hook(conn: Connection, result: Any) -> None:
        record_access(
            conn,
            user=os_user(),
            role=None,
            action=action,
            report_id=None,
            client=CLI_CLIENT,
            user_agent=None,
            outcome="allowed",
            detail=detail(result),
        )

    return hook


def _forget_detail(result: Any) -> str:
    return (
        f"business {result.business_id}: key destroyed {result.key_destroyed}, "
        f"{result.snapshots_deleted} snapshots deleted, {result.inline_cleared} inline cleared"
    )


def _rotate_detail(result: Any) -> str:
    return f"re-wrapped {result.rewrapped} business keys under master key {result.current_id}"


def forget_cmd(
    ctx: typer.Context,
    business: Annotated[
        int,
        typer.Option(
            "--business", min=1, max=_MAX_BUSINESS, help="The business whose inputs to erase."
        ),
    ],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    json: JsonOpt = False,
) -> None:
    """Erase one business's input snapshots (crypto-shredding): its data key is destroyed.

    Lineage rows, their digests and seals stay; every snapshot of the business written before
    now becomes unreadable, and `inputs`/`verify` say so.
    """
    if not yes:
        if not sys.stdin.isatty():
            raise CliError(f"forget erases business {business}'s input snapshots: add --yes")
        if not typer.confirm(
            f"Erase every input snapshot of business {business}? This cannot be undone"
        ):
            raise CliError("nothing erased", 1)
    engine = _engine(ctx)
    try:
        with untraced():
            result = forget(engine, business, audit=_logged("forget", _forget_detail))
    finally:
        engine.dispose()
    if json:
        _dump(
            {
                "business_id": result.business_id,
                "destroyed_at": result.destroyed_at.isoformat(),
                "key_destroyed": result.key_destroyed,
                "snapshots_deleted": result.snapshots_deleted,
                "inline_cleared": result.inline_cleared,
                "rows_kept": result.rows,
            }
        )
        return
    key = "data key destroyed" if result.key_destroyed else "no data key existed; erasure recorded"
    console.print(
        text(
            f"business {business}: {key} at {result.destroyed_at.isoformat(timespec='seconds')}; "
            f"{result.snapshots_deleted} stored snapshots deleted, {result.inline_cleared} inline "
            f"snapshots cleared; its {result.rows} lineage rows, digests and seals are kept"
        )
    )


def keys_rotate(ctx: typer.Context, json: JsonOpt = False) -> None:
    """Re-wrap every business's snapshot data key under the current master key, and encrypt
    the snapshots still stored in clear.

    The current master key is the last line of the key file (OTEL_LINEAGE_SNAPSHOT_KEY_FILE).
    Once this reports nothing left under an older key, that key can leave the file.
    """
    try:
        keyring = keyring_from_env()
    except LineageConfigError as exc:
        raise CliError(str(exc)) from exc
    if keyring is None:
        raise CliError(f"{KEY_FILE_VARIABLE} is not set: there is no master key to rotate to")
    engine = _engine(ctx)
    try:
        with untraced(), engine.begin() as conn:
            result = rotate(conn, keyring)
            _logged("keys_rotate", _rotate_detail)(conn, result)
        # Every live key is under the current master key now, so nothing below is refused.
        encrypted = None if result.missing else _encrypt(engine, keyring)
    finally:
        engine.dispose()
    if json:
        _dump(
            {
                "current_master_key": result.current_id,
                "rewrapped": result.rewrapped,
                "already_current": result.already_current,
                "missing_master_keys": dict(result.missing),
                "encrypted": None if encrypted is None else dataclasses.asdict(encrypted),
            }
        )
    else:
        console.print(
            text(
                f"re-wrapped {result.rewrapped} business keys under master key "
                f"{result.current_id} ({result.already_current} were already under it)"
            )
        )
        if encrypted is not None:
            console.print(
                text(
                    f"encrypted {encrypted.shared} snapshots stored in clear and "
                    f"{encrypted.inline} inline snapshots of rows from before revision 0010; "
                    f"{encrypted.left_inline} inline snapshots left in clear (no business id, "
                    "or not matching their digest)"
                )
            )
    if result.missing:
        missing = ", ".join(f"{k} ({n} business keys)" for k, n in sorted(result.missing.items()))
        raise CliError(
            f"not re-wrapped: wrapped by master keys not in the key file: {missing}; put them "
            "back in the file and run keys rotate again",
            1,
        )


def _encrypt(engine: Engine, keyring: Keyring) -> EncryptResult:
    try:
        with untraced():
            return encrypt_existing(engine, keyring)
    except KeyUnavailableError as exc:  # a writer with an older key file created a key
        raise CliError(
            f"{exc}: restart the writers with this key file, then rotate again", 1
        ) from exc
