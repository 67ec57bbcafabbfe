"""What is left when things go wrong: quarantined outbox data and abandoned reports.

Quarantine. A record the outbox cannot decode, or an outbox file SQLite cannot read, must not
stop delivery of everything else, and it must not be deleted either: it is customer lineage
that someone may still recover by hand. So it is moved to ``<outbox dir>/quarantine/``: the
raw bytes (or the file with its WAL) plus a small JSON note saying what it was and why it was
moved. Notes never contain payload bytes, only the kind, the reason and where it came from.

Abandoned reports. The outbox keeps an "open report" marker from the start of a report trace
until its record is put; a dead process's marker without a record is a report that never
ended. ``abandoned_record`` turns it into a failed lineage record, and ``mark_abandoned``
marks the report service's own ``report_generation`` row failed the same way.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path

import orjson
from sqlalchemy import Engine, column, table, update

from otel_lineage.delivery.handoff import ReportStart
from otel_lineage.record import CODEC, LineageRecord, clean_text, compress

QUARANTINE_DIR = "quarantine"
NOTE_SUFFIX = ".json"
ABANDONED = "abandoned"
ABANDONED_REASON = "process_died_before_report_ended"
#: The span id of a root that was never seen (the invalid span id of the W3C spec).
UNKNOWN_SPAN_ID = "0" * 16
_EMPTY_TREE = orjson.dumps({"resource": {}, "trace_state": "", "spans": []})
_SQLITE_COMPANIONS = ("-wal", "-shm")

_generations = table(
    "report_generation",
    column("id"),
    column("status"),
    column("error_type"),
    column("error_message"),
    column("completed_at"),
    column("trace_id"),
)


@dataclass(frozen=True, slots=True)
class QuarantinedItem:
    path: Path
    kind: str  # "record" | "file"
    reason: str
    bytes: int
    quarantined_at: float


def quarantine_dir(outbox_dir: Path) -> Path:
    return outbox_dir / QUARANTINE_DIR


def quarantine_record(outbox_dir: Path, data: object, *, source: str, reason: str) -> Path:
    """Write one undecodable record's raw bytes, and its note, under the quarantine dir."""
    target = quarantine_dir(outbox_dir)
    target.mkdir(parents=True, exist_ok=True)
    path = target / f"record-{source}-{uuid.uuid4().hex[:12]}.bin"
    path.write_bytes(_raw(data))
    _write_note(path, kind="record", reason=reason, source=source)
    return path


def quarantine_file(outbox_dir: Path, db_path: Path, *, reason: str) -> Path:
    """Move an unreadable outbox file (and its WAL and shared-memory files) aside."""
    target = quarantine_dir(outbox_dir)
    target.mkdir(parents=True, exist_ok=True)
    moved = target / f"file-{uuid.uuid4().hex[:12]}-{db_path.name}"
    for suffix in _SQLITE_COMPANIONS:
        companion = Path(f"{db_path}{suffix}")
        if companion.exists():
            shutil.move(companion, Path(f"{moved}{suffix}"))
    shutil.move(db_path, moved)  # last: a missing .db means the move is complete
    _write_note(moved, kind="file", reason=reason, source=db_path.name)
    return moved


def inspect_quarantine(outbox_dir: Path) -> list[QuarantinedItem]:
    """Every quarantined record and file under ``outbox_dir``, oldest first.

    A data file whose note is missing or unreadable is still listed (reason ``unknown``):
    what is in quarantine is shown whatever state the notes are in.
    """
    target = quarantine_dir(outbox_dir)
    if not target.is_dir():
        return []
    items = []
    for path in target.iterdir():
        if path.name.endswith((NOTE_SUFFIX, f"{NOTE_SUFFIX}.tmp", *_SQLITE_COMPANIONS)):
            continue
        note = _read_note(path)
        kind = note.get("kind") if note.get("kind") in ("record", "file") else _kind_of(path)
        size = sum(
            p.stat().st_size
            for p in (path, *(Path(f"{path}{s}") for s in _SQLITE_COMPANIONS))
            if p.is_file()
        )
        at = note.get("quarantined_at")
        items.append(
            QuarantinedItem(
                path=path,
                kind=str(kind),
                reason=str(note.get("reason") or "unknown"),
                bytes=size,
                quarantined_at=float(at) if isinstance(at, int | float) else path.stat().st_mtime,
            )
        )
    return sorted(items, key=lambda item: (item.quarantined_at, item.path.name))


def abandoned_record(
    trace_id: object,
    report_generation_id: object,
    started_at: object,
    start: ReportStart | None = None,
) -> LineageRecord:
    """The lineage of a report whose process died before the report ended.

    The values come from an orphan outbox's marker, as stored: anything malformed in the ids or
    the time (not a trace id, a time out of range) is a ``ValueError``; a malformed detail of
    ``start`` (business, template, attempt) is left out, never a reason to lose the record.
    """
    start = start or ReportStart()
    if not (isinstance(trace_id, str) and len(trace_id) == 32 and _is_hex(trace_id)):
        raise ValueError("marker trace id is not 32 hex digits")
    if report_generation_id is not None and not (
        isinstance(report_generation_id, str) and 0 < len(report_generation_id) <= 36
    ):
        raise ValueError("marker report id is not a report id")
    if isinstance(started_at, bool) or not isinstance(started_at, int | float):
        raise ValueError("marker start time is not a number")
    started = datetime.fromtimestamp(float(started_at), UTC)  # OverflowError/OSError if absurd
    values: dict[str, object] = {f.name: None for f in fields(LineageRecord)}
    values.update(
        trace_id=trace_id,
        root_span_id=UNKNOWN_SPAN_ID,
        report_generation_id=report_generation_id,
        business_id=_bounded_int(start.business_id),
        template_name=_bounded_text(start.template_name),
        template_version=_bounded_text(start.template_version),
        attempt=_bounded_int(start.attempt),
        status="failed",
        error_type=ABANDONED,
        error_message="the process died before the report ended",
        started_at=started,
        steps=[],
        input_tables=[],
        span_count=0,
        span_tree=compress(_EMPTY_TREE),
        span_tree_codec=CODEC,
        sampled=False,
        complete=False,
        incomplete_reasons=[ABANDONED_REASON],
        created_at=datetime.now(UTC),
    )
    return LineageRecord(**values)  # type: ignore[arg-type]


def mark_abandoned(reports_engine: Engine, attempts: Iterable[tuple[str, str]]) -> int:
    """Mark still-``generating`` report rows of dead processes failed/abandoned; how many.

    ``attempts`` are (report id, trace id) pairs. A row is marked only while it still names
    that trace: a queued generation whose task was redelivered names its newer attempt (or, in
    the moment between its claim and its start, no trace), which is left alone.
    """
    pairs = sorted(set(attempts))
    if not pairs:
        return 0
    marked = 0
    with reports_engine.begin() as conn:
        for report_id, trace_id in pairs:
            result = conn.execute(
                update(_generations)
                .where(_generations.c.id == report_id)
                .where(_generations.c.status == "generating")
                .where(_generations.c.trace_id == trace_id)
                .values(
                    status="failed",
                    error_type=ABANDONED,
                    error_message="the process died before the report ended",
                    completed_at=datetime.now(UTC),
                )
            )
            marked += result.rowcount
    return marked


def _raw(data: object) -> bytes:
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    if isinstance(data, str):
        return data.encode("utf-8", "surrogatepass")
    return repr(data).encode("utf-8", "backslashreplace")


def _write_note(path: Path, *, kind: str, reason: str, source: str) -> None:
    note = {"kind": kind, "reason": reason, "source": source, "quarantined_at": time.time()}
    temporary = Path(f"{path}{NOTE_SUFFIX}.tmp")
    temporary.write_bytes(orjson.dumps(note))
    os.replace(temporary, Path(f"{path}{NOTE_SUFFIX}"))


def _bounded_int(value: object) -> int | None:
    """An integer column's value (32 bits on PostgreSQL), or None."""
    if isinstance(value, int) and not isinstance(value, bool) and -(2**31) <= value < 2**31:
        return value
    return None


def _bounded_text(value: object) -> str | None:
    """A short name (template name or version, at most 100 characters), cleaned, or None."""
    return clean_text(value) if isinstance(value, str) and 0 < len(value) <= 100 else None


def _is_hex(text: str) -> bool:
    return all(ch in "0123456789abcdef" for ch in text)


def _read_note(path: Path) -> dict[str, object]:
    note_path = Path(f"{path}{NOTE_SUFFIX}")
    try:
        if not stat.S_ISREG(os.stat(note_path).st_mode) or note_path.stat().st_size > 65_536:
            return {}  # a FIFO or a device would block or never end: not a note
    except OSError:
        return {}
    with contextlib.suppress(OSError, orjson.JSONDecodeError):
        note = orjson.loads(note_path.read_bytes())
        if isinstance(note, dict):
            return note
    return {}


def _kind_of(path: Path) -> str:
    return "record" if path.name.startswith("record-") else "file"
