"""The operations the API and the pages share, each over the reading functions.

The reads the access log covers (input snapshot, PDF, verify, identify) run as one transaction
that reads the row and appends the log entry, whatever the outcome: a reader who was refused,
asked for an unknown report or hit a damaged file is on record as much as one who got the data.
The PDF served is only ever the file the row records, resolved inside the reports directory.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from sqlalchemy import Engine

from otel_lineage.delivery.outbox import open_reports, pending_generation_ids
from otel_lineage.delivery.store import untraced
from otel_lineage.protection.snapshots import has_snapshot
from otel_lineage.reading.query import (
    AmbiguousIdError,
    attempts_of,
    audit,
    get_row,
    inputs_summary,
    public_row,
    read_named_report,
    read_row,
    read_rows_by_output,
)
from otel_lineage.reading.verify import VerifyError, stored_snapshot
from otel_lineage.settings import MEMORY_OUTBOX
from otel_lineage.web.deps import Requester, log_access
from otel_lineage.web.errors import ApiError
from otel_lineage.web.security import Principal
from otel_lineage.web.settings import WebSettings

T = TypeVar("T")
#: Largest PDF served (read whole to check its digest; the biggest demo report is < 1 MB).
MAX_PDF_BYTES = 256 << 20
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def not_found(report_id: str, exc: LookupError) -> ApiError:
    if isinstance(exc, AmbiguousIdError):
        return ApiError(409, "ambiguous_id", str(exc))
    return ApiError(404, "report_not_found", f"no lineage row for report {report_id!r}")


def find_row(engine: Engine, report_id: str) -> dict[str, Any]:
    try:
        return get_row(engine, report_id)
    except LookupError as exc:
        raise not_found(report_id, exc) from exc


def logged_read(
    engine: Engine,
    user: Principal,
    origin: Requester,
    action: str,
    report_id: str,
    use: Callable[[dict[str, Any]], T],
) -> T:
    """Read the row, ``use`` it and append the access-log entry, in one transaction."""
    failure: ApiError | None = None
    result: T | None = None
    logged_id = report_id
    with untraced(), engine.begin() as conn:
        try:
            row = read_row(conn, report_id)
            logged_id = str(row["report_generation_id"])
            result = use(row)
        except LookupError as exc:
            failure = not_found(report_id, exc)
        except ApiError as exc:
            failure = exc
        outcome = "allowed"
        if failure is not None:
            missing = failure.status == 404 or failure.code == "ambiguous_id"
            outcome = "not_found" if missing else "error"
        log_access(
            conn,
            user,
            origin,
            action,
            outcome=outcome,
            report_id=logged_id,
            detail=None if failure is None else failure.code,
        )
    if failure is not None:
        raise failure
    return result  # type: ignore[return-value]


def snapshot(row: dict[str, Any]) -> bytes:
    """The input snapshot exactly as recorded, checked against its sha256."""
    if not has_snapshot(row):
        why = "pruned by retention" if row.get("pruned_at") else "never captured"
        raise ApiError(404, "inputs_not_stored", f"this report's input snapshot is {why}")
    try:
        return stored_snapshot(row)
    except VerifyError as exc:
        raise ApiError(409, "integrity_check_failed", str(exc)) from exc


def pdf_bytes(row: dict[str, Any], reports_dir: Path) -> bytes:
    """The PDF file the row records, only inside ``reports_dir``, checked against its digest."""
    uri = row.get("output_uri")
    if not uri:
        raise ApiError(404, "pdf_not_recorded", "this report has no stored PDF")
    parts = urlsplit(str(uri))
    path = Path(unquote(parts.path))
    if parts.scheme != "file" or parts.netloc not in ("", "localhost") or ".." in path.parts:
        raise ApiError(404, "pdf_outside_reports_dir", "the recorded PDF is not a local file")
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError, ValueError):  # ValueError: an embedded NUL
        raise ApiError(404, "pdf_missing", "the recorded PDF file is gone") from None
    if not path.is_absolute() or not resolved.is_relative_to(reports_dir.resolve()):
        raise ApiError(
            404,
            "pdf_outside_reports_dir",
            "the recorded PDF is outside the configured reports directory (D6_REPORTS_DIR)",
        )
    not_servable = ApiError(404, "pdf_missing", "the recorded PDF is not a servable file")
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; the fstat below refuses it.
        fd = os.open(resolved, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        raise ApiError(404, "pdf_missing", "the recorded PDF file cannot be opened") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_PDF_BYTES:
            raise not_servable
        with os.fdopen(fd, "rb") as handle:
            fd = -1  # the file object owns it now
            data = handle.read(MAX_PDF_BYTES + 1)
    except OSError:
        raise not_servable from None
    finally:
        if fd >= 0:
            os.close(fd)
    if hashlib.sha256(data).hexdigest() != row.get("output_sha256"):
        raise ApiError(
            409,
            "integrity_check_failed",
            "the PDF file on disk does not match the sha256 its lineage recorded",
        )
    return data


def download_name(row: dict[str, Any], suffix: str) -> str:
    stem = f"{row.get('template_name')}-{row.get('template_version')}-{row['report_generation_id']}"
    return f"{_UNSAFE_NAME.sub('_', stem)[:150]}{suffix}"


def has_output(engine: Engine, sha256: str) -> bool:
    """Whether some lineage row's PDF has ``sha256`` (an exact copy: nothing to parse)."""
    with untraced(), engine.connect() as conn:
        return bool(read_rows_by_output(conn, sha256))


def identify_rows(
    engine: Engine, user: Principal, origin: Requester, sha256: str, named_id: str | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The rows whose PDF has ``sha256``, else the row of the report a modified copy names
    (``named_id``, exact ids only), with the lookup logged in the same transaction."""
    with untraced(), engine.begin() as conn:
        rows = read_rows_by_output(conn, sha256)
        copy_of = None
        if not rows and named_id is not None:
            found = read_named_report(conn, named_id)
            copy_of = None if found is None else public_row(found)
        if rows:
            detail = f"sha256 {sha256}; {len(rows)} match(es)"
        elif copy_of is not None:
            detail = f"sha256 {sha256}; modified copy of {named_id}"
        else:
            detail = f"sha256 {sha256}; 0 match(es)"
        single = str(rows[0]["report_generation_id"]) if len(rows) == 1 else None
        log_access(
            conn,
            user,
            origin,
            "identify",
            outcome="allowed" if rows or copy_of else "not_found",
            report_id=single or (named_id if copy_of else None),
            detail=detail,
        )
    return rows, copy_of


def report_detail(engine: Engine, row: dict[str, Any], settings: WebSettings) -> dict[str, Any]:
    """One report's lineage, JSON-ready: the row without blobs, its inputs summary, links,
    and the generation's other attempts (a queued report redelivered or retried)."""
    try:
        inputs = inputs_summary(row)
    except Exception as exc:  # a corrupt blob is shown, never fatal to showing the row
        inputs = {"stored": True, "error": type(exc).__name__}
    jaeger = settings.jaeger_url
    return {
        **public_row(row),
        "inputs": inputs,
        "jaeger_url": f"{jaeger}/trace/{row['trace_id']}"
        if jaeger and row.get("exported")
        else None,
        "other_attempts": [
            public_row(a)
            for a in attempts_of(engine, str(row["report_generation_id"]))
            if a["trace_id"] != row["trace_id"]
        ],
    }


def audit_answer(
    reports: Engine, lineage: Engine, settings: WebSettings, limit: int, **period: Any
) -> dict[str, Any]:
    """``reading.audit`` with what the local outbox explains (waiting and open reports)."""
    directory = None if settings.outbox in (None, MEMORY_OUTBOX) else Path(settings.outbox)
    present = directory is not None and directory.is_dir()
    report = audit(
        reports,
        lineage,
        waiting=pending_generation_ids(directory) if directory and present else {},
        open_reports=open_reports(directory) if directory and present else {},
        **period,
    )
    return report.as_dict(limit)
