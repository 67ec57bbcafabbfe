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
    session: Session, business_id: int, *, max_bytes: int = DEFAULT_MAX_SNAPSHOT_BYTES
) -> InputSnapshot:
    """Read the business and its latest assessment; freeze them into a snapshot."""
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
    document = {
        "schema": SNAPSHOT_SCHEMA,
        "business": _columns(business),
        "assessment": _columns(assessment),
        "findings": [_columns(f) for f in assessment.findings],
    }
    return make_snapshot(document, max_bytes=max_bytes)


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


def _columns(row: object) -> dict[str, Any]:
    table = row.__table__  # type: ignore[attr-defined]
    values: dict[str, Any] = {}
    for column in table.columns:
        value = getattr(row, column.key)
        if isinstance(value, datetime):
            # Every stored time is UTC; SQLite returns it naive, PostgreSQL in the session's
            # zone. Normalise so the same data gives the same bytes on both.
            value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        values[column.key] = value
    return values


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
