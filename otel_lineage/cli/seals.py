"""``otel-lineage seal`` and ``otel-lineage audit --seals``: tamper-evident seals.

``seal`` seals every lineage row not sealed yet (signed when ``OTEL_LINEAGE_SEAL_KEY_FILE``
names an Ed25519 key) and prints the chain head, which is worth keeping somewhere the database's
administrators cannot write: the database alone cannot prove that its newest seals were not
removed. ``audit --seals`` recomputes the chain and exits 1 when anything does not hold.
"""

from __future__ import annotations

from typing import Annotated, Any, NoReturn

import orjson
import typer
from rich.console import Console
from rich.text import Text
from sqlalchemy import Engine

from otel_lineage.cli.support import CliError, cli_engine, text
from otel_lineage.evidence.seals import (
    DEFAULT_MAX_ROWS,
    INVALID,
    SealAudit,
    SealSettings,
    audit_seals,
    seal_all,
    verifying_key,
)
from otel_lineage.settings import LineageConfigError, LineageSettings

console = Console(soft_wrap=True, highlight=False)
#: Characters of a seal hash shown in text output.
HEAD_PREFIX = 16


def _engine(ctx: typer.Context, *, write: bool) -> Engine:
    """The lineage database with the deadline of ``--db-timeout``; never creates a file."""
    try:
        url = LineageSettings.from_env().database_url
    except LineageConfigError as exc:
        raise CliError(str(exc)) from exc
    timeout = float(ctx.find_root().params.get("db_timeout") or 30.0)
    return cli_engine(url, "lineage", write=write, timeout_s=timeout)


def _dump(value: Any) -> None:
    typer.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2, default=str).decode())


def seal(
    ctx: typer.Context,
    max_rows: Annotated[
        int, typer.Option("--max-rows", min=1, max=1_000_000, help="Rows per seal at most.")
    ] = DEFAULT_MAX_ROWS,
    json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Seal the lineage rows written since the last seal (signed if a key is configured)."""
    try:
        signer = SealSettings.from_env().signer
    except LineageConfigError as exc:
        raise CliError(str(exc)) from exc
    results = seal_all(_engine(ctx, write=True), signer=signer, max_rows=max_rows)
    if json:
        _dump({"rows": sum(r.rows for r in results), "seals": [r.as_dict() for r in results]})
        return
    if not results:
        console.print("nothing to seal")
    for result in results:
        signed = f", signed by key {result.key_id[:HEAD_PREFIX]}" if result.key_id else ""
        console.print(
            f"sealed {result.rows} rows in seal #{result.seal_no} "
            f"(chain head {result.seal_hash[:HEAD_PREFIX]}{signed})"
        )


def audit_seals_cmd(engine: Engine, *, json: bool, limit: int) -> NoReturn:
    """``audit --seals``: print what the chain check found; exit 1 when anything is wrong."""
    try:
        public_key = verifying_key()
    except LineageConfigError as exc:
        raise CliError(str(exc)) from exc
    report = audit_seals(engine, public_key=public_key)
    if json:
        _dump(report.as_dict(limit))
        raise typer.Exit(0 if report.ok else 1)
    _print(report, limit)
    raise typer.Exit(0 if report.ok else 1)


def _print(report: SealAudit, limit: int) -> None:
    verdict = ("seals hold", "green") if report.ok else ("seals DO NOT hold", "red")
    head = report.chain_head[:HEAD_PREFIX] if report.chain_head else "none"
    console.print(
        Text.assemble(
            verdict,
            f": {report.seals} seals checked, {report.rows_covered} rows covered, "
            f"chain head {head}; not yet sealed: {report.not_yet_sealed}",
        )
    )
    counts = report.signature_counts
    if counts:
        console.print(text("signatures: " + ", ".join(f"{k} {v}" for k, v in counts.items())))
    for item in report.invalid_signatures[:limit]:
        console.print(
            Text.assemble(
                (f"seal #{item['seal']}: {INVALID}", "red"), f" ({item.get('detail', '')})"
            )
        )
    for item in report.broken[:limit]:
        console.print(Text.assemble(("broken ", "red"), f"seal #{item['seal']}: {item['problem']}"))
    for label, rows in (
        ("modified", report.modified),
        ("deleted", report.deleted),
        ("inserted after sealing", report.inserted),
    ):
        if rows:
            console.print(
                Text(f"{label}: {len(rows)} rows (showing {min(len(rows), limit)})", style="red")
            )
        for row in rows[:limit]:
            where = f"seal #{row['seal']}" if row["seal"] is not None else "no seal"
            why = f"; {row['why']}" if row.get("why") else ""
            console.print(
                text(
                    f"  {label} report {row['report_generation_id'] or '-'} trace "
                    f"{row['trace_id']} (row {row['row_id']}, {where}){why}"
                )
            )
