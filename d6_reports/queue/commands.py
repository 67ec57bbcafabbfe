"""The queue commands of ``d6-reports``: ``enqueue``, ``enqueue-all``, ``worker``, ``status``.

Registered on the main application by ``d6_reports.cli`` (``register(app)``); this module never
imports the CLI module, so either can be imported first. Like every command of ``d6-reports``,
each failure is one ``error: ...`` line on stderr and an exit status (2: bad usage or settings,
1: the answer is no: broker down, no such generation), never a traceback; database errors
are described by the application's own handler (e.g. "run `d6-reports db upgrade`").

``enqueue`` checks what a worker would refuse before anything is queued: the template exists,
the business exists. Its plain output is the generation id alone, for scripts
(``id=$(d6-reports enqueue --business-id 3)``).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, NoReturn

import orjson
import sqlalchemy
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text
from sqlalchemy import Engine, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from d6_reports.config import Settings
from d6_reports.db import make_engine, make_session_factory
from d6_reports.errors import ReportError
from d6_reports.generator import (
    DEFAULT_TEMPLATE,
    MAX_BUSINESS_ID,
    RETRYABLE_FAILURES,
    GenerationOptions,
)
from d6_reports.models import Business, ReportGeneration
from d6_reports.queue.app import ReportQueueApp, create_app
from d6_reports.queue.config import QueueConfigError
from d6_reports.queue.enqueue import QueueUnavailableError, enqueue_many
from d6_reports.queue.status import GenerationLookupError, GenerationState, generation_state
from d6_reports.templates import TemplateRegistry

USAGE = 2
UPGRADE_HINT = "run `d6-reports db upgrade`"
console = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, soft_wrap=True, highlight=False)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
TemplateOpt = Annotated[str, typer.Option("--template", help="Template name.")]
VersionOpt = Annotated[
    str | None, typer.Option("--version", help="Template version (default: latest released).")
]


def register(app: typer.Typer) -> None:
    """Add the queue commands to the ``d6-reports`` application."""
    app.command("enqueue")(enqueue)
    app.command("enqueue-all")(enqueue_all)
    app.command("worker")(worker)
    app.command("status")(status)


def enqueue(
    business_id: Annotated[
        int,
        typer.Option("--business-id", min=1, max=MAX_BUSINESS_ID, help="Business to report on."),
    ],
    template: TemplateOpt = DEFAULT_TEMPLATE,
    version: VersionOpt = None,
    json: JsonOpt = False,
) -> None:
    """Queue one report for a worker; prints its generation id at once."""
    options = _options(template, version)
    queue_app = _queue_app()
    with _report_database() as (_engine, sessions):
        with sessions() as session:
            if session.get(Business, business_id) is None:
                _fail(f"business {business_id} does not exist in the report database", 1)
        ids = _enqueue([business_id], options, sessions, queue_app)
    if json:
        document = {
            "generation_id": ids[0],
            "business_id": business_id,
            **_request(options, queue_app),
        }
        typer.echo(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())
    else:
        typer.echo(ids[0])


def enqueue_all(
    template: TemplateOpt = DEFAULT_TEMPLATE,
    version: VersionOpt = None,
    json: JsonOpt = False,
) -> None:
    """Queue a report for every business (progress on stderr); prints how many."""
    options = _options(template, version)
    queue_app = _queue_app()
    with _report_database() as (_engine, sessions):
        with sessions() as session:
            business_ids = list(session.scalars(select(Business.id).order_by(Business.id)))
        with Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            transient=True,
            disable=json or not err.is_terminal,
        ) as bar:
            task = bar.add_task("enqueueing", total=len(business_ids))
            ids = _enqueue(
                business_ids, options, sessions, queue_app, lambda _id: bar.advance(task)
            )
    if json:
        document = {
            "queued": len(ids),
            **_request(options, queue_app),
            "reports": [
                {"business_id": b, "generation_id": g}
                for b, g in zip(business_ids, ids, strict=True)
            ],
        }
        typer.echo(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())
    else:
        console.print(
            Text(
                f"queued {len(ids)} reports on {queue_app.queue_settings.queue}"
                + (f"; follow the first with `d6-reports status {ids[0]}`" if ids else "")
                + " (--json lists every id)"
            )
        )


def worker(
    concurrency: Annotated[
        int | None,
        typer.Option(
            "--concurrency", "-c", min=1, max=64, help="Pool processes (default: CPU count)."
        ),
    ] = None,
    max_tasks_per_child: Annotated[
        int | None,
        typer.Option(
            "--max-tasks-per-child",
            min=1,
            max=1_000_000,
            help="Replace a pool process after this many reports.",
        ),
    ] = None,
    hostname: Annotated[
        str | None,
        typer.Option(
            "--hostname", "-n", help="Node name, unique per worker (name@host; %h: this host)."
        ),
    ] = None,
    loglevel: Annotated[
        str, typer.Option("--loglevel", "-l", help="DEBUG, INFO, WARNING or ERROR.")
    ] = "INFO",
    queues: Annotated[
        str | None,
        typer.Option("--queues", "-Q", help="Comma-separated queues (default: D6_QUEUE)."),
    ] = None,
) -> None:
    """Run a Celery worker: each pool process starts OpenTelemetry and lineage itself."""
    from d6_reports.queue.worker import run_worker

    names = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
    if queues is not None and not names:
        _fail("--queues names no queue")
    raise typer.Exit(
        run_worker(
            concurrency=concurrency or min(os.cpu_count() or 1, 64),
            max_tasks_per_child=max_tasks_per_child,
            node_name=hostname,
            loglevel=loglevel.upper(),
            queues=names,
        )
    )


def status(
    generation_id: Annotated[
        str, typer.Argument(help="Generation id (or a unique prefix), as enqueue printed it.")
    ],
    json: JsonOpt = False,
    wait: Annotated[
        float,
        typer.Option(
            "--wait",
            min=0,
            max=86_400,
            help="Seconds to wait for the report to finish with its lineage row (exit 0 "
            "completed, 1 failed or still running at the deadline).",
        ),
    ] = 0,
) -> None:
    """Where a queued report is: status, attempts, PDF or error, trace, lineage."""
    deadline = time.monotonic() + wait
    with _report_database() as (engine, _sessions):
        lineage = _lineage_engine()
        try:
            state = generation_state(engine, generation_id, lineage=lineage)
            while wait and not _settled(state) and time.monotonic() < deadline:
                time.sleep(WAIT_POLL_S)
                state = generation_state(engine, state.generation_id, lineage=lineage)
        except ValueError as exc:
            _fail(str(exc))
        except GenerationLookupError as exc:
            _fail(str(exc), 1)
        finally:
            if lineage is not None:
                lineage.dispose()
    if json:
        typer.echo(orjson.dumps(state.as_dict(), default=str, option=orjson.OPT_INDENT_2).decode())
    else:
        _print_state(state)
    if wait:
        if not _settled(state):
            _fail(f"still {state.status} after {wait:g} s", 1)
        if state.status != "completed":
            raise typer.Exit(1)


#: Seconds between two looks at the database while ``status --wait`` waits.
WAIT_POLL_S = 0.5


def _settled(state: GenerationState) -> bool:
    """Finished, and its lineage row is there (or cannot be read: waiting will not help)."""
    if state.status in ("pending", "generating"):
        return False
    if state.status == "failed" and state.error_type in RETRYABLE_FAILURES:
        return False  # the database was down or a worker died: the queue tries it again
    return state.lineage_error is not None or bool(state.lineage_present)


# -- helpers -------------------------------------------------------------------------------------


def _fail(message: str, exit_code: int = USAGE) -> NoReturn:
    sys.stderr.write(f"error: {' '.join(message.split())}\n")
    sys.stderr.flush()
    raise typer.Exit(exit_code)


def _options(template: str, version: str | None) -> GenerationOptions:
    """The template, checked as the worker would: a valid name, an installed version."""
    for what, value in (("--template", template), ("--version", version)):
        if value is None:
            continue
        if not value.strip():
            _fail(f"{what} is empty")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            _fail(f"{what} is not valid UTF-8")
        if len(value) > 100 or not value.isprintable():
            _fail(f"{what} must be at most 100 printable characters")
    try:
        TemplateRegistry().resolve(template, version)
    except (ReportError, ValueError):
        shown = f"{template} {version}" if version else template
        _fail(f"no released template {shown!r} is installed (see `d6-reports templates list`)")
    return GenerationOptions(template_name=template, template_version=version)


def _queue_app() -> ReportQueueApp:
    try:
        return create_app()
    except QueueConfigError as exc:
        _fail(str(exc))


@contextmanager
def _report_database() -> Iterator[tuple[Engine, sessionmaker[Session]]]:
    """The report database, migrated (else one line saying to run ``db upgrade``)."""
    engine = make_engine(Settings.from_env().database_url)
    try:
        _require_schema(engine)
        yield engine, make_session_factory(engine)
    finally:
        engine.dispose()


def _lineage_engine() -> Engine | None:
    """The lineage database when ``OTEL_LINEAGE_DATABASE_URL`` names another one."""
    url = os.environ.get("OTEL_LINEAGE_DATABASE_URL", "").strip()
    if not url:
        return None
    try:
        if make_url(url) == make_url(Settings.from_env().database_url):
            return None
        return make_engine(url)
    except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError, ValueError):
        _fail(
            "OTEL_LINEAGE_DATABASE_URL is not a database URL (expected sqlite:///... or "
            "postgresql+psycopg://...)"
        )


def _require_schema(engine: Engine) -> None:
    if not sqlalchemy.inspect(engine).has_table(ReportGeneration.__tablename__):
        _fail(f"the report database has no report tables; {UPGRADE_HINT}")


def _enqueue(
    business_ids: list[int],
    options: GenerationOptions,
    sessions: sessionmaker[Session],
    queue_app: ReportQueueApp,
    on_enqueued: Callable[[str], None] | None = None,
) -> list[str]:
    try:
        return enqueue_many(
            business_ids, options, sessions=sessions, app=queue_app, on_enqueued=on_enqueued
        )
    except QueueUnavailableError as exc:
        _fail(str(exc), 1)


def _request(options: GenerationOptions, queue_app: ReportQueueApp) -> dict[str, object]:
    return {
        "template": options.template_name,
        "version": options.template_version,
        "queue": queue_app.queue_settings.queue,
    }


def _print_state(state: GenerationState) -> None:
    version = state.template_version or "latest"
    console.print(
        Text(
            f"generation {state.generation_id}: business {state.business_id}, "
            f"{state.template_name} {version}"
        )
    )
    console.print(Text(f"status:   {state.status} (attempts: {state.attempts})"))
    if state.pdf_path:
        console.print(
            Text(f"pdf:      {state.pdf_path} ({state.pdf_pages} pages, {state.pdf_bytes} bytes)")
        )
    if state.error_description:
        console.print(Text(f"error:    {state.error_description}"))
    console.print(Text(f"trace:    {state.trace_id or '-'}"))
    if state.lineage_error is not None:
        console.print(
            Text(f"lineage:  unknown (the lineage table cannot be read: {state.lineage_error})")
        )
        return
    if state.lineage_present:
        present = "yes"
    elif state.status in ("pending", "generating"):
        present = "not yet"
    else:
        present = "no"
    attempts = "; ".join(
        f"attempt {a.attempt if a.attempt is not None else '?'} {a.status}"
        + (f" ({a.error_type})" if a.error_type else "")
        for a in state.lineage
    )
    console.print(
        Text(
            f"lineage:  {present}"
            + (
                f" ({len(state.lineage)} row{'' if len(state.lineage) == 1 else 's'}: {attempts})"
                if attempts
                else ""
            )
        )
    )
