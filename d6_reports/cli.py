"""``d6-reports``: the report service's command line (Typer + Rich).

Configuration comes from the environment (``D6_DATABASE_URL``, ``D6_REPORTS_DIR``). The
generating commands bring OpenTelemetry up themselves (``d6_reports.bootstrap``), so lineage is
recorded however they are started. Every failure is one ``error: ...`` line on stderr (exit
status 2 for bad usage or configuration), never a traceback; displayed values are never parsed
as Rich markup.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Iterator, Sequence
from importlib.metadata import version as package_version
from typing import Annotated, Any

import orjson
import sqlalchemy
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from typer.core import TyperGroup

from d6_reports import db
from d6_reports.batch import BatchItem, WorkerPool, can_fork_workers, run_batch
from d6_reports.bootstrap import REPORT_COMMAND_UNUSED, TelemetryStartError, start_telemetry
from d6_reports.config import Settings
from d6_reports.generator import DEFAULT_TEMPLATE, GenerationOptions
from d6_reports.models import Business, ReportGeneration
from d6_reports.seed import seed_demo
from d6_reports.service import ReportService
from d6_reports.templates import LOCK_FILE, TemplateRegistry

USAGE = 2
UPGRADE_HINT = "run `d6-reports db upgrade`"
#: Business ids are 32-bit integers in the database.
MAX_INT32 = 2**31 - 1


class CliError(Exception):
    """An expected failure: ``message`` is the one line shown after ``error:``."""

    def __init__(self, message: str, exit_code: int = USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class _OneLineErrors(TyperGroup):
    """Runs the command; whatever it raised becomes one ``error:`` line and an exit status."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.Exit as exc:
            code = exc.exit_code
        except typer.Abort:
            _fail("aborted", 1)
        except CliError as exc:
            _fail(exc.message, exc.exit_code)
        except typer.TyperException as exc:  # usage errors: bad option values, no command...
            if type(exc).__name__ == "NoArgsIsHelpError":
                sys.stderr.write(exc.format_message() + "\n")
                raise SystemExit(USAGE) from None
            _fail(exc.format_message(), exc.exit_code)
        except Exception as exc:
            _fail(*_describe(exc))
        code = code if isinstance(code, int) else 0
        if standalone_mode:
            raise SystemExit(code)
        return code


def _fail(message: str, exit_code: int = USAGE) -> None:
    sys.stderr.write(f"error: {' '.join(message.split())}\n")
    sys.stderr.flush()
    raise SystemExit(exit_code)


def _describe(exc: Exception) -> tuple[str, int]:
    """One line for an unexpected failure: the statement and its values are never shown."""
    if isinstance(exc, ArgumentError):
        return f"D6_DATABASE_URL is not a database URL: {exc}", USAGE
    if isinstance(exc, SQLAlchemyError):
        orig = getattr(exc, "orig", None) or exc
        message = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
        if getattr(orig, "sqlstate", None) in ("42P01", "42703") or "no such" in message:
            return f"the report database is not migrated ({message}); {UPGRADE_HINT}", USAGE
        return f"the report database failed: {type(orig).__name__}: {message}", 1
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or type(exc).__name__}{where}", 1
    first = (str(exc).splitlines() or [""])[0]
    return f"unexpected {type(exc).__name__}: {first}", 1


app = typer.Typer(
    cls=_OneLineErrors,
    help="Generate PDF audit reports.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema (Alembic).", no_args_is_help=True)
templates_app = typer.Typer(help="Report templates and their lock file.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(templates_app, name="templates")
console = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, soft_wrap=True, highlight=False)

TemplateOpt = Annotated[str, typer.Option("--template", help="Template name.")]
VersionOpt = Annotated[
    str | None, typer.Option("--version", help="Template version (default: latest released).")
]
WorkersOpt = Annotated[int, typer.Option(min=1, max=64, help="Worker processes.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"d6-reports {package_version('d6-reports')}")
        raise typer.Exit(0)


@app.callback()
def _main(
    _show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Generate PDF audit reports."""


def _start_telemetry() -> None:
    """Bring up OpenTelemetry (and with it lineage) before anything is generated."""
    try:
        start_telemetry(unused_instrumentations=REPORT_COMMAND_UNUSED)
    except TelemetryStartError as exc:
        raise CliError(str(exc)) from exc


def _options(template: str, version: str | None) -> GenerationOptions:
    for what, value in (("--template", template), ("--version", version)):
        if value is None:
            continue
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise CliError(f"{what} is not valid UTF-8") from None
        if len(value) > 100 or not value.isprintable():
            raise CliError(f"{what} must be at most 100 printable characters")
    return GenerationOptions(template_name=template, template_version=version)


def _safe(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _database_urls() -> list[str]:
    """The report database, and the lineage database when ``OTEL_LINEAGE_DATABASE_URL`` names
    another one (read here: this package never imports the lineage plugin)."""
    urls = [Settings.from_env().database_url]
    lineage = os.environ.get("OTEL_LINEAGE_DATABASE_URL")
    if lineage and make_url(lineage) != make_url(urls[0]):
        urls.append(lineage)
    return urls


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Create or migrate the tables of both packages (and the lineage database, when apart)."""
    for url in _database_urls():
        db.upgrade(url, revision)
        console.print(Text(f"database at {_safe(url)} is at {revision}"))


def _downgrade_plan(url: str, revision: str) -> list[tuple[str, str]]:
    """The migrations a downgrade to ``revision`` would revert, newest first, with what each
    created (its docstring's first line)."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    script = ScriptDirectory.from_config(db.alembic_config(url))
    try:
        target = script.get_revision(revision)
    except CommandError:
        raise CliError(f"unknown revision {revision[:100]!r}") from None
    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_heads()
    finally:
        engine.dispose()
    lower = "base" if target is None else target.revision
    return (
        [
            (step.revision, step.doc)
            for step in script.iterate_revisions(current, lower)
            if step.revision != lower
        ]
        if current
        else []
    )


@db_app.command("downgrade")
def db_downgrade(
    revision: Annotated[str, typer.Argument(help="Target revision (e.g. 0002_report_lineage).")],
    yes: Annotated[bool, typer.Option("--yes", help="I have a backup: drop the data.")] = False,
) -> None:
    """Revert migrations down to ``revision``: drops what they created (back up first)."""
    url = Settings.from_env().database_url
    reverted = _downgrade_plan(url, revision)
    if not reverted:
        console.print(Text(f"database at {_safe(url)} is already at or below {revision}"))
        return
    dropped = "; ".join(f"{rev} ({doc})" for rev, doc in reverted)
    if not yes:
        raise CliError(
            f"downgrading to {revision} drops what these migrations created, data included: "
            f"{dropped}; back up the database, then repeat with --yes"
        )
    db.downgrade(url, revision)
    console.print(Text(f"database at {_safe(url)} is at {revision}; reverted {dropped}"))


@app.command("seed-demo")
def seed_demo_cmd(count: Annotated[int, typer.Option(min=0, max=100_000)] = 12) -> None:
    """Insert deterministic demo businesses and assessments (no-op when data exists)."""
    service = ReportService.from_settings()
    try:
        with service.sessions() as session:
            ids = seed_demo(session, count=count)
    finally:
        service.close()
    console.print(f"{len(ids)} businesses in the database")


@app.command()
def generate(
    business_id: Annotated[
        int, typer.Option("--business-id", min=1, max=MAX_INT32, help="Business to report on.")
    ],
    template: TemplateOpt = DEFAULT_TEMPLATE,
    version: VersionOpt = None,
    json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Generate one report; exit status 1 when it failed."""
    options = _options(template, version)
    _start_telemetry()
    service = ReportService.from_settings()
    try:
        _require_schema(service)
        result = service.generator.generate_report_sync(business_id, options)
    finally:
        service.close()
    if json:
        shown = {k: v for k, v in dataclasses.asdict(result).items() if k != "error_message"}
        typer.echo(orjson.dumps(shown, default=str, option=orjson.OPT_INDENT_2).decode())
    elif result.success:
        console.print(
            Text.assemble(
                ("completed", "green"),
                f" {result.generation_id}: {result.pages} pages, {result.pdf_path}",
            )
        )
        for warning in result.warnings:
            console.print(Text.assemble(("warning: ", "yellow"), str(warning)))
    else:
        err.print(
            Text.assemble(
                ("failed", "red"),
                f" {result.generation_id}: {result.error_description} (details: "
                f"otel-lineage show {result.generation_id})",
            )
        )
    raise typer.Exit(0 if result.success else 1)


@app.command("generate-all")
def generate_all(
    template: TemplateOpt = DEFAULT_TEMPLATE,
    version: VersionOpt = None,
    workers: WorkersOpt = 1,
    json: Annotated[bool, typer.Option("--json", help="Print every result as JSON.")] = False,
) -> None:
    """Generate a report for every business; exit status 1 when any failed (the rest go on)."""
    options = _options(template, version)
    with _telemetry_and_pool(workers) as pool:
        started = time.perf_counter()  # the reports' time, as demo's: not the start-up's
        items = _generate_all(options, pool, progress=not json)
    elapsed = time.perf_counter() - started
    if json:
        ordered = sorted(items, key=lambda i: i.business_id)
        document = {"reports": len(items), "failed": sum(not i.success for i in items)}
        typer.echo(
            orjson.dumps({**document, "results": ordered}, option=orjson.OPT_INDENT_2).decode()
        )
    else:
        _summary(items, "Reports", elapsed)
    raise typer.Exit(0 if all(i.success for i in items) else 1)


@app.command()
def demo(workers: WorkersOpt = 1) -> None:
    """Upgrade the database, seed demo data, generate every report and summarise."""
    with _telemetry_and_pool(workers) as pool:
        for url in _database_urls():
            db.upgrade(url)
        service = ReportService.from_settings()
        try:
            with service.sessions() as session:
                seed_demo(session)
        finally:
            service.close()
        started = time.perf_counter()
        items = _generate_all(GenerationOptions(), pool)
    _summary(items, "Demo reports", time.perf_counter() - started)
    console.print(
        Text(
            f"PDFs under {service.settings.reports_dir}, "
            f"rows in {_safe(service.settings.database_url)}"
        )
    )
    if not all(i.success for i in items):
        raise typer.Exit(1)


def _summary(items: list[BatchItem], title: str, elapsed_s: float) -> None:
    """The table of a batch (printed whether or not stdout is a terminal) and its totals."""
    table = Table(title=title)
    for column in ("business", "status", "pages", "ms", "file or error"):
        table.add_column(column, overflow="fold")
    for item in sorted(items, key=lambda i: i.business_id):
        table.add_row(
            Text(str(item.business_id)),
            Text("completed", "green") if item.success else Text(str(item.error_type), "red"),
            Text(str(item.pages or "")),
            Text(f"{item.duration_ms:.0f}"),
            Text(_relative(item.pdf_path) if item.pdf_path else (item.error_description or "")),
        )
    console.print(table)
    failed = sum(not i.success for i in items)
    pages = sum(i.pages or 0 for i in items)
    console.print(
        Text(
            f"{len(items) - failed}/{len(items)} reports, {failed} failed, {pages} pages "
            f"in {elapsed_s:.1f} s"
        )
    )


@templates_app.command("list")
def templates_list() -> None:
    """Installed template versions, their content hashes and whether they are released."""
    registry = TemplateRegistry()
    table = Table()
    for column in ("template", "version", "released", "sha256"):
        table.add_column(column)
    for name in registry.names():
        for version in registry.versions(name):
            resolved = registry.resolve(name, version)
            table.add_row(name, version, "yes" if resolved.released else "no", resolved.sha256)
    console.print(table)


@templates_app.command("lock")
def templates_lock(
    check: Annotated[bool, typer.Option(help="Only check; exit 1 on a difference.")] = False,
) -> None:
    """Pin every installed version's content hash (release), or check the pins."""
    registry = TemplateRegistry()
    computed = registry.compute_lock()
    path = registry.root / LOCK_FILE
    if check:
        changed = [
            f"{name} {version}"
            for name, versions in computed.items()
            for version, digest in versions.items()
            if registry.locked_sha256(name, version) not in (None, digest)
        ]
        for entry in changed:
            err.print(f"[red]released template changed without a new version:[/] {entry}")
        raise typer.Exit(1 if changed else 0)
    path.write_bytes(
        orjson.dumps(computed, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
    )
    console.print(f"wrote {path}")


def _require_schema(service: ReportService) -> None:
    """Before a report: a database with no tables is one line, not a failed report."""
    if not sqlalchemy.inspect(service.engine).has_table(ReportGeneration.__tablename__):
        raise CliError(f"the report database has no report tables; {UPGRADE_HINT}")


@contextlib.contextmanager
def _telemetry_and_pool(workers: int) -> Iterator[WorkerPool | None]:
    """Telemetry started and checked, and the pool of ``--workers`` processes (none for one).
    The pool comes first when its processes can be forked from this one, before telemetry
    has a thread for a fork to copy (``d6_reports.batch``); they bring nothing up before the
    check has passed. A pool that would be spawned comes after the check: a spawned process
    under ``opentelemetry-instrument`` starts the SDK as it starts, and would repeat a bad
    setting's warnings."""
    if workers > 1 and can_fork_workers():
        with WorkerPool(workers) as pool:
            _start_telemetry()
            yield pool
        return
    _start_telemetry()
    with WorkerPool(workers) if workers > 1 else contextlib.nullcontext() as pool:
        yield pool


def _generate_all(
    options: GenerationOptions, pool: WorkerPool | None, *, progress: bool = True
) -> list[BatchItem]:
    service = ReportService.from_settings()
    with service.sessions() as session:
        ids = list(session.scalars(select(Business.id).order_by(Business.id)))
    items: list[BatchItem] = []
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not progress,
    ) as bar:
        task = bar.add_task("generating", total=len(ids))
        for item in run_batch(ids, options, pool=pool, service=service):
            items.append(item)
            bar.advance(task)
    service.close()
    return items


def _relative(path: str) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:
        return path


# The task queue's commands: enqueue, enqueue-all, worker, status.
from d6_reports.queue.commands import register as _register_queue_commands  # noqa: E402

_register_queue_commands(app)


def main() -> None:  # pragma: no cover - console script shim
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
