"""Generating many reports, in this process or in a pool of worker processes.

Workers are *spawned*, not forked: each builds its own engine and generator from the
environment, so no connection, lock or thread crosses a process boundary. A worker process ends
with ``os._exit`` (no ``atexit``), so each registers a multiprocessing finalizer that flushes the
tracer provider it was given (by ``opentelemetry-instrument`` or a lineage configuration):
without it, the last spans of every worker would be lost.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing.util import Finalize

from opentelemetry import metrics, trace

from d6_reports.bootstrap import REPORT_COMMAND_UNUSED, start_telemetry
from d6_reports.generator import GenerationOptions, GenerationResult
from d6_reports.service import ReportService


@dataclass(frozen=True, slots=True)
class BatchItem:
    """What a batch reports per generation (picklable, small)."""

    business_id: int
    success: bool
    generation_id: str
    pages: int | None
    pdf_path: str | None
    error_type: str | None
    #: The error type's fixed description (never the message, which may quote customer data).
    error_description: str | None
    duration_ms: float

    @classmethod
    def failed(cls, business_id: int, exc: BaseException) -> BatchItem:
        """A generation that could not even report its own result (its worker died)."""
        return cls(
            business_id=business_id,
            success=False,
            generation_id="",
            pages=None,
            pdf_path=None,
            error_type=type(exc).__qualname__,
            error_description=f"{type(exc).__qualname__}: the worker process failed",
            duration_ms=0.0,
        )

    @classmethod
    def from_result(cls, result: GenerationResult) -> BatchItem:
        return cls(
            business_id=result.business_id,
            success=result.success,
            generation_id=result.generation_id,
            pages=result.pages,
            pdf_path=str(result.pdf_path) if result.pdf_path else None,
            error_type=result.error_type,
            error_description=result.error_description,
            duration_ms=round(sum(result.timings_ms.values()), 3),
        )


def run_batch(
    business_ids: Sequence[int],
    options: GenerationOptions,
    *,
    workers: int = 1,
    service: ReportService | None = None,
) -> Iterator[BatchItem]:
    """Yield one ``BatchItem`` per business id as generations finish (any order when pooled).

    One business's failure, even one that kills its worker process, is that business's failed
    item: the batch always goes on to the end.
    """
    if workers < 1:
        raise ValueError("workers must be at least 1")
    if workers == 1:
        own = service is None
        service = service or ReportService.from_settings()
        try:
            for business_id in business_ids:
                try:
                    result = service.generator.generate_report_sync(business_id, options)
                except Exception as exc:  # invalid id: this business's failure only
                    yield BatchItem.failed(business_id, exc)
                else:
                    yield BatchItem.from_result(result)
        finally:
            if own:
                service.close()
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker) as pool:
        futures = {pool.submit(_generate_in_worker, b, options): b for b in business_ids}
        for future in as_completed(futures):
            try:
                yield future.result()
            except Exception as exc:  # the worker died or could not start
                yield BatchItem.failed(futures[future], exc)


_worker_service: ReportService | None = None


def _init_worker() -> None:
    global _worker_service
    # Spawned: nothing of the parent's telemetry exists here. Bring it up like the parent did
    # (its warnings were shown by the parent already).
    start_telemetry(warn=lambda _message: None, unused_instrumentations=REPORT_COMMAND_UNUSED)
    _worker_service = ReportService.from_settings()
    Finalize(None, flush_telemetry, exitpriority=10)


def _generate_in_worker(business_id: int, options: GenerationOptions) -> BatchItem:
    assert _worker_service is not None, "worker not initialised"
    return BatchItem.from_result(
        _worker_service.generator.generate_report_sync(business_id, options)
    )


def flush_telemetry() -> None:
    """Shut down whatever tracer/meter provider is installed (API only: duck-typed)."""
    for provider in (trace.get_tracer_provider(), metrics.get_meter_provider()):
        shutdown: Callable[[], object] | None = getattr(provider, "shutdown", None)
        if shutdown is not None:
            shutdown()
