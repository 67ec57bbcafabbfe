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
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from sqlalchemy.orm import Session, sessionmaker

from d6_reports import telemetry as t
from d6_reports.errors import ReportError, StorageError
from d6_reports.inputs import DEFAULT_MAX_SNAPSHOT_BYTES, INPUT_TABLES, InputSnapshot, load_inputs
from d6_reports.models import GenerationStatus, ReportGeneration
from d6_reports.pdf import PDFConverter, PDFOutput
from d6_reports.templates import TemplateRegistry, TemplateVersion

DEFAULT_TEMPLATE = "audit_report"
_T = TypeVar("_T")


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
    error_message: str | None = None
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


class ReportGenerator:
    """Generates PDF reports and records each call as a ``ReportGeneration`` row."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        reports_dir: Path,
        *,
        registry: TemplateRegistry | None = None,
        converter: PDFConverter | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        max_snapshot_bytes: int = DEFAULT_MAX_SNAPSHOT_BYTES,
        workers: int = 8,
    ) -> None:
        self._sessions = session_factory
        self.reports_dir = reports_dir
        self.registry = registry or TemplateRegistry()
        self._converter = converter or PDFConverter()
        self._tracer = trace.get_tracer(t.INSTRUMENTATION_NAME, tracer_provider=tracer_provider)
        self._max_snapshot_bytes = max_snapshot_bytes
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="d6-report")

    def close(self) -> None:
        """Stop the worker threads (after the running generations finish)."""
        self._executor.shutdown(wait=True)

    async def _in_thread(self, fn: Callable[..., _T], *args: Any) -> _T:
        """``fn(*args)`` on the pool, in a copy of the current (OpenTelemetry) context."""
        call = functools.partial(contextvars.copy_context().run, fn, *args)
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    # -- public API -------------------------------------------------------------------------

    async def generate_report(
        self, business_id: int, options: GenerationOptions | None = None
    ) -> GenerationResult:
        """Generate one report. Never raises for an expected failure: see ``GenerationResult``.

        Raises ``TypeError``/``ValueError`` for invalid arguments (no row is written then) and
        lets infrastructure failures (the report database itself being down) propagate.
        """
        options = _validate(business_id, options)
        run = _Run(generation_id=str(uuid.uuid4()), business_id=business_id, options=options)
        attributes: dict[str, Any] = {
            t.GENERATION_ID: run.generation_id,
            t.BUSINESS_ID: business_id,
            t.TEMPLATE_NAME: options.template_name,
        }
        if options.template_version is not None:
            attributes[t.TEMPLATE_VERSION] = options.template_version
        with self._tracer.start_as_current_span(
            t.SPAN_GENERATE,
            context=otel_context.Context(),  # a new trace per report ...
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            links=_link_to_current(),  # ... linked to whatever asked for it
            record_exception=False,
            set_status_on_exception=False,
        ) as root:
            await self._in_thread(self._insert_row, run)
            try:
                await self._run_steps(run, root)
            except ReportError as exc:
                await self._mark_failed(run, root, exc)
                return self._result(run, root, error=exc)
            except Exception as exc:
                # A bug or an infrastructure failure: still leave a failed row and a failed
                # span when possible, then let the caller see the real exception.
                with contextlib.suppress(Exception):
                    await self._mark_failed(run, root, exc)
                raise
            root.set_attribute(t.STATUS, GenerationStatus.COMPLETED.value)
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
        """Generate reports concurrently (at most ``concurrency`` at once), in input order."""
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        gate = asyncio.Semaphore(concurrency)

        async def one(business_id: int) -> GenerationResult:
            async with gate:
                return await self.generate_report(business_id, options)

        return list(await asyncio.gather(*(one(b) for b in business_ids)))

    # -- steps ------------------------------------------------------------------------------

    async def _run_steps(self, run: _Run, root: Span) -> None:
        # First use of a version reads and hashes its files: not on the event loop.
        template = await self._in_thread(
            self.registry.resolve, run.options.template_name, run.options.template_version
        )
        run.template = template
        root.set_attribute(t.TEMPLATE_VERSION, template.version)
        root.set_attribute(t.TEMPLATE_SHA256, template.sha256)
        snapshot = await self._in_thread(self._load_inputs, run)
        html = await self._in_thread(self._render_html, run, template, snapshot)
        run.pdf = await self._in_thread(self._convert_pdf, run, template, html)
        await self._in_thread(self._store, run, template, run.pdf)

    def _load_inputs(self, run: _Run) -> InputSnapshot:
        with self._step(run, t.SPAN_LOAD_INPUTS) as span, self._sessions() as session:
            snapshot = load_inputs(session, run.business_id, max_bytes=self._max_snapshot_bytes)
            if span.is_recording():
                span.set_attributes(
                    {
                        t.INPUTS_SHA256: snapshot.sha256,
                        t.INPUTS_BYTES: snapshot.size,
                        t.INPUTS_TABLES: list(INPUT_TABLES),
                        t.INPUTS_FINDINGS: snapshot.findings,
                    }
                )
            return snapshot

    def _render_html(self, run: _Run, template: TemplateVersion, snapshot: InputSnapshot) -> str:
        # The snapshot rides in the Context the render span starts in: in-process only, never
        # an attribute, so a lineage processor can keep it and no exporter can ship it.
        ctx = None
        if trace.get_current_span().is_recording():
            ctx = otel_context.set_value(t.INPUTS_SNAPSHOT_CONTEXT_KEY, snapshot.data)
        with self._step(run, t.SPAN_RENDER_HTML, context=ctx) as span:
            html = self.registry.render(template, snapshot.decode())
            if span.is_recording():
                encoded = html.encode()
                span.set_attributes(
                    {
                        t.TEMPLATE_NAME: template.name,
                        t.TEMPLATE_VERSION: template.version,
                        t.TEMPLATE_SHA256: template.sha256,
                        t.HTML_SHA256: hashlib.sha256(encoded).hexdigest(),
                        t.HTML_BYTES: len(encoded),
                    }
                )
            return html

    def _convert_pdf(self, run: _Run, template: TemplateVersion, html: str) -> PDFOutput:
        with self._step(run, t.SPAN_CONVERT_PDF) as span:
            pdf = self._converter.convert(html, asset_root=template.directory)
            span.set_attributes(
                {
                    t.OUTPUT_SHA256: pdf.sha256,
                    t.OUTPUT_BYTES: len(pdf.data),
                    t.OUTPUT_PAGES: pdf.pages,
                    t.OUTPUT_REFUSED_URLS: len(pdf.refused_urls),
                }
            )
            run.warnings.extend(f"refused URL: {u[:200]}" for u in pdf.refused_urls)
            return pdf

    def _store(self, run: _Run, template: TemplateVersion, pdf: PDFOutput) -> None:
        with self._step(run, t.SPAN_STORE) as span:
            path = (
                self.reports_dir
                / f"business-{run.business_id}"
                / (f"{template.name}-{template.version}-{run.generation_id}.pdf")
            )
            try:
                _write_atomically(path, pdf.data)
            except OSError as exc:
                raise StorageError(f"cannot store PDF at {path}: {exc}") from exc
            run.pdf_path = path
            span.set_attribute(t.OUTPUT_URI, path.resolve().as_uri())
            with self._sessions() as session, session.begin():
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

    # -- rows, spans, results ---------------------------------------------------------------

    def _insert_row(self, run: _Run) -> None:
        now = _now()
        with self._sessions() as session, session.begin():
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

    async def _mark_failed(self, run: _Run, root: Span, exc: Exception) -> None:
        _mark_span_failed(root, exc)
        root.set_attribute(t.STATUS, GenerationStatus.FAILED.value)

        def update() -> None:
            with self._sessions() as session, session.begin():
                row = session.get_one(ReportGeneration, run.generation_id)
                if run.template is not None:
                    row.template_version = run.template.version
                    row.template_sha256 = run.template.sha256
                row.status = GenerationStatus.FAILED.value
                row.completed_at = _now()
                row.duration_ms = _elapsed_ms(run.started)
                row.error_type = _error_type(exc)
                row.error_message = str(exc)

        await self._in_thread(update)

    def _result(self, run: _Run, root: Span, error: ReportError | None = None) -> GenerationResult:
        span_context = root.get_span_context()
        return GenerationResult(
            success=error is None,
            generation_id=run.generation_id,
            business_id=run.business_id,
            template_name=run.options.template_name,
            template_version=run.template.version if run.template else run.options.template_version,
            pdf_path=run.pdf_path if error is None else None,
            pdf_sha256=run.pdf.sha256 if run.pdf and error is None else None,
            pdf_bytes=len(run.pdf.data) if run.pdf and error is None else None,
            pages=run.pdf.pages if run.pdf and error is None else None,
            timings_ms=dict(run.timings_ms),
            error_type=error.error_type if error else None,
            error_message=str(error) if error else None,
            warnings=tuple(run.warnings),
            trace_id=(
                trace.format_trace_id(span_context.trace_id) if span_context.is_valid else None
            ),
        )

    @contextlib.contextmanager
    def _step(
        self, run: _Run, name: str, context: otel_context.Context | None = None
    ) -> Iterator[Span]:
        """A child span for one step: timed, and marked ERROR with ``error.type`` on failure."""
        started = time.perf_counter()
        with self._tracer.start_as_current_span(
            name, context=context, record_exception=False, set_status_on_exception=False
        ) as span:
            try:
                yield span
            except Exception as exc:
                span.record_exception(exc)
                _mark_span_failed(span, exc)
                raise
            finally:
                run.timings_ms[name.removeprefix("report.")] = _elapsed_ms(started)


def _error_type(exc: Exception) -> str:
    return exc.error_type if isinstance(exc, ReportError) else type(exc).__qualname__


def _mark_span_failed(span: Span, exc: Exception) -> None:
    span.set_status(Status(StatusCode.ERROR, str(exc)[:500]))
    span.set_attribute(t.ERROR_TYPE, _error_type(exc))


def _validate(business_id: int, options: GenerationOptions | None) -> GenerationOptions:
    if isinstance(business_id, bool) or not isinstance(business_id, int):
        raise TypeError(f"business_id must be an int, not {type(business_id).__name__}")
    if business_id < 1:
        raise ValueError(f"business_id must be positive, got {business_id}")
    options = options or GenerationOptions()
    if not isinstance(options, GenerationOptions):
        raise TypeError("options must be a GenerationOptions")
    if not options.template_name or "/" in options.template_name or ".." in options.template_name:
        raise ValueError(f"invalid template name: {options.template_name!r}")
    version = options.template_version
    if version is not None and ("/" in version or ".." in version or not version):
        raise ValueError(f"invalid template version: {version!r}")
    return options


def _link_to_current() -> Sequence[Link]:
    current = trace.get_current_span().get_span_context()
    return [Link(current)] if current.is_valid else []


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
