"""``d6-reports``: the report service's command line (Typer + Rich).

Configuration comes from the environment (``D6_DATABASE_URL``, ``D6_REPORTS_DIR``); run under
``opentelemetry-instrument`` (as ``make demo`` does) to trace, and with the lineage plugin
installed, to record lineage, with no code change.
"""

from __future__ import annotations

import os
import time
from typing import Annotated

import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import select

from d6_reports import db
from d6_reports.batch import BatchItem, run_batch
from d6_reports.generator import DEFAULT_TEMPLATE, GenerationOptions
from d6_reports.models import Business
from d6_reports.seed import seed_demo
from d6_reports.service import ReportService
from d6_reports.templates import LOCK_FILE, TemplateRegistry

app = typer.Typer(help="Generate PDF audit reports.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema (Alembic).", no_args_is_help=True)
templates_app = typer.Typer(help="Report templates and their lock file.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(templates_app, name="templates")
console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

TemplateOpt = Annotated[str, typer.Option("--template", help="Template name.")]
VersionOpt = Annotated[
    str | None, typer.Option("--version", help="Template version (default: latest released).")
]


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Create or migrate the tables (both the service's and the lineage plugin's)."""
    service = ReportService.from_settings()
    db.upgrade(service.settings.database_url, revision)
    console.print(f"database at [bold]{_safe_url(service)}[/] is at {revision}")


@db_app.command("downgrade")
def db_downgrade(revision: str = "base") -> None:
    """Revert migrations down to ``revision`` (default: drop everything)."""
    service = ReportService.from_settings()
    db.downgrade(service.settings.database_url, revision)
    console.print(f"database at [bold]{_safe_url(service)}[/] is at {revision}")


@app.command("seed-demo")
def seed_demo_cmd(count: int = 12) -> None:
    """Insert deterministic demo businesses and assessments (no-op when data exists)."""
    service = ReportService.from_settings()
    with service.sessions() as session:
        ids = seed_demo(session, count=count)
    console.print(f"{len(ids)} businesses in the database")


@app.command()
def generate(
    business_id: Annotated[int, typer.Option("--business-id", help="Business to report on.")],
    template: TemplateOpt = DEFAULT_TEMPLATE,
    version: VersionOpt = None,
    json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Generate one report; exit status 1 when it failed."""
    service = ReportService.from_settings()
    result = service.generator.generate_report_sync(
        business_id, GenerationOptions(template_name=template, template_version=version)
    )
    if json:
        typer.echo(orjson.dumps(result, default=str, option=orjson.OPT_INDENT_2).decode())
    elif result.success:
        console.print(
            f"[green]completed[/] {result.generation_id}: {result.pages} pages, {result.pdf_path}"
        )
        for warning in result.warnings:
            console.print(f"[yellow]warning:[/] {warning}")
    else:
        err.print(
            f"[red]failed[/] {result.generation_id}: {result.error_type}: {result.error_message}"
        )
    raise typer.Exit(0 if result.success else 1)


@app.command("generate-all")
def generate_all(
    template: TemplateOpt = DEFAULT_TEMPLATE,
    version: VersionOpt = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
) -> None:
    """Generate a report for every business; exit status 1 when any failed."""
    items = _generate_all(GenerationOptions(template, version), workers)
    failed = [i for i in items if not i.success]
    for item in failed:
        err.print(
            f"[red]failed[/] business {item.business_id}: {item.error_type}: {item.error_message}"
        )
    raise typer.Exit(1 if failed else 0)


@app.command()
def demo(
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
) -> None:
    """Upgrade the database, seed demo data, generate every report and summarise."""
    service = ReportService.from_settings()
    db.upgrade(service.settings.database_url)
    with service.sessions() as session:
        seed_demo(session)
    started = time.perf_counter()
    items = _generate_all(GenerationOptions(), workers)
    elapsed = time.perf_counter() - started
    table = Table(title="Demo reports")
    for column in ("business", "status", "pages", "ms", "file"):
        table.add_column(column)
    for item in sorted(items, key=lambda i: i.business_id):
        table.add_row(
            str(item.business_id),
            "[green]completed[/]" if item.success else f"[red]{item.error_type}[/]",
            str(item.pages or ""),
            f"{item.duration_ms:.0f}",
            _relative(item.pdf_path) if item.pdf_path else (item.error_message or ""),
        )
    console.print(table)
    pages = sum(i.pages or 0 for i in items)
    console.print(
        f"{sum(i.success for i in items)}/{len(items)} reports, {pages} pages in "
        f"{elapsed:.1f} s; PDFs under [bold]{service.settings.reports_dir}[/], "
        f"rows in [bold]{_safe_url(service)}[/]"
    )
    if not all(i.success for i in items):
        raise typer.Exit(1)


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


def _generate_all(options: GenerationOptions, workers: int) -> list[BatchItem]:
    service = ReportService.from_settings()
    with service.sessions() as session:
        ids = list(session.scalars(select(Business.id).order_by(Business.id)))
    items: list[BatchItem] = []
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=not console.is_terminal,
    ) as progress:
        task = progress.add_task("generating", total=len(ids))
        for item in run_batch(
            ids, options, workers=workers, service=service if workers == 1 else None
        ):
            items.append(item)
            progress.advance(task)
    service.close()
    return items


def _safe_url(service: ReportService) -> str:
    return service.engine.url.render_as_string(hide_password=True)


def _relative(path: str) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:
        return path


def main() -> None:  # pragma: no cover - console script shim
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
