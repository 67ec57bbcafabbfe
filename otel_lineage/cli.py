"""``otel-lineage``: audit lineage capture and look at one report's lineage.

``<report-id>`` is always the ``ReportGeneration`` id. The lineage database comes from
``OTEL_LINEAGE_DATABASE_URL`` (default: the report database, ``D6_DATABASE_URL``); the
report database for the audit from ``D6_DATABASE_URL``.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from otel_lineage.configuration import create_lineage_engine
from otel_lineage.query import (
    LineageNotFoundError,
    audit,
    get_row,
    inputs_summary,
    latest_report_id,
    public_row,
)
from otel_lineage.settings import DEFAULT_DATABASE_URL, LineageSettings

app = typer.Typer(help="Report lineage: audit capture, show one report.", no_args_is_help=True)
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
    try:
        report = audit(_reports_engine(), _lineage_engine(), since=_parse_since(since))
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
            for name in ("report_generation_id", "status", "requested_at", "trace_id"):
                table.add_column(name)
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
