"""Loading a report's inputs from SQL and freezing them into one canonical snapshot.

The snapshot is sorted-key JSON bytes (orjson). It is exactly what the template receives (the
template context is decoded from these bytes), so its sha256 identifies the data of a report and
re-rendering from a stored snapshot reproduces the report.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.exc import DataError, OperationalError
from sqlalchemy.orm import Session

from d6_reports.errors import AssessmentNotFoundError, BusinessNotFoundError, InputsError
from d6_reports.models import Business, Finding, WebsiteAssessment

SNAPSHOT_SCHEMA = "d6.report-inputs/1"
#: Tables a report reads, in the order it reads them (recorded on the span for lineage).
INPUT_TABLES: tuple[str, ...] = (
    Business.__tablename__,
    WebsiteAssessment.__tablename__,
    Finding.__tablename__,
)
DEFAULT_MAX_SNAPSHOT_BYTES = 16 * 1024 * 1024
#: Longest text value handed to a template: a 5 MB business name would keep WeasyPrint busy
#: for minutes. The longest legitimate value (a finding's evidence) is a few KB.
DEFAULT_MAX_FIELD_CHARS = 20_000


@dataclass(frozen=True, slots=True)
class InputSnapshot:
    data: bytes
    sha256: str
    findings: int

    @property
    def size(self) -> int:
        return len(self.data)

    def decode(self) -> dict[str, Any]:
        decoded: dict[str, Any] = orjson.loads(self.data)
        return decoded


def load_inputs(
    session: Session,
    business_id: int,
    *,
    max_bytes: int = DEFAULT_MAX_SNAPSHOT_BYTES,
    max_field_chars: int = DEFAULT_MAX_FIELD_CHARS,
) -> InputSnapshot:
    """Read the business and its latest assessment; freeze them into a snapshot.

    A stored value that cannot be read (a date that does not parse, text that is not UTF-8, a
    number in a text column the driver refuses) is an ``InputsError`` of this report, never an
    exception that stops a batch. Its message names the business; the driver's own text, which
    may quote the value, is kept in the message only (it goes to the database, never to spans).
    """
    try:
        document = _read(session, business_id, max_field_chars)
    except (ValueError, TypeError, ArithmeticError, UnicodeError, DataError) as exc:
        raise InputsError(
            f"business {business_id}: a stored value cannot be read "
            f"({type(exc).__qualname__}: {exc})"
        ) from exc
    except OperationalError as exc:
        if not _is_decode_error(exc):
            raise
        raise InputsError(
            f"business {business_id}: a stored text value is not valid UTF-8 ({exc.orig})"
        ) from exc
    return make_snapshot(document, max_bytes=max_bytes)


def _read(session: Session, business_id: int, max_field_chars: int) -> dict[str, Any]:
    business = session.get(Business, business_id)
    if business is None:
        raise BusinessNotFoundError(f"business {business_id} does not exist")
    assessment = session.scalars(
        select(WebsiteAssessment)
        .where(WebsiteAssessment.business_id == business_id)
        .order_by(WebsiteAssessment.assessed_at.desc(), WebsiteAssessment.id.desc())
        .limit(1)
    ).first()
    if assessment is None:
        raise AssessmentNotFoundError(f"business {business_id} has no website assessment")
    return {
        "schema": SNAPSHOT_SCHEMA,
        "business": _columns(business, max_field_chars),
        "assessment": _columns(assessment, max_field_chars),
        "findings": [_columns(f, max_field_chars) for f in assessment.findings],
    }


def _is_decode_error(exc: OperationalError) -> bool:
    # sqlite3 reports undecodable TEXT as an OperationalError ("Could not decode to UTF-8").
    return "decode" in str(exc.orig).lower()


def make_snapshot(
    document: dict[str, Any], *, max_bytes: int = DEFAULT_MAX_SNAPSHOT_BYTES
) -> InputSnapshot:
    """Canonical bytes of ``document``; rejects what JSON cannot carry faithfully."""
    _reject_non_finite(document)
    try:
        data = orjson.dumps(document, option=orjson.OPT_SORT_KEYS | orjson.OPT_UTC_Z)
    except TypeError as exc:  # orjson.JSONEncodeError subclasses TypeError
        raise InputsError(f"inputs are not JSON-serialisable: {exc}") from exc
    if len(data) > max_bytes:
        raise InputsError(f"input snapshot is {len(data)} bytes, over the {max_bytes}-byte limit")
    return InputSnapshot(
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        findings=len(document.get("findings", ())),
    )


def _columns(row: object, max_chars: int) -> dict[str, Any]:
    table = row.__table__  # type: ignore[attr-defined]
    values: dict[str, Any] = {}
    for column in table.columns:
        value = getattr(row, column.key)
        _check_length(value, f"{table.name}.{column.key}", max_chars)
        if isinstance(value, datetime):
            # Every stored time is UTC; SQLite returns it naive, PostgreSQL in the session's
            # zone. Normalise so the same data gives the same bytes on both.
            value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        values[column.key] = value
    return values


def _check_length(value: Any, path: str, max_chars: int) -> None:
    """Refuse text longer than ``max_chars``, in a column or nested in a JSON column."""
    if isinstance(value, str):
        if len(value) > max_chars:
            raise InputsError(
                f"{path} is {len(value)} characters, over the {max_chars}-character limit"
            )
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_length(str(key), f"{path} (a key)", max_chars)
            _check_length(item, f"{path}.{key}"[:200], max_chars)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_length(item, f"{path}[{index}]", max_chars)


def _reject_non_finite(value: Any, path: str = "$") -> None:
    # orjson would silently turn NaN/Infinity into null: a changed input is worse than an error.
    if isinstance(value, float) and not math.isfinite(value):
        raise InputsError(f"inputs contain a non-finite number at {path}: {value}")
    if isinstance(value, dict):
        for key, item in value.items():
            _reject_non_finite(item, f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _reject_non_finite(item, f"{path}[{index}]")
