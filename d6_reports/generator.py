"""The report generator: inputs -> HTML -> PDF -> stored file and ``ReportGeneration`` row.

Each call opens a root ``report.generate`` span and one child span per step, through the
OpenTelemetry API only. Every report is its own trace (a new root, linked to whatever span was
current when it was requested), so one trace is exactly one report: that is what lets lineage
be keyed by trace id and a batch of a thousand reports stay a thousand small traces.

Blocking work (SQL, Jinja, WeasyPrint, file I/O) runs on the generator's own thread pool with
the caller's context copied in (as ``asyncio.to_thread`` does), so the event loop stays free,
the step spans are children of the report span, and a synchronous caller does not create and
tear down threads for every report (``asyncio.run`` would give each call a fresh executor).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import hashlib
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from sqlalchemy import or_, select, update
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker

from d6_reports import telemetry as t
from d6_reports.errors import (
    AttemptsExhaustedError,
    DatabaseUnavailableError,
    GenerationNotFoundError,
    GenerationTimeoutError,
    ReportError,
    StorageError,
    SupersededError,
    describe,
)
from d6_reports.inputs import (
    DEFAULT_MAX_FIELD_CHARS,
    DEFAULT_MAX_SNAPSHOT_BYTES,
    INPUT_TABLES,
    InputSnapshot,
    load_inputs,
)
from d6_reports.models import GenerationStatus, ReportGeneration
from d6_reports.pdf import PDFConverter, PDFOutput
from d6_reports.templates import TemplateRegistry, TemplateVersion

DEFAULT_TEMPLATE = "audit_report"
#: A PDF step running longer than this fails the report (``error_type=timeout``) instead of
#: leaving its row ``generating``: an 8-page report takes about 2 s here.
DEFAULT_PDF_TIMEOUT_S = 300.0
#: Template names and versions are directory names: short, plain, no path separators.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")
_NAME_RULE = "1 to 100 letters, digits, '.', '_', '+' or '-', not starting with a symbol"
#: A queued generation id: the canonical text of a UUID (what ``uuid.uuid4()`` gives).
GENERATION_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
#: SQLSTATE classes of a lost or refused connection: connection exception, operator
#: intervention (server shutting down, crash recovery).
_UNAVAILABLE_SQLSTATES = ("08", "57P")
#: Business ids are 32-bit integers in the database.
MAX_BUSINESS_ID = 2**31 - 1
_T = TypeVar("_T")
_log = logging.getLogger(__name__)

#: A sync ``sessionmaker`` or an async one (see ``ReportGenerator``).
SessionFactory = sessionmaker[Session] | async_sessionmaker[AsyncSession]


@dataclass(frozen=True, slots=True)
class GenerationOptions:
    """What to render. ``template_version=None`` means the latest released version."""

    template_name: str = DEFAULT_TEMPLATE
    template_version: str | None = None


@dataclass(frozen=True, slots=True)
class GenerationResult:
    """Outcome of one generation; expected failures have ``success=False`` and an error."""

    success: bool
    generation_id: str
    business_id: int
    template_name: str
    template_version: str | None
    pdf_path: Path | None = None
    pdf_sha256: str | None = None
    pdf_bytes: int | None = None
    pages: int | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    error_type: str | None = None
    #: The full message: it may quote customer data, so it is for this caller and the database
    #: rows only (the command line prints ``error_description``).
    error_message: str | None = None
    #: A fixed sentence per error type, safe to print and log anywhere.
    error_description: str | None = None
    warnings: tuple[str, ...] = ()
    trace_id: str | None = None
    #: Which attempt of the generation this was (1 unless a queued task was redelivered).
    attempt: int | None = None
    #: A queued generation that an earlier attempt already finished: nothing was run now, and
    #: the fields describe the stored outcome (``success`` is True if it completed).
    already_finished: bool = False
    #: The failure was infrastructure (the database unreachable): a later attempt may succeed.
    retryable: bool = False


@dataclass
class _Run:
    """Mutable state of one generation while it runs."""

    generation_id: str
    business_id: int
    options: GenerationOptions
    #: 1 for a direct call; the claimed attempt number for a queued generation.
    attempt: int = 1
    queued: bool = False
    started: float = field(default_factory=time.perf_counter)
    timings_ms: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    template: TemplateVersion | None = None
    pdf: PDFOutput | None = None
    pdf_path: Path | None = None
    row_written: bool = False
    #: The report's context for in-process lineage (see ``telemetry.REPORT_CONTEXT_KEY``).
    carrier: dict[str, object] = field(default_factory=dict)


class ReportGenerator:
    """Generates PDF reports and records each call as a ``ReportGeneration`` row.

    ``session_factory`` is a ``sessionmaker`` (its work runs on the generator's threads) or an
    ``async_sessionmaker`` (its work runs through ``AsyncSession.run_sync`` on the caller's
    event loop, for apps on async SQLAlchemy; use ``generate_report`` from that loop).
    """

    def __init__(
        self,
        session_factory: SessionFactory,
        reports_dir: Path,
        *,
        registry: TemplateRegistry | None = None,
        converter: PDFConverter | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        max_snapshot_bytes: int = DEFAULT_MAX_SNAPSHOT_BYTES,
        max_field_chars: int = DEFAULT_MAX_FIELD_CHARS,
        pdf_timeout_s: float = DEFAULT_PDF_TIMEOUT_S,
        workers: int = 8,
    ) -> None:
        if pdf_timeout_s <= 0:
            raise ValueError("pdf_timeout_s must be positive")
        self._sessions = session_factory
        self.reports_dir = reports_dir
        self.registry = registry or TemplateRegistry()
        self._converter = converter or PDFConverter()
        self._tracer = trace.get_tracer(t.INSTRUMENTATION_NAME, tracer_provider=tracer_provider)
        self._max_snapshot_bytes = max_snapshot_bytes
        self._max_field_chars = max_field_chars
        self._pdf_timeout_s = pdf_timeout_s
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="d6-report")

    def close(self) -> None:
        """Stop the worker threads (after the running generations finish)."""
        self._executor.shutdown(wait=True)

    async def _in_thread(self, fn: Callable[..., _T], *args: Any) -> _T:
        """``fn(*args)`` on the pool, in a copy of the current (OpenTelemetry) context."""
        call = functools.partial(contextvars.copy_context().run, fn, *args)
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def _db(self, work: Callable[[Session], _T]) -> _T:
        """``work(session)`` in a new session: on a thread, or through ``run_sync``.

        A connection that cannot be made or is lost becomes ``DatabaseUnavailableError``
        (retryable); every other database error keeps its own type.
        """
        try:
            if isinstance(self._sessions, async_sessionmaker):
                async with self._sessions() as session:
                    return await session.run_sync(work)
            sessions = self._sessions

            def call() -> _T:
                with sessions() as session:
                    return work(session)

            return await self._in_thread(call)
        except Exception as exc:
            if _database_unreachable(exc):
                raise DatabaseUnavailableError(
                    f"the report database could not be reached: {exc}"
                ) from exc
            raise

    # -- public API -------------------------------------------------------------------------

    async def generate_report(
        self,
        business_id: int,
        options: GenerationOptions | None = None,
        *,
        generation_id: str | None = None,
        task_id: str | None = None,
    ) -> GenerationResult:
        """Generate one report. Never raises once its arguments are valid: every failure,
        expected or not, is the result's ``error_type``/``error_message`` and the row's.

        ``generation_id`` runs a generation queued beforehand (a ``pending`` row of this
        business and template, see ``d6_reports.queue``) instead of creating one. Its row is
        claimed atomically before anything else: a generation that an earlier attempt already
        finished is not run again (``already_finished``), and a redelivered task resumes the
        same row as its next ``attempt``. Only the latest attempt can complete it, so a
        generation completes at most once. ``task_id`` is recorded on the report's root span.

        Raises ``TypeError``/``ValueError`` for invalid arguments (no row is written then).
        """
        options = validate_request(business_id, options)
        _validate_ids(generation_id, task_id)
        run = _Run(
            generation_id=generation_id or str(uuid.uuid4()),
            business_id=business_id,
            options=options,
            queued=generation_id is not None,
        )
        if run.queued:
            refused = await self._claim(run)
            if refused is not None:
                return refused
        attributes: dict[str, str | int] = {  # what the sampler and processor see at start
            t.GENERATION_ID: run.generation_id,
            t.BUSINESS_ID: business_id,
            t.TEMPLATE_NAME: options.template_name,
            t.ATTEMPT: run.attempt,
        }
        if options.template_version is not None:
            attributes[t.TEMPLATE_VERSION] = options.template_version
        if task_id is not None:
            attributes[t.TASK_ID] = task_id
        run.carrier.update(attributes)
        caller = trace.get_current_span()
        caller_context = caller.get_span_context()
        links: list[Link] = []
        if caller_context.is_valid:
            run.carrier[t.CALLER_TRACE_ID] = trace.format_trace_id(caller_context.trace_id)
            run.carrier[t.CALLER_SPAN_ID] = trace.format_span_id(caller_context.span_id)
            links.append(Link(caller_context))
        # A new trace per report (one trace = one report), linked to whatever asked for it,
        # and carrying the report's context for in-process processors only.
        root_context = otel_context.set_value(t.REPORT_CONTEXT_KEY, run.carrier, Context())
        with self._tracer.start_as_current_span(
            t.SPAN_GENERATE,
            context=root_context,
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            links=links,
            record_exception=False,
            set_status_on_exception=False,
        ) as root:
            _announce(caller, run.generation_id, root)
            try:
                start_row = _start_row if run.queued else _insert_row
                await self._db(functools.partial(start_row, run))
                run.row_written = True
                await self._run_steps(run, root)
            except Exception as exc:
                return await self._fail(run, root, exc)
            _record(run, root, {t.STATUS: GenerationStatus.COMPLETED.value})
            return self._result(run, root)

    async def _claim(self, run: _Run) -> GenerationResult | None:
        """Claim a queued generation's row for this attempt; a result when it cannot be run.

        The claim is one conditional ``UPDATE``, so of two deliveries of the same task only
        the later claim owns the row. It happens before the report's trace starts: a delivery
        that finds the generation finished leaves no trace and no lineage row behind.
        """
        try:
            claimed = await self._db(functools.partial(_claim_row, run))
        except Exception as exc:
            return self._unstarted(run, exc)
        if isinstance(claimed, int):
            run.attempt = claimed
            return None
        if claimed is None:
            missing = GenerationNotFoundError(
                f"no queued generation {run.generation_id} of business {run.business_id} "
                f"with template {run.options.template_name}"
            )
            return self._unstarted(run, missing)
        return claimed

    def _unstarted(self, run: _Run, exc: Exception) -> GenerationResult:
        """A queued generation that could not start (no span, no lineage: nothing ran)."""
        _log.warning("queued report %s could not start: %s", run.generation_id, _description(exc))
        return GenerationResult(
            success=False,
            generation_id=run.generation_id,
            business_id=run.business_id,
            template_name=run.options.template_name,
            template_version=run.options.template_version,
            error_type=_error_type(exc),
            error_message=str(exc),
            error_description=_description(exc),
            retryable=_retryable(exc),
        )

    def generate_report_sync(
        self,
        business_id: int,
        options: GenerationOptions | None = None,
        *,
        generation_id: str | None = None,
        task_id: str | None = None,
    ) -> GenerationResult:
        """Blocking wrapper for callers without an event loop."""
        return asyncio.run(
            self.generate_report(business_id, options, generation_id=generation_id, task_id=task_id)
        )

    async def generate_many(
        self,
        business_ids: Iterable[int],
        options: GenerationOptions | None = None,
        *,
        concurrency: int = 4,
    ) -> list[GenerationResult]:
        """Generate reports concurrently (at most ``concurrency`` at once), in input order.

        All arguments are checked before the first report starts; after that one report's
        failure is its own result and never stops the others.
        """
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        ids = list(business_ids)
        for business_id in ids:
            validate_request(business_id, options)
        gate = asyncio.Semaphore(concurrency)

        async def one(business_id: int) -> GenerationResult:
            async with gate:
                return await self.generate_report(business_id, options)

        return list(await asyncio.gather(*(one(b) for b in ids)))

    # -- steps ------------------------------------------------------------------------------

    async def _run_steps(self, run: _Run, root: Span) -> None:
        # First use of a version reads and hashes its files: not on the event loop.
        template = await self._in_thread(
            self.registry.resolve, run.options.template_name, run.options.template_version
        )
        run.template = template
        _record(
            run, root, {t.TEMPLATE_VERSION: template.version, t.TEMPLATE_SHA256: template.sha256}
        )
        with self._step(run, t.SPAN_LOAD_INPUTS) as span:
            snapshot = await self._db(functools.partial(self._load_inputs, run.business_id))
            run.carrier[t.INPUTS_SNAPSHOT] = snapshot.data
            _record(
                run,
                span,
                {t.INPUTS_SHA256: snapshot.sha256, t.INPUTS_BYTES: snapshot.size},
                {t.INPUTS_TABLES: list(INPUT_TABLES), t.INPUTS_FINDINGS: snapshot.findings},
            )
        with self._step(run, t.SPAN_RENDER_HTML) as span:
            html, html_sha256, html_bytes = await self._in_thread(
                self._render_html, run.generation_id, template, snapshot
            )
            _record(
                run,
                span,
                {t.HTML_SHA256: html_sha256},
                {
                    t.TEMPLATE_NAME: template.name,
                    t.TEMPLATE_VERSION: template.version,
                    t.TEMPLATE_SHA256: template.sha256,
                    t.HTML_BYTES: html_bytes,
                },
            )
        with self._step(run, t.SPAN_CONVERT_PDF) as span:
            try:
                convert = functools.partial(
                    self._converter.convert, html, asset_root=template.directory
                )
                pdf = await asyncio.wait_for(self._in_thread(convert), self._pdf_timeout_s)
            except TimeoutError as exc:
                # The renderer's thread cannot be stopped; the report fails now, not never.
                raise GenerationTimeoutError(
                    f"PDF conversion ran past its {self._pdf_timeout_s:g} s limit"
                ) from exc
            run.pdf = pdf
            _record(
                run,
                span,
                {
                    t.OUTPUT_SHA256: pdf.sha256,
                    t.OUTPUT_BYTES: len(pdf.data),
                    t.OUTPUT_PAGES: pdf.pages,
                },
                {
                    t.OUTPUT_REFUSED_URLS: len(pdf.refused_urls),
                    t.OUTPUT_FONT_SUBSETTER: pdf.font_subsetter,
                },
            )
            if pdf.renderer:
                fonts = tuple(f"{font.family} sha256:{font.sha256}" for font in pdf.fonts)
                _record(run, span, {t.RENDERER_VERSIONS: pdf.renderer, t.RENDERER_FONTS: fonts})
            run.warnings.extend(f"refused URL: {u[:200]}" for u in pdf.refused_urls)
        with self._step(run, t.SPAN_STORE) as span:
            path = (
                self.reports_dir
                / f"business-{run.business_id}"
                / f"{template.name}-{template.version}-{run.generation_id}.pdf"
            )
            try:
                staged = await self._in_thread(_stage, path, pdf.data)
            except OSError as exc:
                raise StorageError(f"cannot store PDF at {path}: {exc}") from exc
            _record(run, span, {t.OUTPUT_URI: path.resolve().as_uri()})
            try:
                await self._db(functools.partial(_complete_row, run, template, pdf, staged, path))
            finally:
                staged.unlink(missing_ok=True)  # still there: this attempt did not complete
            run.pdf_path = path

    def _load_inputs(self, business_id: int, session: Session) -> InputSnapshot:
        return load_inputs(
            session,
            business_id,
            max_bytes=self._max_snapshot_bytes,
            max_field_chars=self._max_field_chars,
        )

    def _render_html(
        self, generation_id: str, template: TemplateVersion, snapshot: InputSnapshot
    ) -> tuple[str, str, int]:
        html = self.registry.render_report(
            template, snapshot.decode(), generation_id=generation_id, inputs_sha256=snapshot.sha256
        )
        encoded = html.encode()
        return html, hashlib.sha256(encoded).hexdigest(), len(encoded)

    # -- failures, results, spans -----------------------------------------------------------

    async def _fail(self, run: _Run, root: Span, exc: Exception) -> GenerationResult:
        """Record ``exc`` as this report's failure: carrier, root span, row, result."""
        error_type = _error_type(exc)
        run.carrier[t.ERROR_MESSAGE] = str(exc)  # in-process only: it may quote customer data
        _record(run, root, {t.ERROR_TYPE: error_type, t.STATUS: GenerationStatus.FAILED.value})
        _mark_span_failed(root, exc)
        if not isinstance(exc, ReportError):
            # The type only: the message may quote customer data (it is in the row).
            _log.error("report %s failed unexpectedly: %s", run.generation_id, error_type)
            _log.debug("report %s failure", run.generation_id, exc_info=exc)
        if run.row_written:
            try:
                await self._db(functools.partial(_fail_row, run, exc))
            except Exception as db_exc:
                _log.error(
                    "report %s: its failure could not be recorded in the database: %s",
                    run.generation_id,
                    type(db_exc).__qualname__,
                )
        return self._result(run, root, error=exc)

    def _result(self, run: _Run, root: Span, error: Exception | None = None) -> GenerationResult:
        span_context = root.get_span_context()
        ok = error is None
        pdf = run.pdf if ok else None
        return GenerationResult(
            success=ok,
            generation_id=run.generation_id,
            business_id=run.business_id,
            template_name=run.options.template_name,
            template_version=run.template.version if run.template else run.options.template_version,
            pdf_path=run.pdf_path if ok else None,
            pdf_sha256=pdf.sha256 if pdf else None,
            pdf_bytes=len(pdf.data) if pdf else None,
            pages=pdf.pages if pdf else None,
            timings_ms=dict(run.timings_ms),
            error_type=_error_type(error) if error else None,
            error_message=str(error) if error else None,
            error_description=_description(error) if error else None,
            warnings=tuple(run.warnings),
            trace_id=(
                trace.format_trace_id(span_context.trace_id) if span_context.is_valid else None
            ),
            attempt=run.attempt,
            retryable=_retryable(error) if error else False,
        )

    @contextlib.contextmanager
    def _step(self, run: _Run, name: str) -> Iterator[Span]:
        """A child span for one step: timed, and marked ERROR with ``error.type`` on failure."""
        started = time.perf_counter()
        with self._tracer.start_as_current_span(
            name, record_exception=False, set_status_on_exception=False
        ) as span:
            try:
                yield span
            except Exception as exc:
                _mark_span_failed(span, exc)
                raise
            finally:
                run.timings_ms[name.removeprefix("report.")] = _elapsed_ms(started)


def _record(
    run: _Run, span: Span, facts: dict[str, Any], extra: dict[str, Any] | None = None
) -> None:
    """``facts`` go to the carrier (the lineage authority) and, like ``extra``, to ``span``."""
    run.carrier.update(facts)
    if span.is_recording():
        span.set_attributes(facts if extra is None else {**facts, **extra})


def _announce(caller: Span, generation_id: str, root: Span) -> None:
    """Name the report on the span that asked for it, so a trace viewer can follow it."""
    if caller.is_recording():
        context = root.get_span_context()
        caller.add_event(
            t.EVENT_REPORT_REQUESTED,
            {
                t.GENERATION_ID: generation_id,
                t.REPORT_TRACE_ID: trace.format_trace_id(context.trace_id),
            },
        )


def _insert_row(run: _Run, session: Session) -> None:
    now = _now()
    session.add(
        ReportGeneration(
            id=run.generation_id,
            business_id=run.business_id,
            template_name=run.options.template_name,
            template_version=run.options.template_version,
            status=GenerationStatus.GENERATING.value,
            attempts=run.attempt,
            requested_at=now,
            started_at=now,
        )
    )
    session.commit()


#: Failures that say nothing about the report: the database was unreachable, or the process
#: died mid-report (``otel-lineage recover`` marks those "abandoned"). A retry may succeed.
RETRYABLE_FAILURES = (DatabaseUnavailableError.error_type, "abandoned")
#: Attempts a queued generation gets: a report that kills its worker every time (a poison
#: message, redelivered after each death) fails ``attempts_exhausted`` instead of for ever.
MAX_ATTEMPTS = 10
#: Rows a queued attempt may claim: not started, started by an attempt that never ended (its
#: worker died), or failed only for one of the reasons above.
_CLAIMABLE = or_(
    ReportGeneration.status.in_(
        (GenerationStatus.PENDING.value, GenerationStatus.GENERATING.value)
    ),
    (ReportGeneration.status == GenerationStatus.FAILED.value)
    & ReportGeneration.error_type.in_(RETRYABLE_FAILURES),
)


def _claim_row(run: _Run, session: Session) -> int | GenerationResult | None:
    """This attempt's number if the row was claimed, the stored outcome if the generation is
    finished, None if no such queued generation exists.

    A bulk ``UPDATE`` (no ORM flush, so no mapper events: the row is stamped with the report's
    trace by ``_start_row``, inside it).
    """
    version = run.options.template_version
    matches = (
        (ReportGeneration.id == run.generation_id)
        & (ReportGeneration.business_id == run.business_id)
        & (ReportGeneration.template_name == run.options.template_name)
        # The version asked for. A request for the latest (None) also matches a row that
        # recorded the version it resolved to once it ran (a redelivery after it finished).
        & (
            or_(
                ReportGeneration.template_version.is_(None),
                ReportGeneration.status != GenerationStatus.PENDING.value,
            )
            if version is None
            else ReportGeneration.template_version == version
        )
    )
    attempt = session.execute(
        update(ReportGeneration)
        .where(matches, _CLAIMABLE, ReportGeneration.attempts < MAX_ATTEMPTS)
        .values(
            status=GenerationStatus.GENERATING.value,
            attempts=ReportGeneration.attempts + 1,
            error_type=None,
            error_message=None,
            # Until _start_row stamps this attempt's trace, the row names no trace: recovering
            # the dead attempt's outbox meanwhile cannot mistake this attempt for it.
            trace_id=None,
            span_id=None,
        )
        .returning(ReportGeneration.attempts)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    if attempt is not None:
        session.commit()
        return int(attempt)
    # Claimable but for its spent attempts: finished now, as failed (one statement, no copy of
    # the claim rule in Python).
    session.execute(
        update(ReportGeneration)
        .where(matches, _CLAIMABLE)
        .values(
            status=GenerationStatus.FAILED.value,
            error_type=AttemptsExhaustedError.error_type,
            error_message=f"gave up after {MAX_ATTEMPTS} attempts that did not finish",
            completed_at=_now(),
        )
        .execution_options(synchronize_session=False)
    )
    session.commit()
    row = session.scalars(select(ReportGeneration).where(matches)).one_or_none()
    if row is None:
        return None
    return GenerationResult(
        success=row.status == GenerationStatus.COMPLETED.value,
        generation_id=row.id,
        business_id=row.business_id,
        template_name=row.template_name,
        template_version=row.template_version,
        pdf_path=Path(row.pdf_path) if row.pdf_path else None,
        pdf_sha256=row.pdf_sha256,
        pdf_bytes=row.pdf_bytes,
        pages=row.pdf_pages,
        error_type=row.error_type,
        error_message=row.error_message,
        error_description=describe(row.error_type) if row.error_type else None,
        trace_id=row.trace_id,
        attempt=row.attempts,
        already_finished=True,
    )


def _start_row(run: _Run, session: Session) -> None:
    """Mark a claimed row started, inside the report's trace (its trace id is stamped now)."""
    row = session.get_one(ReportGeneration, run.generation_id)
    if row.attempts != run.attempt or row.status != GenerationStatus.GENERATING.value:
        raise SupersededError(
            f"generation {run.generation_id}: attempt {row.attempts} took over from "
            f"attempt {run.attempt} before it started"
        )
    row.started_at = _now()
    session.commit()


def _owned(run: _Run) -> Any:
    """The row, while this attempt still owns it (no later attempt claimed it)."""
    return (
        (ReportGeneration.id == run.generation_id)
        & (ReportGeneration.attempts == run.attempt)
        & (ReportGeneration.status == GenerationStatus.GENERATING.value)
    )


def _complete_row(
    run: _Run,
    template: TemplateVersion,
    pdf: PDFOutput,
    staged: Path,
    path: Path,
    session: Session,
) -> None:
    """Complete the row and put the staged PDF in place, only while this attempt owns the row.

    The conditional ``UPDATE`` holds the row until the commit, so no other attempt can claim it
    between the check and the rename: an overtaken attempt never replaces the completed PDF.
    """
    completed = session.execute(
        update(ReportGeneration)
        .where(_owned(run))
        .values(
            template_version=template.version,
            template_sha256=template.sha256,
            status=GenerationStatus.COMPLETED.value,
            completed_at=_now(),
            duration_ms=_elapsed_ms(run.started),
            pdf_path=str(path),
            pdf_sha256=pdf.sha256,
            pdf_bytes=len(pdf.data),
            pdf_pages=pdf.pages,
        )
        .execution_options(synchronize_session=False)
    )
    if completed.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        raise SupersededError(
            f"generation {run.generation_id}: a later attempt took over from attempt "
            f"{run.attempt}; this one does not complete it"
        )
    try:
        os.replace(staged, path)
    except OSError as exc:
        session.rollback()
        raise StorageError(f"cannot store PDF at {path}: {exc}") from exc
    try:
        session.commit()
    except Exception as exc:
        if not _database_unreachable(exc):
            raise
        # The server may have committed before the connection went: only the database knows
        # now. Retrying is safe (a redelivery finds it completed), and the lineage writer
        # settles this attempt's row against the generation row once the database is back.
        raise DatabaseUnavailableError(
            f"generation {run.generation_id}: the report database was lost while the "
            "completed report was committed; whether it completed is decided by the database "
            f"(see its status): {exc}"
        ) from exc


def _fail_row(run: _Run, exc: Exception, session: Session) -> None:
    """Record the failure, unless a later attempt owns the row now (then it is its own)."""
    values: dict[str, Any] = {
        "status": GenerationStatus.FAILED.value,
        "completed_at": _now(),
        "duration_ms": _elapsed_ms(run.started),
        "error_type": _error_type(exc),
        "error_message": str(exc),
    }
    if run.template is not None:
        values.update(template_version=run.template.version, template_sha256=run.template.sha256)
    session.execute(
        update(ReportGeneration)
        .where(_owned(run))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    session.commit()


def _retryable(exc: Exception) -> bool:
    return isinstance(exc, ReportError) and exc.retryable


def _database_unreachable(exc: Exception) -> bool:
    """A connection refused, lost or timed out, as opposed to an error of the statement.

    SQLAlchemy flags a connection it found dead (``connection_invalidated``). A connection that
    could not be made has no SQLSTATE with psycopg; a server shutting down answers class 57P.
    SQLite has no connections to lose: its errors (a missing table, a locked file) stay what
    they are.
    """
    if isinstance(exc, PoolTimeoutError):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    if not isinstance(exc, OperationalError | InterfaceError):
        return False
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if isinstance(sqlstate, str):
        return sqlstate.startswith(_UNAVAILABLE_SQLSTATES)
    return type(exc.orig).__module__.partition(".")[0] == "psycopg"


def _error_type(exc: Exception) -> str:
    return exc.error_type if isinstance(exc, ReportError) else type(exc).__qualname__


def _description(exc: Exception) -> str:
    """What may leave the process about ``exc``: its type and a fixed sentence, no values."""
    if isinstance(exc, ReportError):
        return f"{exc.error_type}: {exc.description}"
    return f"{type(exc).__qualname__}: unexpected error (details in the ReportGeneration row)"


def _mark_span_failed(span: Span, exc: Exception) -> None:
    """ERROR status, ``error.type`` and an exception event, none of which quotes the message.

    ``Span.record_exception`` would export ``str(exc)`` and the stack trace, both of which can
    carry customer data (a date that does not parse, a value a template rejects).
    """
    if not span.is_recording():
        return
    description = _description(exc)
    span.set_status(Status(StatusCode.ERROR, description))
    span.set_attribute(t.ERROR_TYPE, _error_type(exc))
    span.add_event(
        t.EXCEPTION_EVENT,
        {"exception.type": type(exc).__qualname__, "exception.message": description},
    )


def validate_request(business_id: int, options: GenerationOptions | None) -> GenerationOptions:
    """The arguments of a generation, checked (``TypeError``/``ValueError``); its options.

    Public so that whoever queues a generation for later (``d6_reports.queue``) refuses what
    the generator would refuse before anything is written.
    """
    if isinstance(business_id, bool) or not isinstance(business_id, int):
        raise TypeError(f"business_id must be an int, not {type(business_id).__name__}")
    if not 1 <= business_id <= MAX_BUSINESS_ID:
        raise ValueError(f"business_id must be from 1 to {MAX_BUSINESS_ID}, got {business_id}")
    options = options or GenerationOptions()
    if not isinstance(options, GenerationOptions):
        raise TypeError("options must be a GenerationOptions")
    if not isinstance(options.template_name, str) or not _NAME.fullmatch(options.template_name):
        raise ValueError(f"invalid template name {_shown(options.template_name)}: {_NAME_RULE}")
    version = options.template_version
    if version is not None and (not isinstance(version, str) or not _NAME.fullmatch(version)):
        raise ValueError(f"invalid template version {_shown(version)}: {_NAME_RULE}")
    return options


def _validate_ids(generation_id: str | None, task_id: str | None) -> None:
    if generation_id is not None and (
        not isinstance(generation_id, str) or not GENERATION_ID.fullmatch(generation_id)
    ):
        raise ValueError(f"invalid generation id {_shown(generation_id)}: expected a UUID")
    if task_id is not None and (
        not isinstance(task_id, str) or not 0 < len(task_id) <= 255 or not task_id.isprintable()
    ):
        raise ValueError(f"invalid task id {_shown(task_id)}: 1 to 255 printable characters")


def _shown(value: object) -> str:
    """A bad argument as it may be shown: shortened, with invalid text escaped."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def _stage(path: Path, data: bytes) -> Path:
    """``data`` written and synced beside ``path``, under a name of this attempt's own; the
    completion renames it into place (atomic on one file system)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    with open(staged, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return staged


def _now() -> datetime:
    return datetime.now(UTC)


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
