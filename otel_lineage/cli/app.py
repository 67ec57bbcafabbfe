"""``otel-lineage``: audit lineage capture and look at one report's lineage.

``<report-id>`` is always the ``ReportGeneration`` id, or a unique prefix of it. The lineage
database comes from ``OTEL_LINEAGE_DATABASE_URL`` (default: the report database,
``D6_DATABASE_URL``); the report database for the audit from ``D6_DATABASE_URL``.

Every command fails in one ``error: ...`` line (see ``cli_support``), never creates a database
file, and gives up on a database that does not answer within ``--db-timeout`` seconds.
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import orjson
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlalchemy import Engine

from otel_lineage.cli.access import access_log, keys_app
from otel_lineage.cli.seals import audit_seals_cmd, seal
from otel_lineage.cli.serve import serve
from otel_lineage.cli.snapshots import forget_cmd, keys_rotate
from otel_lineage.cli.support import (
    MAX_ID,
    CliError,
    OneLineErrors,
    check_text,
    cli_engine,
    parse_time,
    text,
    write_output,
)
from otel_lineage.delivery.outbox import (
    OutboxHandOff,
    dead_attempts,
    inspect_outboxes,
    open_reports,
    pending_generation_ids,
)
from otel_lineage.delivery.recovery import QuarantinedItem, inspect_quarantine, mark_abandoned
from otel_lineage.delivery.store import LineageStore, untraced
from otel_lineage.reading.exports import (
    CorruptTraceError,
    TraceUnavailableError,
    exported_tree,
    to_jaeger,
    to_otlp_json,
)
from otel_lineage.reading.identify import (
    MAX_PARSED_BYTES,
    SOURCES,
    EmbeddedLineage,
    embedded_lineage,
)
from otel_lineage.reading.openlineage import check_endpoint, redacted, run_events
from otel_lineage.reading.openlineage import emit as emit_events
from otel_lineage.reading.query import (
    LIST_COLUMNS,
    LineageNotFoundError,
    ListFilter,
    attempts_of,
    audit,
    generations_by_pdf,
    get_row,
    inputs_summary,
    latest_report_id,
    list_rows,
    public_row,
    read_named_report,
    rows_by_output,
    step_stats,
)
from otel_lineage.reading.retention import MAX_AGE_DAYS, prune
from otel_lineage.reading.verify import VerifyError, readable_renderer, stored_snapshot, verify
from otel_lineage.settings import MEMORY_OUTBOX, LineageSettings

app = typer.Typer(
    cls=OneLineErrors,
    help="Report lineage: audit capture, show one report.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
outbox_app = typer.Typer(help="The local outbox of lineage records.", no_args_is_help=True)
app.add_typer(outbox_app, name="outbox")
keys_app.command("rotate")(keys_rotate)
app.add_typer(
    keys_app,
    name="keys",
    help="API keys of the lineage service; `rotate` re-wraps the snapshot encryption keys.",
)
app.command("forget")(forget_cmd)
app.command("access-log")(access_log)
app.command("serve")(serve)
app.command("seal")(seal)
console = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, soft_wrap=True, highlight=False)
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")]
SinceOpt = Annotated[str | None, typer.Option(help="At/after this time (ISO 8601).")]
UntilOpt = Annotated[str | None, typer.Option(help="Before this time (ISO 8601).")]
ReportIdArg = Annotated[str, typer.Argument(help="ReportGeneration id (or a unique prefix).")]
#: Largest file ``identify`` hashes (the biggest demo report is well under 1 MB).
MAX_PDF_BYTES = 512 << 20
_CHUNK = 1 << 20
#: Largest business id (the column is a 32-bit integer).
MAX_INT32 = 2**31 - 1


@dataclass
class _Options:
    db_timeout_s: float = 30.0


_options = _Options()


def _version(value: bool) -> None:
    if value:
        typer.echo(f"otel-lineage {package_version('d6-reports')}")
        raise typer.Exit(0)


@app.callback()
def _main(
    db_timeout: Annotated[
        float,
        typer.Option(
            "--db-timeout",
            min=1,
            max=3600,
            help="Seconds to wait for a database connection and for each statement.",
        ),
    ] = 30.0,
    _show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Report lineage: audit capture, show one report."""
    _options.db_timeout_s = db_timeout


# -- settings, engines, parsing ------------------------------------------------------------------


def _settings() -> LineageSettings:
    try:
        return LineageSettings.from_env()
    except ValueError as exc:  # LineageConfigError: one line naming the variable
        raise CliError(str(exc)) from exc


def _engine(which: str, *, write: bool = False) -> Engine:
    """The lineage (or report) database engine: never creates a file, always has deadlines."""
    settings = _settings()
    url = settings.database_url if which == "lineage" else settings.reports_database_url
    label = which if which == "lineage" else "report"
    return cli_engine(url, label, write=write, timeout_s=_options.db_timeout_s)


def _dump(value: Any) -> None:
    typer.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2, default=str).decode())


def _status(value: str | None) -> str | None:
    """``--status``: one of the statuses a lineage row can have."""
    if value is None:
        return None
    status = value.strip().lower()
    if status not in ROW_STATUSES:
        raise CliError(f"--status must be one of {', '.join(ROW_STATUSES)}, not {value!r}")
    return status


ROW_STATUSES = ("completed", "failed", "unfinished")


def _trace_id(value: str | None, option: str) -> str | None:
    """A W3C trace id: 32 hex digits."""
    if value is None:
        return None
    check_text(value, option, 64)
    if len(value) != 32 or any(ch not in "0123456789abcdefABCDEF" for ch in value):
        raise CliError(f"{option}: not a trace id (32 hex digits): {value!r}")
    return value.lower()


def _report_id(value: str) -> str:
    check_text(value, "report id", MAX_ID)
    return value


def _row_or_exit(report_id: str) -> dict[str, Any]:
    try:
        return get_row(_engine("lineage"), _report_id(report_id))
    except LookupError as exc:  # not found, or an ambiguous prefix
        raise CliError(str(exc), 1) from exc


def _outbox_dir() -> Path | None:
    outbox = _settings().outbox
    return None if outbox == MEMORY_OUTBOX else Path(outbox)


def _waiting_in_outbox(directory: Path | None) -> dict[str, Path]:
    return pending_generation_ids(directory) if directory and directory.is_dir() else {}


def _template(row: dict[str, Any]) -> str:
    """``name version`` as recorded; ``-`` for what was not (an abandoned report's row)."""
    return f"{row.get('template_name') or '-'} {row.get('template_version') or '-'}"


def _recorded(row: dict[str, Any]) -> str:
    """Which spans the count covers: the span-recording policy in force for the trace."""
    policy = row.get("span_recording")
    if policy == "report":
        return " recorded (the report's own spans: an unsampled trace)"
    if policy == "all":
        return " recorded (all)"
    return ""


def _attempts_line(row: dict[str, Any], others: list[dict[str, Any]]) -> str:
    """This row's attempt and the others' (a queued task run more than once)."""
    shown = str(row["attempt"]) if row.get("attempt") is not None else "not recorded"
    if not others:
        return shown
    earlier = "; ".join(
        f"attempt {a['attempt'] if a['attempt'] is not None else '?'}: {a['status']}"
        f"{' (' + a['error_type'] + ')' if a['error_type'] else ''}, trace {a['trace_id']}"
        for a in others
    )
    return f"{shown} (other attempts: {earlier})"


def _open_reports(directory: Path | None) -> dict[str, bool]:
    """Report ids marked open in the outbox -> whether their process lives (contract 3)."""
    return open_reports(directory) if directory is not None and directory.is_dir() else {}


def _quarantine(directory: Path | None) -> list[QuarantinedItem]:
    return inspect_quarantine(directory) if directory and directory.is_dir() else []


def _quarantine_line(items: list[QuarantinedItem], directory: Path | None) -> Text:
    records = sum(item.kind == "record" for item in items)
    return Text(
        f"quarantined: {records} records, {len(items) - records} outbox files "
        f"under {directory}/quarantine (kept, never deleted; see `otel-lineage outbox status`)",
        style="yellow",
    )


# -- audit ---------------------------------------------------------------------------------------

#: Seconds between two audits while ``audit --wait`` waits.
AUDIT_POLL_S = 1.0


@app.command("audit")
def audit_cmd(
    since: Annotated[str | None, typer.Option(help="Reports requested at/after (ISO).")] = None,
    until: Annotated[str | None, typer.Option(help="Reports requested before (ISO).")] = None,
    limit: Annotated[
        int, typer.Option(min=0, max=100_000, help="Missing/incomplete reports listed at most.")
    ] = 50,
    json: JsonOpt = False,
    wait: Annotated[
        float,
        typer.Option(
            min=0,
            max=86_400,
            help="Seconds to wait for reports in progress to finish and for every finished "
            "report's lineage to arrive (draining a queue) before answering.",
        ),
    ] = 0,
    seals: Annotated[
        bool,
        typer.Option(
            "--seals", help="Check the seals instead: modified, deleted, inserted rows; signatures."
        ),
    ] = False,
) -> None:
    """Reconcile report generations with lineage rows; exit 1 below 100% capture."""
    if seals:
        audit_seals_cmd(_engine("lineage"), json=json, limit=limit)
    directory = _outbox_dir()
    reports, lineage = _engine("reports"), _engine("lineage")
    period = {"since": parse_time(since, "--since"), "until": parse_time(until, "--until")}
    deadline = time.monotonic() + wait
    while True:
        report = audit(
            reports,
            lineage,
            **period,
            waiting=_waiting_in_outbox(directory),
            open_reports=_open_reports(directory),
        )
        settled = report.capture_rate >= 1.0 and report.in_flight == 0
        if settled or time.monotonic() >= deadline:
            break
        time.sleep(AUDIT_POLL_S)
    quarantined = _quarantine(directory)
    if json:
        _dump({**report.as_dict(limit), "quarantine": [_quarantined(q) for q in quarantined]})
        raise typer.Exit(0 if report.capture_rate >= 1.0 else 1)
    finished = report.generations - report.in_flight
    console.print(
        Text.assemble(
            "capture rate ",
            (f"{report.capture_rate:.2%}", "green" if report.capture_rate >= 1.0 else "red"),
            f" ({report.with_lineage}/{finished} finished reports have lineage; "
            f"{report.in_flight} in progress, {report.abandoned} abandoned"
            + (
                f"; {report.superseded_attempts} earlier attempts of re-run reports"
                if report.superseded_attempts
                else ""
            )
            + ")",
        )
    )
    others = ", ".join(f"{k} {v}" for k, v in report.counters.items() if k != "pending")
    console.print(
        text(
            f"incomplete rows: {len(report.incomplete)}; pending hand-offs: "
            f"{report.counters.get('pending', 0)}; {others} (over {report.processes} processes)"
        )
    )
    if quarantined:
        console.print(_quarantine_line(quarantined, directory))
    if report.missing:
        shown = report.missing[:limit]
        table = Table(title=f"Reports without lineage ({len(shown)} of {len(report.missing)})")
        for name in ("report_generation_id", "status", "requested_at", "trace_id", "why"):
            table.add_column(name, overflow="fold")
        for item in shown:
            table.add_row(*(text(item[k] or "") for k in item))
        console.print(table)
        if report.counters.get("dropped") or report.counters.get("evicted"):
            console.print(
                text("lineage records were dropped or evicted; see the counters above"),
                style="yellow",
            )
    for item in report.incomplete[:limit]:
        console.print(
            Text.assemble(
                ("incomplete ", "yellow"),
                f"{item['report_generation_id']}: {', '.join(item['reasons'])}",
            )
        )
    raise typer.Exit(0 if report.capture_rate >= 1.0 else 1)


def _quarantined(item: QuarantinedItem) -> dict[str, object]:
    return {
        "path": str(item.path),
        "kind": item.kind,
        "reason": item.reason,
        "bytes": item.bytes,
        "quarantined_at": datetime.fromtimestamp(item.quarantined_at, UTC).isoformat(),
    }


# -- one report ----------------------------------------------------------------------------------


@app.command("show")
def show(
    report_id: Annotated[
        str | None, typer.Argument(help="ReportGeneration id (or a unique prefix).")
    ] = None,
    latest: Annotated[bool, typer.Option("--latest", help="The most recent report.")] = False,
    json: JsonOpt = False,
) -> None:
    """One report's lineage: status, hashes, steps, inputs summary."""
    if (report_id is None) == (not latest):
        raise CliError("give a report id or --latest (not both)")
    if report_id is None:
        try:
            report_id = latest_report_id(_engine("lineage"))
        except LineageNotFoundError as exc:
            raise CliError(str(exc), 1) from exc
    row = _row_or_exit(report_id)
    try:
        inputs = inputs_summary(row)
    except Exception as exc:  # a corrupt blob is reported, never fatal to showing the row
        inputs = {"stored": True, "error": f"{type(exc).__name__}: {exc}"}
    exported = row.get("exported")
    jaeger = _settings().jaeger_url
    trace_url = f"{jaeger.rstrip('/')}/trace/{row['trace_id']}" if jaeger and exported else None
    attempts = attempts_of(_engine("lineage"), str(row["report_generation_id"]))
    others = [a for a in attempts if a["trace_id"] != row["trace_id"]]
    if json:
        _dump(
            {
                **public_row(row),
                "inputs": inputs,
                "jaeger_url": trace_url,
                "other_attempts": [public_row(a) for a in others],
            }
        )
        return
    export = {True: "exported", False: "not exported", None: "export not recorded"}[exported]
    summary = Table(title=f"Lineage of report {row['report_generation_id']}", show_header=False)
    summary.add_column("field", style="bold")
    summary.add_column("value", overflow="fold")
    status = row["status"] if row["complete"] else f"{row['status']} (INCOMPLETE)"
    for label, value in (
        ("status", status),
        ("incomplete reasons", ", ".join(row["incomplete_reasons"]) or "-"),
        ("error", f"{row['error_type']}: {row['error_message']}" if row["error_type"] else "-"),
        ("business", row["business_id"]),
        ("template", _template(row)),
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
        ("trace", f"{row['trace_id']} ({export})"),
        ("attempt", _attempts_line(row, others)),
        ("jaeger", trace_url or "-"),
        ("started", row["started_at"]),
        ("duration", f"{row['duration_ms']} ms, {row['span_count']} spans{_recorded(row)}"),
        ("service", f"{row['service_name']} {row['service_version'] or ''}"),
        ("renderer", _renderer_line(readable_renderer(row.get("renderer")))),
    ):
        summary.add_row(label, text(value))
    console.print(summary)
    steps = Table(title="Steps")
    for name in ("step", "start +ms", "duration ms", "status"):
        steps.add_column(name)
    for step in row["steps"]:
        steps.add_row(
            text(step["name"]),
            text(step["start_offset_ms"]),
            text(step["duration_ms"]),
            text(step["status"] + (f" ({step['error_type']})" if step.get("error_type") else "")),
        )
    console.print(steps)


def _renderer_line(renderer: dict[str, Any] | None) -> str:
    if not renderer:
        return "not recorded"
    fonts = ", ".join(f"{f['family']} {str(f['sha256'])[:12]}" for f in renderer.get("fonts", ()))
    versions = ", ".join(
        f"{name} {value}" for name, value in renderer.items() if name not in ("fonts",)
    )
    return f"{versions}; fonts: {fonts or 'none'}"


def _inputs_line(inputs: dict[str, Any]) -> str:
    if not inputs.get("stored"):
        return "snapshot not stored"
    if "error" in inputs:
        return f"snapshot unreadable: {inputs['error']}"
    check = "verified" if inputs["sha256_matches"] else "DIGEST MISMATCH"
    return (
        f"{inputs['bytes']} bytes ({inputs['compressed_bytes']} stored), sha256 {check}; "
        f"business {inputs.get('business_name')!r}, {inputs.get('findings')} findings"
    )


# -- outbox and recovery -------------------------------------------------------------------------


@outbox_app.command("status")
def outbox_status(json: JsonOpt = False) -> None:
    """Outbox files under OTEL_LINEAGE_OUTBOX: records waiting, age, owner, quarantine."""
    directory = _outbox_dir()
    present = directory is not None and directory.is_dir()
    files = inspect_outboxes(directory) if directory is not None and present else []
    quarantined = _quarantine(directory)
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
        _dump({"files": listed, "quarantine": [_quarantined(q) for q in quarantined]})
        return
    if directory is None:
        console.print("the outbox is in memory (OTEL_LINEAGE_OUTBOX=memory): nothing on disk")
        return
    table = Table(title=text(f"Lineage outbox {directory}"))
    for name in ("file", "records", "bytes", "oldest (s)", "owner"):
        table.add_column(name)
    for item in listed:
        table.add_row(
            text(Path(str(item["path"])).name),
            text(item["records"]),
            text(item["bytes"]),
            text(item["oldest_age_s"] or "-"),
            Text("alive") if item["owner_alive"] else Text("dead: flush to ship", "yellow"),
        )
    console.print(table)
    console.print(f"{sum(f.records for f in files)} records waiting in {len(files)} files")
    if quarantined:
        console.print(_quarantine_line(quarantined, directory))
        held = Table(title="Quarantine")
        for name in ("file", "kind", "bytes", "since", "reason"):
            held.add_column(name, overflow="fold")
        for q in quarantined:
            when = datetime.fromtimestamp(q.quarantined_at, UTC).isoformat(timespec="seconds")
            held.add_row(text(q.path.name), text(q.kind), text(q.bytes), text(when), text(q.reason))
        console.print(held)


@outbox_app.command("flush")
def outbox_flush() -> None:
    """Ship the records of dead processes' outboxes now; mark their abandoned reports failed."""
    _recover_and_ship()


@app.command("recover")
def recover_cmd() -> None:
    """Mark reports whose process died mid-report failed; ship what dead processes left.

    The same as ``outbox flush``: adopting a dead process's outbox is what reveals its
    abandoned reports, so the two always go together.
    """
    _recover_and_ship()


def _recover_and_ship() -> None:
    directory = _outbox_dir()
    if directory is None:
        raise CliError("the outbox is in memory: there is nothing on disk to flush or recover")
    settings = _settings()
    lineage = _engine("lineage", write=True)
    reports = _engine("reports", write=True)
    with lineage.connect():  # "wrote 0" from a database that is down would be a lie
        pass
    dead = dead_attempts(directory) if directory.is_dir() else set()
    box = OutboxHandOff(directory, max_records=settings.max_pending)
    store = LineageStore(lineage)
    written = 0
    try:
        adopted = box.recover()
        while batch := box.take(settings.batch_size, 0):
            store.upsert([item.record for item in batch])
            box.ack(batch)
            written += len(batch)
        marked = mark_abandoned(reports, {*dead, *box.abandoned})
        skipped = list(box.skipped)
    finally:  # records not written stay in the outbox for the next flush
        box.close()
        lineage.dispose()
        reports.dispose()
    console.print(
        f"adopted {adopted} records from dead processes, wrote {written}; "
        f"marked {marked} abandoned reports failed"
    )
    if skipped:
        raise CliError(
            f"{len(skipped)} outbox file(s) could not be recovered and were left in place "
            f"({', '.join(sorted(skipped)[:3])}); see the log above and `otel-lineage outbox "
            "status`",
            1,
        )


# -- queries -------------------------------------------------------------------------------------


@app.command("list")
def list_cmd(
    business: Annotated[int | None, typer.Option(min=0, max=MAX_INT32, help="Business id.")] = None,
    template: Annotated[str | None, typer.Option(help="Template name.")] = None,
    version: Annotated[str | None, typer.Option(help="Template version.")] = None,
    status: Annotated[str | None, typer.Option(help="completed or failed.")] = None,
    since: Annotated[str | None, typer.Option(help="Started at/after (ISO).")] = None,
    until: Annotated[str | None, typer.Option(help="Started before (ISO).")] = None,
    incomplete: Annotated[bool, typer.Option("--incomplete", help="Incomplete only.")] = False,
    caller_trace: Annotated[
        str | None,
        typer.Option("--caller-trace", help="Trace id of the request that asked for reports."),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    page: Annotated[
        int, typer.Option(min=1, max=1_000_000, help="Page number (of --limit rows).")
    ] = 1,
    json: JsonOpt = False,
) -> None:
    """Lineage rows, newest first, filtered and paginated."""
    where = ListFilter(
        business_id=business,
        template_name=check_text(template, "--template"),
        template_version=check_text(version, "--version"),
        status=_status(status),
        since=parse_time(since, "--since"),
        until=parse_time(until, "--until"),
        incomplete_only=incomplete,
        caller_trace_id=_trace_id(caller_trace, "--caller-trace"),
    )
    rows, total = list_rows(_engine("lineage"), where, limit=limit, offset=(page - 1) * limit)
    if json:
        _dump({"total": total, "page": page, "limit": limit, "rows": rows})
        return
    table = Table(title=f"Lineage rows {len(rows)} of {total} (page {page})")
    for name in ("report", "business", "template", "status", "started", "ms", "pages", "trace"):
        table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(
            text(row["report_generation_id"]),
            text(row["business_id"]),
            text(_template(row)),
            Text.assemble(row["status"], ("" if row["complete"] else " (incomplete)", "yellow")),
            text(row["started_at"].isoformat(timespec="seconds")),
            text(f"{row['duration_ms']:.0f}" if row["duration_ms"] is not None else "-"),
            text(row["output_pages"] or "-"),
            text(row["trace_id"]),
        )
    console.print(table)


@app.command("identify")
def identify(
    pdf: Annotated[Path | None, typer.Argument(help="A PDF someone sent you.")] = None,
    report_id: Annotated[
        str | None,
        typer.Option("--id", help="The id printed in a paper copy's footer (or a prefix)."),
    ] = None,
    json: JsonOpt = False,
) -> None:
    """Which report, generation and lineage produced this PDF.

    An exact copy is found by its sha256; a modified copy (re-saved, annotated) by the report id
    it names in its metadata or footer; a printed copy by the id typed with ``--id``.
    """
    if (pdf is None) == (report_id is None):
        raise CliError("give a PDF file or --id <report id>, not both and not neither")
    if report_id is not None:
        row = _identity(_row_or_exit(report_id))
        if json:
            _dump({"id": report_id, "matches": [row]})
        else:
            console.print(text(f"report id {report_id}: {_described(row)}"))
        return
    assert pdf is not None
    digest, data = _read_pdf(pdf)
    rows = rows_by_output(_engine("lineage"), digest)
    named = None if rows else embedded_lineage(data)
    copy_of = _modified_copy_of(named) if named else None
    without = [] if rows or copy_of else generations_by_pdf(_engine("reports"), digest)
    if json:
        _dump(
            {
                "sha256": digest,
                "matches": rows,
                "modified_copy_of": copy_of,
                "embedded": named.as_dict() if named else None,
                "generations_without_lineage": without,
            }
        )
    elif rows:
        console.print(f"sha256 {digest}: produced by {len(rows)} report(s)")
        for row in rows:
            console.print(text(f"  {_described(row)}"))
    elif copy_of is not None and named is not None:
        console.print(
            text(
                f"modified copy of report {copy_of['report_generation_id']}: bytes differ from "
                f"the original (sha256 {digest}, the original's {copy_of['output_sha256']}); "
                f"the report id is what the PDF's {SOURCES[named.source]} claims, not a proof"
            )
        )
        console.print(text(f"  {_described(copy_of)}"))
        for claim in _disagreements(named, copy_of):
            console.print(text(f"  WARNING: {claim}"), style="yellow")
    for generation in without if not json else []:
        console.print(
            text(
                f"sha256 {digest}: no lineage row, but report {generation['id']} (business "
                f"{generation['business_id']}, {generation['template_name']} "
                f"{generation['template_version']}, requested "
                f"{generation['requested_at'].isoformat(timespec='seconds')}) produced this "
                "PDF (generated without lineage)"
            )
        )
    if rows or copy_of is not None:
        return
    if named is not None and not without:
        raise CliError(
            f"the PDF names report {named.report_id} (in its {SOURCES[named.source]}), but no "
            f"report of that id produced a PDF, and none produced sha256 {digest}",
            1,
        )
    if not without:
        raise CliError(f"unknown PDF: no report produced a PDF with sha256 {digest}", 1)
    raise typer.Exit(1)


def _modified_copy_of(named: EmbeddedLineage) -> dict[str, Any] | None:
    """The lineage row of the report a modified copy names (``read_named_report``)."""
    with untraced(), _engine("lineage").connect() as conn:
        row = read_named_report(conn, named.report_id)
    return None if row is None else _identity(row)


def _disagreements(named: EmbeddedLineage, row: dict[str, Any]) -> list[str]:
    """What else the file claims that the lineage row contradicts."""
    found = []
    if named.template is not None and named.template != _template(row):
        found.append(
            f"the file claims template {named.template!r}; the report used {_template(row)}"
        )
    if named.inputs_sha256 is not None and named.inputs_sha256 != row.get("inputs_sha256"):
        found.append(
            f"the file claims inputs sha256 {named.inputs_sha256}; the report's was "
            f"{row.get('inputs_sha256')}"
        )
    return found


def _identity(row: dict[str, Any]) -> dict[str, Any]:
    """The columns ``identify`` shows of a row (never the snapshot or the span tree)."""
    return {name: row.get(name) for name in (*LIST_COLUMNS, "output_uri", "inputs_sha256")}


def _described(row: dict[str, Any]) -> str:
    return (
        f"report {row['report_generation_id']}, business {row['business_id']}, "
        f"{_template(row)}, {row['started_at'].isoformat(timespec='seconds')}, inputs "
        f"{row['inputs_sha256']}, trace {row['trace_id']}"
    )


def _read_pdf(pdf: Path) -> tuple[str, bytes]:
    """The sha256 of a PDF file, read once in chunks, and its bytes when small enough to parse
    (``MAX_PARSED_BYTES``). Refuses devices, directories, huge files and non-PDFs.

    The file is opened without blocking and checked through its descriptor, so a FIFO swapped
    in after a check by name cannot hang the command.
    """
    try:
        fd = os.open(pdf, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise CliError(f"cannot read {pdf}: {exc.strerror}", 1) from exc
    with open(fd, "rb") as handle:
        return _read_open_pdf(pdf, handle)


def _read_open_pdf(pdf: Path, handle: BinaryIO) -> tuple[str, bytes]:
    info = os.fstat(handle.fileno())
    if not stat.S_ISREG(info.st_mode):
        raise CliError(f"{pdf} is not a regular file")
    if info.st_size > MAX_PDF_BYTES:
        raise CliError(f"{pdf} is larger than {MAX_PDF_BYTES >> 20} MiB: not one of our reports")
    digest = hashlib.sha256()
    kept: list[bytes] | None = [] if info.st_size <= MAX_PARSED_BYTES else None
    read = 0
    try:
        while chunk := handle.read(_CHUNK):
            if read == 0 and not chunk.startswith(b"%PDF-"):
                raise CliError(f"{pdf} is not a PDF (it does not start with %PDF-)", 1)
            read += len(chunk)
            if read > MAX_PDF_BYTES:  # grew while we read it
                raise CliError(f"{pdf} is larger than {MAX_PDF_BYTES >> 20} MiB")
            digest.update(chunk)
            if kept is not None:
                kept.append(chunk)
                if read > MAX_PARSED_BYTES:
                    kept = None
    except OSError as exc:
        raise CliError(f"cannot read {pdf}: {exc.strerror}", 1) from exc
    if read == 0:
        raise CliError(f"{pdf} is empty: not a PDF", 1)
    return digest.hexdigest(), b"".join(kept or ())


@app.command("inputs")
def inputs_cmd(
    report_id: ReportIdArg,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to a file.")] = None,
    force: ForceOpt = False,
) -> None:
    """The input snapshot of a report, byte-exact (checked against its recorded sha256)."""
    row = _row_or_exit(report_id)
    try:
        data = stored_snapshot(row)
    except VerifyError as exc:
        raise CliError(str(exc), 1) from exc
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    write_output(output, data, force=force)
    err.print(text(f"wrote {len(data)} bytes (sha256 {row['inputs_sha256']}) to {output}"))


@app.command("stats")
def stats(
    since: SinceOpt = None,
    until: UntilOpt = None,
    by_renderer: Annotated[
        bool, typer.Option("--by-renderer", help="Split by the WeasyPrint version that rendered.")
    ] = False,
    json: JsonOpt = False,
) -> None:
    """Per template version: reports, failure rate, p50/p95 of each step."""
    groups = step_stats(
        _engine("lineage"),
        since=parse_time(since, "--since"),
        until=parse_time(until, "--until"),
        by_renderer=by_renderer,
    )
    if json:
        _dump(groups)
        return
    table = Table(title="Reports per template version")
    for name in ("template", "reports", "failed", "failure rate", "step", "p50 ms", "p95 ms"):
        table.add_column(name)
    for group in groups:
        label = _template(group) + (f" ({group['renderer']})" if by_renderer else "")
        first = True
        for step, figures in group["steps"].items() or [("-", {"p50_ms": "-", "p95_ms": "-"})]:
            table.add_row(
                text(label if first else ""),
                text(group["count"] if first else ""),
                text(group["failed"] if first else ""),
                text(f"{group['failure_rate']:.1%}" if first else ""),
                text(step),
                text(figures["p50_ms"]),
                text(figures["p95_ms"]),
            )
            first = False
    console.print(table)


@app.command("verify")
def verify_cmd(report_id: ReportIdArg, json: JsonOpt = False) -> None:
    """Re-render from the stored snapshot and template version; exit 1 on any difference."""
    row = _row_or_exit(report_id)
    try:
        result = verify(row)
    except VerifyError as exc:
        raise CliError(f"cannot verify: {exc}", 1) from exc
    if json:
        _dump(result.as_dict())
    else:
        for check in result.checks:
            if check.ok:
                console.print(Text.assemble(("match", "green"), f"    {check.what} {check.actual}"))
            else:
                console.print(
                    Text.assemble(
                        ("DIFFERS", "red"),
                        f"  {check.what}: recorded {check.recorded}, re-rendered {check.actual}",
                    )
                )
        if result.recorded_renderer is None:
            console.print(Text.assemble(("-", "yellow"), "        renderer not recorded"))
        elif result.renderer_differences:
            differences = "; ".join(result.renderer_differences)
            console.print(Text.assemble(("DIFFERS", "red"), f"  renderer: {differences}"))
        else:
            console.print(Text.assemble(("match", "green"), "    renderer (versions and fonts)"))
        console.print(
            Text("reproduced byte for byte", "green") if result.ok else Text(result.verdict, "red")
        )
    raise typer.Exit(0 if result.ok else 1)


@app.command("trace")
def trace_cmd(
    report_id: ReportIdArg,
    format: Annotated[str, typer.Option("--format", help="jaeger or otlp.")] = "jaeger",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to a file.")] = None,
    force: ForceOpt = False,
) -> None:
    """The stored copy of the report's trace, as Jaeger JSON or OTLP/JSON."""
    format = format.strip().lower()
    if format not in ("jaeger", "otlp"):
        raise CliError(f"unknown format {check_text(format, '--format', 20)!r}: use jaeger or otlp")
    row = _row_or_exit(report_id)
    try:
        tree = exported_tree(row)
    except (TraceUnavailableError, CorruptTraceError) as exc:
        raise CliError(str(exc), 1) from exc
    document = to_jaeger(tree) if format == "jaeger" else to_otlp_json(tree)
    data = orjson.dumps(document, option=orjson.OPT_INDENT_2)
    if output is None:
        typer.echo(data.decode())
        return
    write_output(output, data, force=force)
    err.print(text(f"wrote the {format} trace of report {row['report_generation_id']} to {output}"))


@app.command("openlineage")
def openlineage_cmd(
    report_id: Annotated[
        str | None, typer.Argument(help="ReportGeneration id (or a unique prefix).")
    ] = None,
    since: Annotated[str | None, typer.Option(help="Every report started at/after (ISO).")] = None,
    emit: Annotated[str | None, typer.Option(help="POST to this Marquez-compatible URL.")] = None,
) -> None:
    """OpenLineage RunEvents (START, COMPLETE or FAIL) for one report or a time range."""
    if (report_id is None) == (since is None):
        raise CliError("give a report id or --since (not both)")
    if emit is not None:
        try:
            check_endpoint(check_text(emit, "--emit", 2000) or "")
        except ValueError as exc:
            raise CliError(f"--emit: {exc}") from exc
    engine = _engine("lineage")
    if report_id is not None:
        rows = [_row_or_exit(report_id)]
    else:
        where = ListFilter(since=parse_time(since, "--since"))
        listed, _ = list_rows(engine, where, limit=100_000)
        rows = [get_row(engine, str(r["report_generation_id"])) for r in reversed(listed)]
    reports_url = _settings().reports_database_url
    events = [event for row in rows for event in run_events(row, reports_url)]
    if emit is None:
        for event in events:
            typer.echo(orjson.dumps(event).decode())
        return
    try:
        sent = emit_events(events, emit)
    except OSError as exc:
        raise CliError(f"emitting to {redacted(emit)} failed: {exc}", 1) from exc
    console.print(text(f"emitted {sent} events for {len(rows)} reports to {redacted(emit)}"))


@app.command("prune")
def prune_cmd(
    snapshots_older_than: Annotated[
        float,
        typer.Option("--snapshots-older-than", min=0, max=MAX_AGE_DAYS, help="Age in days."),
    ],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only report.")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Drop snapshots and span trees of old rows; keep hashes, steps and the row."""
    engine = _engine("lineage", write=True)
    try:
        planned = prune(engine, older_than_days=snapshots_older_than, dry_run=True)
        if not dry_run and planned.rows and not yes:
            what = (
                f"the input snapshots and span trees of {planned.rows} rows started before "
                f"{planned.cutoff.isoformat(timespec='seconds')} ({planned.bytes_freed} bytes)"
            )
            if not sys.stdin.isatty():
                raise CliError(f"prune would drop {what}: confirm with --yes")
            if not typer.confirm(f"Drop {what}? `inputs`, `verify` and `trace` stop working"):
                raise CliError("nothing pruned", 1)
        result = planned if dry_run else prune(engine, older_than_days=snapshots_older_than)
    except ValueError as exc:  # NaN (which no range refuses)
        raise CliError(f"--snapshots-older-than: {exc}") from exc
    verb = "would free" if dry_run else "freed"
    console.print(
        f"{result.rows} rows started before {result.cutoff.isoformat(timespec='seconds')}: "
        f"{verb} {result.bytes_freed} bytes of snapshots and span trees"
    )


def main() -> None:  # pragma: no cover
    app()
