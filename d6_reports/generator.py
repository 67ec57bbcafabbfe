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
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker

from d6_reports import telemetry as t
from d6_reports.errors import GenerationTimeoutError, ReportError, StorageError
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


@dataclass
class _Run:
    """Mutable state of one generation while it runs."""

    generation_id: str
    business_id: int
    options: GenerationOptions
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
        """``work(session)`` in a new session: on a thread, or through ``run_sync``."""
        if isinstance(self._sessions, async_sessionmaker):
            async with self._sessions() as session:
                return await session.run_sync(work)
        sessions = self._sessions

        def call() -> _T:
            with sessions() as session:
                return work(session)

        return await self._in_thread(call)

    # -- public API -------------------------------------------------------------------------

    async def generate_report(
        self, business_id: int, options: GenerationOptions | None = None
    ) -> GenerationResult:
        """Generate one report. Never raises once its arguments are valid: every failure,
        expected or not, is the result's ``error_type``/``error_message`` and the row's.

        Raises ``TypeError``/``ValueError`` for invalid arguments (no row is written then).
        """
        options = _validate(business_id, options)
        run = _Run(generation_id=str(uuid.uuid4()), business_id=business_id, options=options)
        attributes: dict[str, str | int] = {  # what the sampler and processor see at start
            t.GENERATION_ID: run.generation_id,
            t.BUSINESS_ID: business_id,
            t.TEMPLATE_NAME: options.template_name,
        }
        if options.template_version is not None:
            attributes[t.TEMPLATE_VERSION] = options.template_version
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
                await self._db(functools.partial(_insert_row, run))
                run.row_written = True
                await self._run_steps(run, root)
            except Exception as exc:
                return await self._fail(run, root, exc)
            _record(run, root, {t.STATUS: GenerationStatus.COMPLETED.value})
            return self._result(run, root)

    def generate_report_sync(
        self, business_id: int, options: GenerationOptions | None = None
    ) -> GenerationResult:
        """Blocking wrapper for callers without an event loop."""
        return asyncio.run(self.generate_report(business_id, options))

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
            _validate(business_id, options)
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
                self._render_html, template, snapshot
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
            run.warnings.extend(f"refused URL: {u[:200]}" for u in pdf.refused_urls)
        with self._step(run, t.SPAN_STORE) as span:
            path = (
                self.reports_dir
                / f"business-{run.business_id}"
                / f"{template.name}-{template.version}-{run.generation_id}.pdf"
            )
            try:
                await self._in_thread(_write_atomically, path, pdf.data)
            except OSError as exc:
                raise StorageError(f"cannot store PDF at {path}: {exc}") from exc
            run.pdf_path = path
            _record(run, span, {t.OUTPUT_URI: path.resolve().as_uri()})
            await self._db(functools.partial(_complete_row, run, template, pdf, path))

    def _load_inputs(self, business_id: int, session: Session) -> InputSnapshot:
        return load_inputs(
            session,
            business_id,
            max_bytes=self._max_snapshot_bytes,
            max_field_chars=self._max_field_chars,
        )

    def _render_html(
        self, template: TemplateVersion, snapshot: InputSnapshot
    ) -> tuple[str, str, int]:
        html = self.registry.render(template, snapshot.decode())
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
            requested_at=now,
            started_at=now,
        )
    )
    session.commit()


def _complete_row(
    run: _Run, template: TemplateVersion, pdf: PDFOutput, path: Path, session: Session
) -> None:
    row = session.get_one(ReportGeneration, run.generation_id)
    row.template_version = template.version
    row.template_sha256 = template.sha256
    row.status = GenerationStatus.COMPLETED.value
    row.completed_at = _now()
    row.duration_ms = _elapsed_ms(run.started)
    row.pdf_path = str(path)
    row.pdf_sha256 = pdf.sha256
    row.pdf_bytes = len(pdf.data)
    row.pdf_pages = pdf.pages
    session.commit()


def _fail_row(run: _Run, exc: Exception, session: Session) -> None:
    row = session.get_one(ReportGeneration, run.generation_id)
    if run.template is not None:
        row.template_version = run.template.version
        row.template_sha256 = run.template.sha256
    row.status = GenerationStatus.FAILED.value
    row.completed_at = _now()
    row.duration_ms = _elapsed_ms(run.started)
    row.error_type = _error_type(exc)
    row.error_message = str(exc)
    session.commit()


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


def _validate(business_id: int, options: GenerationOptions | None) -> GenerationOptions:
    if isinstance(business_id, bool) or not isinstance(business_id, int):
        raise TypeError(f"business_id must be an int, not {type(business_id).__name__}")
    if business_id < 1:
        raise ValueError(f"business_id must be positive, got {business_id}")
    options = options or GenerationOptions()
    if not isinstance(options, GenerationOptions):
        raise TypeError("options must be a GenerationOptions")
    if not isinstance(options.template_name, str) or not _NAME.fullmatch(options.template_name):
        raise ValueError(f"invalid template name {_shown(options.template_name)}: {_NAME_RULE}")
    version = options.template_version
    if version is not None and (not isinstance(version, str) or not _NAME.fullmatch(version)):
        raise ValueError(f"invalid template version {_shown(version)}: {_NAME_RULE}")
    return options


def _shown(value: object) -> str:
    """A bad argument as it may be shown: shortened, with invalid text escaped."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _now() -> datetime:
    return datetime.now(UTC)


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
