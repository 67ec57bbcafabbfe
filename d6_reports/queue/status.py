"""Where a queued report is: its ``report_generation`` row and its lineage rows.

The queue itself is never asked: with no result backend the database is the only record of a
report's outcome, and it is the same for every worker host. The lineage rows are read by table
name (this package never imports the lineage plugin) from the lineage database, which is the
report database unless ``OTEL_LINEAGE_DATABASE_URL`` names another one. A lineage database that
cannot be read is reported as such, never as "no lineage".

Nothing shown here is customer data: ids, states, error types with their fixed descriptions,
digests of nothing, the PDF's path and size.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Table, column, func, select, table
from sqlalchemy.exc import SQLAlchemyError

from d6_reports.errors import describe
from d6_reports.models import ReportGeneration

#: A generation id (a UUID's canonical text) or the start of one.
_ID_PREFIX = re.compile(r"[0-9a-f][0-9a-f-]{0,35}")
_GENERATIONS: Table = ReportGeneration.__table__  # type: ignore[assignment]
_lineage = table(
    "report_lineage",
    column("report_generation_id"),
    column("trace_id"),
    column("status"),
    column("error_type"),
    column("attempt"),
    column("started_at"),
    column("id"),
)


class GenerationLookupError(LookupError):
    """No generation, or several, match what was asked; the message is one line."""


@dataclass(frozen=True, slots=True)
class LineageAttempt:
    """One attempt's lineage row (one trace)."""

    trace_id: str
    attempt: int | None
    status: str
    error_type: str | None


@dataclass(frozen=True, slots=True)
class GenerationState:
    """A generation as the database knows it, with its lineage (see ``lineage_error``)."""

    generation_id: str
    business_id: int
    template_name: str
    template_version: str | None
    status: str
    attempts: int
    requested_at: datetime | None
    completed_at: datetime | None
    pdf_path: str | None
    pdf_pages: int | None
    pdf_bytes: int | None
    error_type: str | None
    #: The error type's fixed sentence (the stored message may quote customer data).
    error_description: str | None
    trace_id: str | None
    lineage: list[LineageAttempt] = field(default_factory=list)
    #: Why the lineage rows could not be read (None when they were).
    lineage_error: str | None = None

    @property
    def lineage_present(self) -> bool | None:
        """Whether the attempt the row names (its trace) has its lineage row; None: unknown."""
        if self.lineage_error is not None:
            return None
        return any(a.trace_id == self.trace_id for a in self.lineage) if self.trace_id else False

    def as_dict(self) -> dict[str, Any]:
        document = asdict(self)
        document["lineage_present"] = self.lineage_present
        return document


def check_generation_id(text: str) -> str:
    """``text`` as a generation id or prefix (lower case); ``ValueError`` when it is neither."""
    value = text.strip().lower()
    if not _ID_PREFIX.fullmatch(value):
        raise ValueError(
            "a generation id is a UUID (or the start of one): hex digits and '-', "
            "at most 36 characters"
        )
    return value


def generation_state(
    reports: Engine, generation_id: str, *, lineage: Engine | None = None
) -> GenerationState:
    """The generation ``generation_id`` names (a full id or a unique prefix).

    ``lineage``: the lineage database (default: ``reports``). Raises ``ValueError`` for text
    that cannot be an id and ``GenerationLookupError`` when no row or several rows match.
    """
    wanted = check_generation_id(generation_id)
    generations = _GENERATIONS
    with reports.connect() as conn:
        found = select(generations).where(generations.c.id == wanted)
        row = conn.execute(found).mappings().first()
        if row is None:
            prefixed = generations.c.id.startswith(wanted, autoescape=True)
            matches = conn.execute(select(generations).where(prefixed).limit(2)).mappings().all()
            if len(matches) > 1:
                count = conn.scalar(select(func.count()).select_from(generations).where(prefixed))
                raise GenerationLookupError(
                    f"generation id prefix {wanted!r} matches {count} generations; give more of it"
                )
            row = matches[0] if matches else None
    if row is None:
        raise GenerationLookupError(f"no report generation {wanted!r}")
    attempts, error = _lineage_attempts(lineage or reports, str(row["id"]))
    error_type = row["error_type"]
    return GenerationState(
        generation_id=str(row["id"]),
        business_id=int(row["business_id"]),
        template_name=str(row["template_name"]),
        template_version=row["template_version"],
        status=str(row["status"]),
        attempts=int(row["attempts"] or 0),
        requested_at=row["requested_at"],
        completed_at=row["completed_at"],
        pdf_path=row["pdf_path"],
        pdf_pages=row["pdf_pages"],
        pdf_bytes=row["pdf_bytes"],
        error_type=error_type,
        error_description=describe(error_type) if error_type else None,
        trace_id=row["trace_id"],
        lineage=attempts,
        lineage_error=error,
    )


def _lineage_attempts(
    engine: Engine, generation_id: str
) -> tuple[list[LineageAttempt], str | None]:
    c = _lineage.c
    query = (
        select(c.trace_id, c.attempt, c.status, c.error_type)
        .where(c.report_generation_id == generation_id)
        .order_by(func.coalesce(c.attempt, 0), c.started_at, c.id)
    )
    try:
        with engine.connect() as conn:
            rows = conn.execute(query).all()
    except SQLAlchemyError as exc:
        orig = getattr(exc, "orig", None) or exc
        first = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
        return [], f"{type(orig).__name__}: {first[:200]}"
    return [
        LineageAttempt(
            trace_id=str(r.trace_id),
            attempt=int(r.attempt) if r.attempt is not None else None,
            status=str(r.status),
            error_type=r.error_type,
        )
        for r in rows
    ], None
