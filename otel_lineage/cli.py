"""``otel-lineage``: audit lineage capture and look at one report's lineage.

``<report-id>`` is always the ``ReportGeneration`` id. The lineage database comes from
``OTEL_LINEAGE_DATABASE_URL`` (default: the report database, ``D6_DATABASE_URL``); the
report database for the audit from ``D6_DATABASE_URL``.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from otel_lineage.configuration import create_lineage_engine
from otel_lineage.outbox import OutboxHandOff, inspect_outboxes, pending_generation_ids
from otel_lineage.query import (
    LineageNotFoundError,
    audit,
    get_row,
    inputs_summary,
    latest_report_id,
    public_row,
)
from otel_lineage.settings import DEFAULT_DATABASE_URL, MEMORY_OUTBOX, LineageSettings
from otel_lineage.store import LineageStore

app = typer.Typer(help="Report lineage: audit capture, show one report.", no_args_is_help=True)
outbox_app = typer.Typer(help="The local outbox of lineage records.", no_args_is_help=True)
app.add_typer(outbox_app, name="outbox")
console = Console()
err = Console(stderr=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _lineage_engine() -> Engine:
    return create_lineage_engine(LineageSettings.from_env().database_url)


def _reports_engine() -> Engine:
    return create_lineage_engine(os.environ.get("D6_DATABASE_URL") or DEFAULT_DATABASE_URL)


def _dump(value: Any) -> None:
    typer.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2, default=str).decode())


def _parse_since(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        raise typer.BadParameter(f"not an ISO 8601 time: {text!r}") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@app.command("audit")
def audit_cmd(
    since: Annotated[
        str | None, typer.Option(help="Only reports requested at/after (ISO).")
    ] = None,
    json: JsonOpt = False,
) -> None:
    """Reconcile report generations with lineage rows; exit 1 below 100% capture."""
    waiting = _waiting_in_outbox()
    try:
        report = audit(
            _reports_engine(), _lineage_engine(), since=_parse_since(since), waiting=waiting
        )
    except SQLAlchemyError as exc:
        err.print(f"[red]cannot read the databases:[/] {exc.__class__.__name__}: {exc}")
        raise typer.Exit(2) from exc
    if json:
        _dump(report.as_dict())
    else:
        finished = report.generations - report.in_flight
        colour = "green" if report.capture_rate >= 1.0 else "red"
        console.print(
            f"capture rate [{colour}]{report.capture_rate:.2%}[/] "
            f"({report.with_lineage}/{finished} finished reports have lineage; "
            f"{report.in_flight} in flight)"
        )
        console.print(
            f"incomplete rows: {len(report.incomplete)}; pending hand-offs: "
            f"{report.counters.get('pending', 0)}; "
            + ", ".join(f"{k} {v}" for k, v in report.counters.items() if k != "pending")
            + f" (over {report.processes} processes)"
        )
        if report.missing:
            table = Table(title="Reports without lineage")
            for name in ("report_generation_id", "status", "requested_at", "trace_id", "why"):
                table.add_column(name, overflow="fold")
            for item in report.missing[:50]:
                table.add_row(*(str(item[k] or "") for k in item))
            console.print(table)
            if report.counters.get("dropped") or report.counters.get("evicted"):
                console.print(
                    "[yellow]lineage records were dropped or evicted; see the counters above[/]"
                )
        for item in report.incomplete[:50]:
            console.print(
                f"[yellow]incomplete[/] {item['report_generation_id']}: "
                f"{', '.join(item['reasons'])}"
            )
    raise typer.Exit(0 if report.capture_rate >= 1.0 else 1)


@app.command("show")
def show(
    report_id: Annotated[str | None, typer.Argument(help="ReportGeneration id.")] = None,
    latest: Annotated[bool, typer.Option("--latest", help="The most recent report.")] = False,
    json: JsonOpt = False,
) -> None:
    """One report's lineage: status, hashes, steps, inputs summary."""
    if (report_id is None) == (not latest):
        err.print("[red]give a report id or --latest (not both)[/]")
        raise typer.Exit(2)
    engine = _lineage_engine()
    try:
        report_id = report_id or latest_report_id(engine)
        row = get_row(engine, report_id)
    except LineageNotFoundError as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from exc
    try:
        inputs = inputs_summary(row)
    except Exception as exc:  # a corrupt blob is reported, never fatal to showing the row
        inputs = {"stored": True, "error": f"{type(exc).__name__}: {exc}"}
    jaeger = LineageSettings.from_env().jaeger_url
    trace_url = (
        f"{jaeger.rstrip('/')}/trace/{row['trace_id']}" if jaeger and row["sampled"] else None
    )
    if json:
        _dump({**public_row(row), "inputs": inputs, "jaeger_url": trace_url})
        return
    summary = Table(title=f"Lineage of report {report_id}", show_header=False)
    summary.add_column("field", style="bold")
    summary.add_column("value", overflow="fold")
    status = row["status"] if row["complete"] else f"{row['status']} (INCOMPLETE)"
    for label, value in (
        ("status", status),
        ("incomplete reasons", ", ".join(row["incomplete_reasons"]) or "-"),
        ("error", f"{row['error_type']}: {row['error_message']}" if row["error_type"] else "-"),
        ("business", row["business_id"]),
        ("template", f"{row['template_name']} {row['template_version']}"),
        ("template sha256", row["template_sha256"]),
        ("inputs sha256", row["inputs_sha256"]),
        ("inputs", _inputs_line(inputs)),
        ("input tables", ", ".join(row["input_tables"])),
        ("html sha256", row["html_sha256"]),
        ("output sha256", row["output_sha256"]),
        (
            "output",
            f"{row['output_pages']} pages, {row['output_bytes']} bytes, {row['output_uri']}",
        ),
        ("trace", f"{row['trace_id']} ({'exported' if row['sampled'] else 'not exported'})"),
        ("jaeger", trace_url or "-"),
        ("started", row["started_at"]),
        ("duration", f"{row['duration_ms']} ms, {row['span_count']} spans"),
        ("service", f"{row['service_name']} {row['service_version'] or ''}"),
    ):
        summary.add_row(label, str(value))
    console.print(summary)
    steps = Table(title="Steps")
    for name in ("step", "start +ms", "duration ms", "status"):
        steps.add_column(name)
    for step in row["steps"]:
        steps.add_row(
            step["name"],
            str(step["start_offset_ms"]),
            str(step["duration_ms"]),
            step["status"] + (f" ({step['error_type']})" if step.get("error_type") else ""),
        )
    console.print(steps)


@outbox_app.command("status")
def outbox_status(json: JsonOpt = False) -> None:
    """Outbox files under OTEL_LINEAGE_OUTBOX: records waiting, age, whether the owner lives."""
    directory = _outbox_dir()
    files = inspect_outboxes(directory) if directory else []
    now = time.time()
    listed = [
        {
            "path": str(f.path),
            "records": f.records,
            "bytes": f.bytes,
            "oldest_age_s": round(now - f.oldest, 1) if f.oldest else None,
            "owner_alive": f.owner_alive,
        }
        for f in files
    ]
    if json:
        _dump(listed)
        return
    if directory is None:
        console.print("the outbox is in memory (OTEL_LINEAGE_OUTBOX=memory): nothing on disk")
        return
    table = Table(title=f"Lineage outbox {directory}")
    for name in ("file", "records", "bytes", "oldest (s)", "owner"):
        table.add_column(name)
    for item in listed:
        table.add_row(
            Path(str(item["path"])).name,
            str(item["records"]),
            str(item["bytes"]),
            str(item["oldest_age_s"] or "-"),
            "alive" if item["owner_alive"] else "[yellow]dead: flush to ship[/]",
        )
    console.print(table)
    console.print(f"{sum(f.records for f in files)} records waiting in {len(files)} files")


@outbox_app.command("flush")
def outbox_flush() -> None:
    """Ship the records of dead processes' outboxes to the lineage database now."""
    directory = _outbox_dir()
    if directory is None:
        err.print("the outbox is in memory: there is nothing on disk to flush")
        raise typer.Exit(2)
    settings = LineageSettings.from_env()
    box = OutboxHandOff(directory, max_records=settings.max_pending)
    store = LineageStore(create_lineage_engine(settings.database_url))
    adopted = box.recover()
    written = 0
    try:
        while batch := box.take(settings.batch_size, 0):
            store.upsert([item.record for item in batch])
            box.ack(batch)
            written += len(batch)
    except SQLAlchemyError as exc:
        err.print(f"[red]lineage database unreachable; {box.pending()} records kept:[/] {exc}")
        raise typer.Exit(1) from exc
    finally:
        box.close()
        store.engine.dispose()
    console.print(f"adopted {adopted} records from dead processes, wrote {written}")


def _outbox_dir() -> Path | None:
    outbox = LineageSettings.from_env().outbox
    return None if outbox == MEMORY_OUTBOX else Path(outbox)


def _waiting_in_outbox() -> dict[str, Path]:
    directory = _outbox_dir()
    return pending_generation_ids(directory) if directory and directory.is_dir() else {}


def _inputs_line(inputs: dict[str, Any]) -> str:
    if not inputs.get("stored"):
        return "snapshot not stored"
    if "error" in inputs:
        return f"[red]snapshot unreadable: {inputs['error']}[/]"
    check = "verified" if inputs["sha256_matches"] else "[red]DIGEST MISMATCH[/]"
    return (
        f"{inputs['bytes']} bytes ({inputs['compressed_bytes']} stored), sha256 {check}; "
        f"business {inputs.get('business_name')!r}, {inputs.get('findings')} findings"
    )


def main() -> None:  # pragma: no cover
    app()
