"""The worker parent adopts dead processes' lineage outboxes: ``otel-lineage outbox flush``.

Each pool child writes its lineage records to its own outbox file before a report returns, and
ships them from there. A child that is killed (SIGKILL, out of memory, a hard time limit) or
recycled before its writer caught up leaves its file behind, with an "open report" marker for a
report it never finished. Another child's writer adopts such files sooner or later; the parent
makes it certain at the two moments it matters: when the worker starts (what the last run on
this host left) and when it stops (what its own children left, once none is running).

The parent never starts OpenTelemetry (a tracer provider and writer threads made before the
fork would be dead in every child), and this package never imports the lineage plugin: so the
parent runs the plugin's own command, the same thing an operator runs by hand. It is best
effort by design: a lineage database that is down now only delays the records, which stay in
the files (nothing is deleted before it is written); the command's one-line answer is logged.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

_log = logging.getLogger(__name__)
COMMAND = "otel-lineage"
#: Seconds the flush may wait for the lineage database (``--db-timeout``), and in all.
DB_TIMEOUT_S = 10
TIMEOUT_S = 120.0


@dataclass(frozen=True, slots=True)
class AdoptionResult:
    """What the flush said: ``ok`` and its last line (a summary, or the error)."""

    ok: bool
    message: str


def adopt_dead_outboxes(*, when: str) -> AdoptionResult | None:
    """Run ``otel-lineage outbox flush`` and log its answer; None when there is nothing to do.

    Nothing to do: lineage keeps its records in memory (``OTEL_LINEAGE_OUTBOX=memory``), or the
    plugin's command is not installed. ``when`` ("start", "stop") is for the log line.
    """
    if os.environ.get("OTEL_LINEAGE_OUTBOX", "").strip().lower() == "memory":
        return None
    command = _command()
    if command is None:
        _log.warning(
            "%s not found: dead processes' lineage outboxes are adopted by the next worker "
            "process only",
            COMMAND,
        )
        return None
    try:
        done = subprocess.run(
            [command, "--db-timeout", str(DB_TIMEOUT_S), "outbox", "flush"],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        result = AdoptionResult(ok=False, message=f"{type(exc).__name__}: {exc}")
    else:
        lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
        message = lines[-1].strip() if lines else f"exit status {done.returncode}"
        result = AdoptionResult(ok=done.returncode == 0, message=message)
    if result.ok:
        _log.info("lineage outboxes at worker %s: %s", when, result.message)
    else:
        _log.warning(
            "lineage outboxes at worker %s not adopted (%s); they stay on disk for the next flush",
            when,
            result.message,
        )
    return result


def _command() -> str | None:
    """The plugin's command beside this interpreter (the same environment), else on PATH."""
    beside = Path(sys.executable).parent / COMMAND
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(COMMAND)
