"""``otel-lineage``: audit lineage capture and look at one report's lineage.

``<report-id>`` is always the ``ReportGeneration`` id. The lineage database comes from
``OTEL_LINEAGE_DATABASE_URL`` (default: the report database, ``D6_DATABASE_URL``); the
report database for the audit from ``D6_DATABASE_URL``.
"""

from __future__ import annotations

import hashlib
import sys
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
from otel_lineage.exports import TraceUnavailableError, span_tree, to_jaeger, to_otlp_json
from otel_lineage.openlineage import emit as emit_events
from otel_lineage.openlineage import run_events
from otel_lineage.outbox import OutboxHandOff, inspect_outboxes, pending_generation_ids
from otel_lineage.query import (
    LineageNotFoundError,
    ListFilter,
    audit,
    get_row,
    inputs_summary,
    latest_report_id,
    list_rows,
    public_row,
    rows_by_output,
    step_stats,
)
from otel_lineage.retention import prune
from otel_lineage.settings import MEMORY_OUTBOX, LineageSettings
from otel_lineage.store import LineageStore
from otel_lineage.verify import VerifyError, stored_snapshot, verify

app = typer.Typer(help="Report lineage: audit capture, show one report.", no_args_is_help=True)
outbox_app = typer.Typer(help="The local outbox of lineage records.", no_args_is_help=True)
app.add_typer(outbox_app, name="outbox")
console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _lineage_engine() -> Engine:
    return create_lineage_engine(LineageSettings.from_env().database_url)


def _reports_engine() -> Engine:
    return create_lineage_engine(LineageSettings.from_env().reports_database_url)


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
    if report_id is None:
        try:
            report_id = latest_report_id(_lineage_engine())
        except LineageNotFoundError as exc:
            err.print(f"[red]{exc}[/]")
            raise typer.Exit(1) from exc
    row = _row_or_exit(report_id)
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


@app.command("list")
def list_cmd(
    business: Annotated[int | None, typer.Option(help="Business id.")] = None,
    template: Annotated[str | None, typer.Option(help="Template name.")] = None,
    version: Annotated[str | None, typer.Option(help="Template version.")] = None,
    status: Annotated[str | None, typer.Option(help="completed or failed.")] = None,
    since: Annotated[str | None, typer.Option(help="Started at/after (ISO).")] = None,
    until: Annotated[str | None, typer.Option(help="Started before (ISO).")] = None,
    incomplete: Annotated[bool, typer.Option("--incomplete", help="Incomplete only.")] = False,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    page: Annotated[int, typer.Option(min=1, help="Page number (of --limit rows).")] = 1,
    json: JsonOpt = False,
) -> None:
    """Lineage rows, newest first, filtered and paginated."""
    where = ListFilter(
        business_id=business,
        template_name=template,
        template_version=version,
        status=status,
        since=_parse_since(since),
        until=_parse_since(until),
        incomplete_only=incomplete,
    )
    rows, total = list_rows(_lineage_engine(), where, limit=limit, offset=(page - 1) * limit)
    if json:
        _dump({"total": total, "page": page, "limit": limit, "rows": rows})
        return
    table = Table(title=f"Lineage rows {len(rows)} of {total} (page {page})")
    for name in ("report", "business", "template", "status", "started", "ms", "pages", "trace"):
        table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(
            str(row["report_generation_id"]),
            str(row["business_id"]),
            f"{row['template_name']} {row['template_version']}",
            row["status"] + ("" if row["complete"] else " [yellow](incomplete)[/]"),
            row["started_at"].isoformat(timespec="seconds"),
            f"{row['duration_ms']:.0f}" if row["duration_ms"] is not None else "-",
            str(row["output_pages"] or "-"),
            row["trace_id"],
        )
    console.print(table)


@app.command("identify")
def identify(
    pdf: Annotated[Path, typer.Argument(help="A PDF someone sent you.")],
    json: JsonOpt = False,
) -> None:
    """Which report, generation and lineage produced this PDF (by its sha256)."""
    try:
        data = pdf.read_bytes()
    except OSError as exc:
        err.print(f"[red]cannot read {pdf}: {exc.strerror}[/]")
        raise typer.Exit(1) from exc
    if not data.startswith(b"%PDF-"):
        err.print(f"[red]{pdf} is not a PDF (it does not start with %PDF-)[/]")
        raise typer.Exit(1)
    digest = hashlib.sha256(data).hexdigest()
    rows = rows_by_output(_lineage_engine(), digest)
    if json:
        _dump({"sha256": digest, "matches": rows})
    if not rows:
        err.print(f"[red]no report produced a PDF with sha256 {digest}[/]")
        raise typer.Exit(1)
    if not json:
        console.print(f"sha256 {digest}: produced by {len(rows)} report(s)")
        for row in rows:
            console.print(
                f"  report [bold]{row['report_generation_id']}[/], business "
                f"{row['business_id']}, {row['template_name']} {row['template_version']}, "
                f"{row['started_at'].isoformat(timespec='seconds')}, inputs "
                f"{row['inputs_sha256']}, trace {row['trace_id']}"
            )


@app.command("inputs")
def inputs_cmd(
    report_id: Annotated[str, typer.Argument(help="ReportGeneration id.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to a file.")] = None,
) -> None:
    """The input snapshot of a report, byte-exact (checked against its recorded sha256)."""
    row = _row_or_exit(report_id)
    try:
        data = stored_snapshot(row)
    except VerifyError as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from exc
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        output.write_bytes(data)
        err.print(f"wrote {len(data)} bytes (sha256 {row['inputs_sha256']}) to {output}")


@app.command("stats")
def stats(
    since: Annotated[str | None, typer.Option(help="Started at/after (ISO).")] = None,
    json: JsonOpt = False,
) -> None:
    """Per template version: reports, failure rate, p50/p95 of each step."""
    groups = step_stats(_lineage_engine(), since=_parse_since(since))
    if json:
        _dump(groups)
        return
    table = Table(title="Reports per template version")
    for name in ("template", "reports", "failed", "failure rate", "step", "p50 ms", "p95 ms"):
        table.add_column(name)
    for group in groups:
        label = f"{group['template_name']} {group['template_version']}"
        first = True
        for step, figures in group["steps"].items() or [("-", {"p50_ms": "-", "p95_ms": "-"})]:
            table.add_row(
                label if first else "",
                str(group["count"]) if first else "",
                str(group["failed"]) if first else "",
                f"{group['failure_rate']:.1%}" if first else "",
                step,
                str(figures["p50_ms"]),
                str(figures["p95_ms"]),
            )
            first = False
    console.print(table)


@app.command("verify")
def verify_cmd(
    report_id: Annotated[str, typer.Argument(help="ReportGeneration id.")],
    json: JsonOpt = False,
) -> None:
    """Re-render from the stored snapshot and template version; exit 1 on any difference."""
    row = _row_or_exit(report_id)
    try:
        result = verify(row)
    except VerifyError as exc:
        err.print(f"[red]cannot verify: {exc}[/]")
        raise typer.Exit(1) from exc
    if json:
        _dump(
            {
                "report_generation_id": result.report_generation_id,
                "ok": result.ok,
                "checks": [
                    {"what": c.what, "recorded": c.recorded, "actual": c.actual, "ok": c.ok}
                    for c in result.checks
                ],
            }
        )
    else:
        for check in result.checks:
            if check.ok:
                console.print(f"[green]match[/]    {check.what} {check.actual}")
            else:
                console.print(
                    f"[red]DIFFERS[/]  {check.what}: recorded {check.recorded}, "
                    f"re-rendered {check.actual}"
                )
        console.print(
            "[green]reproduced byte for byte[/]" if result.ok else "[red]not reproduced[/]"
        )
    raise typer.Exit(0 if result.ok else 1)


@app.command("trace")
def trace_cmd(
    report_id: Annotated[str, typer.Argument(help="ReportGeneration id.")],
    format: Annotated[str, typer.Option("--format", help="jaeger or otlp.")] = "jaeger",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to a file.")] = None,
) -> None:
    """The stored copy of the report's trace, as Jaeger JSON or OTLP/JSON."""
    if format not in ("jaeger", "otlp"):
        err.print(f"[red]unknown format {format!r}: use jaeger or otlp[/]")
        raise typer.Exit(2)
    row = _row_or_exit(report_id)
    try:
        tree = span_tree(row)
    except Exception as exc:
        err.print(
            f"[red]{exc}[/]"
            if isinstance(exc, TraceUnavailableError)
            else f"[red]the stored span tree is corrupt: {type(exc).__name__}: {exc}[/]"
        )
        raise typer.Exit(1) from exc
    document = to_jaeger(tree) if format == "jaeger" else to_otlp_json(tree)
    text = orjson.dumps(document, option=orjson.OPT_INDENT_2)
    if output is None:
        typer.echo(text.decode())
    else:
        output.write_bytes(text)
        err.print(f"wrote the {format} trace of report {report_id} to {output}")


@app.command("openlineage")
def openlineage_cmd(
    report_id: Annotated[str | None, typer.Argument(help="ReportGeneration id.")] = None,
    since: Annotated[str | None, typer.Option(help="Every report started at/after (ISO).")] = None,
    emit: Annotated[str | None, typer.Option(help="POST to this Marquez-compatible URL.")] = None,
) -> None:
    """OpenLineage RunEvents (START, COMPLETE or FAIL) for one report or a time range."""
    if (report_id is None) == (since is None):
        err.print("[red]give a report id or --since (not both)[/]")
        raise typer.Exit(2)
    engine = _lineage_engine()
    if report_id is not None:
        rows = [_row_or_exit(report_id)]
    else:
        listed, _ = list_rows(engine, ListFilter(since=_parse_since(since)), limit=100_000)
        rows = [get_row(engine, str(r["report_generation_id"])) for r in reversed(listed)]
    reports_url = LineageSettings.from_env().reports_database_url
    events = [event for row in rows for event in run_events(row, reports_url)]
    if emit is None:
        for event in events:
            typer.echo(orjson.dumps(event).decode())
        return
    try:
        sent = emit_events(events, emit)
    except OSError as exc:
        err.print(f"[red]emitting to {emit} failed: {exc}[/]")
        raise typer.Exit(1) from exc
    console.print(f"emitted {sent} events for {len(rows)} reports to {emit}")


@app.command("prune")
def prune_cmd(
    snapshots_older_than: Annotated[
        float, typer.Option("--snapshots-older-than", min=0, help="Age in days.")
    ],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only report.")] = False,
) -> None:
    """Drop snapshots and span trees of old rows; keep hashes, steps and the row."""
    result = prune(_lineage_engine(), older_than_days=snapshots_older_than, dry_run=dry_run)
    verb = "would free" if dry_run else "freed"
    console.print(
        f"{result.rows} rows started before {result.cutoff.isoformat(timespec='seconds')}: "
        f"{verb} {result.bytes_freed} bytes of snapshots and span trees"
    )


def _row_or_exit(report_id: str) -> dict[str, Any]:
    try:
        return get_row(_lineage_engine(), report_id)
    except LineageNotFoundError as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from exc


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
