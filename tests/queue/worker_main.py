"""A Celery worker node for the queue tests: ``python -m tests.queue.worker_main [options]``.

It is ``d6-reports worker`` with one difference: unless ``--real-pdf`` is given, the PDF step
is the fast pydyf stand-in (``tests.fast_pdf``), set through the documented test seam
``d6_reports.queue.tasks.converter_factory`` before the pool forks, so every pool child
(recycled ones included) inherits it. Spans, the fold, the outbox, the broker and the database
stay real. Two more seams, read by the converter in the pool child at each conversion:

- ``D6_TEST_PDF_DELAY_S``: sleep this long in every conversion (spreads a run over time, so a
  fault can be injected while tasks are still queued);
- ``D6_TEST_STALL_MARKER``: the first conversion that creates this file (atomically, with its
  process id in it) then stalls for ``D6_TEST_STALL_S`` seconds (default 300): a report the
  test can kill its process in the middle of. Later conversions see the file and do not stall.

``--exit-without-flush`` makes every pool child leave the way a stock Celery child does under
``opentelemetry-instrument``: at ``worker_process_shutdown`` (a recycled child) it exits at once,
before the service's own handler flushes the tracer provider, so whatever the SDK's
``BatchSpanProcessor`` still buffers is lost (opentelemetry-python-contrib issue 4916), and the
lineage writer never drains its outbox either: only the outbox can save that child's lineage.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from d6_reports.pdf import PDFOutput
from tests.fast_pdf import FastPDFConverter

DELAY_ENV = "D6_TEST_PDF_DELAY_S"
STALL_MARKER_ENV = "D6_TEST_STALL_MARKER"
STALL_SECONDS_ENV = "D6_TEST_STALL_S"


class SeamConverter(FastPDFConverter):
    """The fast converter, with the delay and stall seams described above."""

    def convert(self, html: str, *, asset_root: Path, **options: Any) -> PDFOutput:
        marker = os.environ.get(STALL_MARKER_ENV)
        if marker and _claim(Path(marker)):
            time.sleep(float(os.environ.get(STALL_SECONDS_ENV) or 300))
        delay = float(os.environ.get(DELAY_ENV) or 0)
        if delay > 0:
            time.sleep(delay)
        return super().convert(html, asset_root=asset_root, **options)


def _claim(marker: Path) -> bool:
    """Create ``marker`` holding this process id, atomically; False if it already exists."""
    scratch = marker.with_name(f"{marker.name}.{os.getpid()}.tmp")
    scratch.write_text(str(os.getpid()))
    try:
        os.link(scratch, marker)  # fails if the marker exists: exactly one process claims it
    except FileExistsError:
        return False
    finally:
        with contextlib.suppress(OSError):
            scratch.unlink()
    return True


def _exit_now(**_kwargs: Any) -> None:
    os._exit(0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--max-tasks-per-child", type=int, default=None)
    parser.add_argument("--hostname", default=None, help="Celery node name (name@host)")
    parser.add_argument("--loglevel", default="INFO")
    parser.add_argument("--real-pdf", action="store_true", help="render with WeasyPrint")
    parser.add_argument("--exit-without-flush", action="store_true", help="see the docstring")
    args = parser.parse_args(argv)
    if args.exit_without_flush:
        from celery import signals

        # Connected before run_worker connects its own handler: receivers run in order.
        signals.worker_process_shutdown.connect(_exit_now, weak=False)

    from d6_reports.queue import tasks, worker

    if not args.real_pdf:
        tasks.converter_factory = SeamConverter
    return int(
        worker.run_worker(
            concurrency=args.concurrency,
            max_tasks_per_child=args.max_tasks_per_child,
            node_name=args.hostname,
            loglevel=args.loglevel,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
