"""Reading lineage: one report's row, and the audit that reconciles reports with lineage.

The audit reads ``report_generation`` (the report service's own record of every call) and
``report_lineage`` by name only (the plugin never imports the generator). They may live in two
databases, so the reconciliation is done on ids in Python, bounded by ``since``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import (
    Connection,
    DateTime,
    Engine,
    Row,
    RowMapping,
    case,
    column,
    func,
    select,
    table,
)

from otel_lineage.delivery.schema import lineage_counters, report_lineage
from otel_lineage.delivery.stats import COUNTER_NAMES
from otel_lineage.delivery.store import untraced
from otel_lineage.protection import snapshots
from otel_lineage.record import decompress, snapshot_size_limit

_generations = table(
    "report_generation",
    column("id"),
    column("status"),
    column("requested_at", DateTime(timezone=True)),
    column("trace_id"),
    column("error_type"),
)
#: A generation still 'generating' this recently is in flight, not missing.
IN_FLIGHT = timedelta(minutes=10)


class LineageNotFoundError(LookupError):
    pass


class AmbiguousIdError(LookupError):
    pass


def get_row(engine: Engine, report_id: str) -> dict[str, Any]:
    """The lineage row of ``report_id``: a ``ReportGeneration`` id or a unique prefix of one."""
    with untraced(), engine.connect() as conn:
        return read_row(conn, report_id)


def read_row(conn: Connection, report_id: str) -> dict[str, Any]:
    """``get_row`` on a connection the caller holds: the web service reads a row and appends
    its access-log entry in one transaction, so the read and its record cannot part.

    A queued generation that ran more than once has a row per attempt: this is the
    authoritative one (``AUTHORITATIVE_FIRST``); ``attempts_of`` lists them all.
    """
    c = report_lineage.c
    found = _authoritative(conn, report_id)
    if found is None and report_id:
        prefixed = c.report_generation_id.startswith(report_id, autoescape=True)
        ids = conn.scalars(select(c.report_generation_id).where(prefixed).distinct().limit(2)).all()
        if len(ids) > 1:
            count = conn.scalar(
                select(func.count(c.report_generation_id.distinct())).where(prefixed)
            )
            raise AmbiguousIdError(
                f"report id prefix {report_id!r} matches {count} reports; give more of it"
            )
        if ids:
            found = _authoritative(conn, ids[0])
    if found is None:
        raise LineageNotFoundError(f"no lineage row for report {report_id!r}")
    row = _plain(found)
    snapshots.attach(conn, row)  # a shared snapshot, and the state of its key
    return row


#: Of several attempts' rows, the one that speaks for the generation: the completed one (at
#: most one attempt completes a generation), else the latest attempt.
AUTHORITATIVE_FIRST = (
    case((report_lineage.c.status == "completed", 0), else_=1),
    func.coalesce(report_lineage.c.attempt, 0).desc(),
    report_lineage.c.started_at.desc(),
    report_lineage.c.id.desc(),
)


def _authoritative(conn: Connection, report_id: str) -> RowMapping | None:
    query = (
        select(report_lineage)
        .where(report_lineage.c.report_generation_id == report_id)
        .order_by(*AUTHORITATIVE_FIRST)
        .limit(1)
    )
    return conn.execute(query).mappings().first()


def attempts_of(engine: Engine, report_id: str) -> list[dict[str, Any]]:
    """Every attempt's lineage row of one generation, oldest first (without the blobs)."""
    c = report_lineage.c
    query = (
        select(c.trace_id, c.attempt, c.status, c.error_type, c.started_at, c.complete)
        .where(c.report_generation_id == report_id)
        .order_by(func.coalesce(c.attempt, 0), c.started_at, c.id)
    )
    with untraced(), engine.connect() as conn:
        return [_plain(r) for r in conn.execute(query).mappings()]


def latest_report_id(engine: Engine) -> str:
    """The report id of the most recently started lineage row."""
    with untraced(), engine.connect() as conn:
        report_id = conn.scalar(
            select(report_lineage.c.report_generation_id)
            .where(report_lineage.c.report_generation_id.is_not(None))
            .order_by(report_lineage.c.started_at.desc(), report_lineage.c.id.desc())
            .limit(1)
        )
    if report_id is None:
        raise LineageNotFoundError("the lineage table is empty")
    return str(report_id)


def inputs_summary(row: dict[str, Any]) -> dict[str, Any]:
    """What the stored snapshot holds, after checking it against the recorded digest.

    An encrypted snapshot whose key is absent or destroyed is summarised with the reason in
    ``error`` (as a corrupt blob is by its callers) instead of raising: the rest of the row is
    still worth showing.
    """
    if not snapshots.has_snapshot(row):
        return {"stored": False}
    encrypted = snapshots.is_encrypted(row)
    try:
        blob, codec = snapshots.snapshot_blob(row)
    except snapshots.SnapshotUnreadableError as exc:
        return {"stored": True, "encrypted": encrypted, "error": str(exc)}
    data = decompress(blob, codec, max_bytes=snapshot_size_limit(row))
    digest = hashlib.sha256(data).hexdigest()
    summary: dict[str, Any] = {
        "stored": True,
        "encrypted": encrypted,
        "bytes": len(data),
        "compressed_bytes": len(blob),
        "sha256": digest,
        "sha256_matches": digest == row.get("inputs_sha256"),
    }
    document = orjson.loads(data)
    if isinstance(document, dict):
        summary["keys"] = sorted(document)
        business = document.get("business")
        if isinstance(business, dict):
            summary["business_name"] = business.get("name")
        findings = document.get("findings")
        if isinstance(findings, list):
            summary["findings"] = len(findings)
    return summary


def public_row(row: dict[str, Any]) -> dict[str, Any]:
    """The row without its binary blobs, JSON-ready."""
    hidden = ("inputs_snapshot", "span_tree", snapshots.SNAPSHOT_FIELD)
    out = {k: v for k, v in row.items() if k not in hidden}
    for key, value in out.items():
        if isinstance(value, datetime):
            out[key] = value.isoformat()
    return out


@dataclass
class AuditReport:
    since: str | None
    generations: int
    in_flight: int
    with_lineage: int
    until: str | None = None
    missing: list[dict[str, Any]] = field(default_factory=list)
    incomplete: list[dict[str, Any]] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    processes: int = 0
    #: Generations left ``generating`` by a process that is gone (also listed in ``missing``).
    abandoned: int = 0
    #: Lineage rows of attempts another attempt took over from (a queued task redelivered
    #: after its worker died, or retried after a database outage): accounted for, not lost.
    superseded_attempts: int = 0

    @property
    def capture_rate(self) -> float:
        finished = self.generations - self.in_flight
        return 1.0 if finished == 0 else self.with_lineage / finished

    def as_dict(self, limit: int | None = None) -> dict[str, Any]:
        """JSON-ready; ``limit`` caps the listed missing and incomplete reports (the totals
        are always given)."""
        out = {**asdict(self), "capture_rate": self.capture_rate}
        out["missing_total"], out["incomplete_total"] = len(self.missing), len(self.incomplete)
        if limit is not None:
            out["missing"], out["incomplete"] = self.missing[:limit], self.incomplete[:limit]
        return out


def audit(
    reports: Engine,
    lineage: Engine,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    waiting: Mapping[str, object] | None = None,
    open_reports: Mapping[str, bool] | None = None,
) -> AuditReport:
    """Reconcile generations requested in ``[since, until)`` with lineage rows.

    ``waiting`` maps report ids whose record is still in a local outbox to where it waits, so a
    missing row can be explained rather than only counted. ``open_reports`` maps the report ids
    an outbox marks as started and not ended to whether their process still lives: a live one
    is in progress however old, a dead one abandoned however recent.
    """
    waiting = waiting or {}
    open_reports = open_reports or {}
    now = datetime.now(UTC)
    query = select(_generations)
    if since is not None:
        query = query.where(_generations.c.requested_at >= to_utc(since))
    if until is not None:
        query = query.where(_generations.c.requested_at < to_utc(until))
    totals = (*COUNTER_NAMES, "pending")
    with untraced():
        with reports.connect() as conn:
            generations = conn.execute(query).mappings().all()
        with lineage.connect() as conn:
            found = _lineage_by_generation(conn, [g["id"] for g in generations])
            counters = conn.execute(
                select(
                    *(func.coalesce(func.sum(lineage_counters.c[n]), 0) for n in totals),
                    func.count(),
                )
            ).one()
    report = AuditReport(
        since=since.isoformat() if since else None,
        until=until.isoformat() if until else None,
        generations=len(generations),
        in_flight=0,
        with_lineage=0,
        counters={n: int(v) for n, v in zip(totals, counters[:-1], strict=True)},
        processes=int(counters[-1]),
    )
    for generation in generations:
        attempts = found.get(generation["id"], [])
        row = _speaking_for(generation, attempts)
        report.superseded_attempts += len(attempts) - (row is not None)
        if row is not None:
            report.with_lineage += 1
            if not row.complete:
                report.incomplete.append(
                    {"report_generation_id": generation["id"], "reasons": row.incomplete_reasons}
                )
            continue
        requested = _aware(generation["requested_at"])
        unfinished = generation["status"] in ("pending", "generating")
        alive = open_reports.get(generation["id"])
        if unfinished and (alive or (alive is None and now - requested < IN_FLIGHT)):
            report.in_flight += 1
            continue
        if unfinished and alive is False:
            report.abandoned += 1
            reason = (
                "abandoned: its process died mid-report (`otel-lineage recover` marks it failed)"
            )
        else:
            reason = _why_missing(generation["id"], generation["status"], waiting)
        report.missing.append(
            {
                "report_generation_id": generation["id"],
                "status": generation["status"],
                "requested_at": requested.isoformat(),
                "trace_id": generation["trace_id"],
                "reason": reason,
            }
        )
    return report


def _why_missing(report_id: str, status: str, waiting: Mapping[str, object]) -> str:
    if report_id in waiting:
        return f"record waiting in local outbox {waiting[report_id]} (database unreachable?)"
    if status in ("pending", "generating"):
        return "the generation never finished: its process stopped mid-report"
    return "no lineage record: lost (see the dropped/evicted counters) or lineage was off"


def generations_by_pdf(reports: Engine, sha256: str) -> list[dict[str, Any]]:
    """Report generations whose recorded PDF has this sha256 (with or without lineage)."""
    generations = table(
        "report_generation",
        column("id"),
        column("business_id"),
        column("template_name"),
        column("template_version"),
        column("status"),
        column("requested_at", DateTime(timezone=True)),
        column("pdf_sha256"),
    )
    query = (
        select(generations)
        .where(generations.c.pdf_sha256 == sha256)
        .order_by(generations.c.requested_at)
    )
    with untraced(), reports.connect() as conn:
        return [_plain(r) for r in conn.execute(query).mappings()]


def to_utc(value: datetime) -> datetime:
    """The same instant in UTC (a naive time is taken as UTC).

    SQLite stores times as ISO strings without their offset, so a bound ``+01:00`` time would
    be compared by its wall-clock digits: the stored values are UTC, so the bound ones must be.
    """
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _lineage_by_generation(conn: Connection, ids: list[str]) -> dict[str, list[Row[Any]]]:
    """Lineage rows of each generation id (one per attempt), in chunks (bind limits)."""
    found: dict[str, list[Row[Any]]] = {}
    columns = (
        report_lineage.c.report_generation_id,
        report_lineage.c.trace_id,
        report_lineage.c.status,
        report_lineage.c.complete,
        report_lineage.c.incomplete_reasons,
    )
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        rows = conn.execute(
            select(*columns).where(report_lineage.c.report_generation_id.in_(chunk))
        )
        for r in rows:
            found.setdefault(r.report_generation_id, []).append(r)
    return found


def _speaking_for(generation: RowMapping, attempts: list[Row[Any]]) -> Row[Any] | None:
    """The lineage row that accounts for ``generation``: its current attempt's.

    The generation row names the trace of its latest attempt (the plugin stamps it); while that
    attempt runs or once it is lost, an earlier attempt's row does not account for it. Rows of
    generations stamped without a trace id (the stamper was not installed) are taken as they
    are: a completed one first.
    """
    if generation["trace_id"] is not None:
        return next((r for r in attempts if r.trace_id == generation["trace_id"]), None)
    ranked = sorted(attempts, key=lambda r: r.status != "completed")
    return ranked[0] if ranked else None


def _aware(value: datetime | str) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


#: Columns shown by ``list`` (everything but the blobs and the JSON detail).
LIST_COLUMNS = (
    "report_generation_id",
    "business_id",
    "template_name",
    "template_version",
    "status",
    "complete",
    "started_at",
    "duration_ms",
    "output_pages",
    "output_sha256",
    "trace_id",
    "sampled",
    "exported",
    "caller_trace_id",
)


@dataclass(frozen=True)
class ListFilter:
    business_id: int | None = None
    template_name: str | None = None
    template_version: str | None = None
    status: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    incomplete_only: bool = False
    #: The trace of the request that asked for the report (the report's own trace differs).
    caller_trace_id: str | None = None
    #: Digests (64 lowercase hex): reports made from these inputs, or that made this PDF.
    inputs_sha256: str | None = None
    output_sha256: str | None = None


def list_rows(
    engine: Engine, where: ListFilter, *, limit: int = 50, offset: int = 0
) -> tuple[list[dict[str, Any]], int]:
    """A page of lineage rows, newest first, and the total matching the filter."""
    c = report_lineage.c
    conditions = []
    if where.business_id is not None:
        conditions.append(c.business_id == where.business_id)
    if where.template_name is not None:
        conditions.append(c.template_name == where.template_name)
    if where.template_version is not None:
        conditions.append(c.template_version == where.template_version)
    if where.status is not None:
        conditions.append(c.status == where.status)
    if where.since is not None:
        conditions.append(c.started_at >= to_utc(where.since))
    if where.until is not None:
        conditions.append(c.started_at < to_utc(where.until))
    if where.incomplete_only:
        conditions.append(c.complete.is_(False))
    if where.caller_trace_id is not None:
        conditions.append(c.caller_trace_id == where.caller_trace_id.lower())
    if where.inputs_sha256 is not None:
        conditions.append(c.inputs_sha256 == where.inputs_sha256.lower())
    if where.output_sha256 is not None:
        conditions.append(c.output_sha256 == where.output_sha256.lower())
    columns = [c[name] for name in LIST_COLUMNS]
    page = (
        select(*columns)
        .where(*conditions)
        .order_by(c.started_at.desc(), c.id.desc())
        .limit(limit)
        .offset(offset)
    )
    with untraced(), engine.connect() as conn:
        rows = [_plain(r) for r in conn.execute(page).mappings()]
        total = conn.scalar(select(func.count()).select_from(report_lineage).where(*conditions))
    return rows, int(total or 0)


def rows_by_output(engine: Engine, sha256: str) -> list[dict[str, Any]]:
    """Every lineage row whose PDF has this sha256 (identical inputs give identical PDFs)."""
    with untraced(), engine.connect() as conn:
        return read_rows_by_output(conn, sha256)


def read_named_report(conn: Connection, report_id: str) -> dict[str, Any] | None:
    """The row of the report a modified PDF names, or None: its exact id only (a prefix in a
    file names nobody), and only a report that made a PDF (a failed report's id in a file is
    a forgery). One rule for the CLI's and the service's identify."""
    try:
        row = read_row(conn, report_id)
    except LookupError:
        return None
    if row["report_generation_id"] != report_id or not row.get("output_sha256"):
        return None
    return row


def read_rows_by_output(conn: Connection, sha256: str) -> list[dict[str, Any]]:
    """``rows_by_output`` on the caller's connection (the web service logs the lookup in the
    same transaction)."""
    c = report_lineage.c
    query = (
        select(*(c[name] for name in LIST_COLUMNS), c.output_uri, c.inputs_sha256)
        .where(c.output_sha256 == sha256)
        .order_by(c.started_at)
    )
    return [_plain(r) for r in conn.execute(query).mappings()]


def step_stats(
    engine: Engine,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    by_renderer: bool = False,
) -> list[dict[str, Any]]:
    """Per template version: reports, failures, failure rate, p50/p95 of each step.

    ``by_renderer`` splits each version by the WeasyPrint version that rendered it (``renderer``
    in the output: ``"weasyprint 70.0"``, or ``"not recorded"`` for rows without a fingerprint),
    which is how a change of timings or failures after an upgrade shows.
    """
    c = report_lineage.c
    query = select(c.template_name, c.template_version, c.status, c.steps, c.renderer)
    if since is not None:
        query = query.where(c.started_at >= to_utc(since))
    if until is not None:
        query = query.where(c.started_at < to_utc(until))
    groups: dict[tuple[str, str, str], dict[str, Any]] = {}
    with untraced(), engine.connect() as conn:
        for name, version, status, steps, renderer in conn.execute(query):
            label = _renderer_label(renderer) if by_renderer else ""
            group = groups.setdefault(
                (name or "-", version or "-", label), {"count": 0, "failed": 0, "steps": {}}
            )
            group["count"] += 1
            group["failed"] += status != "completed"
            for step in steps or []:
                if step.get("duration_ms") is not None:
                    group["steps"].setdefault(step["name"], []).append(step["duration_ms"])
    out = []
    for (name, version, label), group in sorted(groups.items()):
        out.append(
            {
                "template_name": name,
                "template_version": version,
                **({"renderer": label} if by_renderer else {}),
                "count": group["count"],
                "failed": group["failed"],
                "failure_rate": round(group["failed"] / group["count"], 4),
                "steps": {
                    step: {"p50_ms": _percentile(values, 0.5), "p95_ms": _percentile(values, 0.95)}
                    for step, values in group["steps"].items()
                },
            }
        )
    return out


def _renderer_label(renderer: object) -> str:
    version = renderer.get("weasyprint") if isinstance(renderer, dict) else None
    return f"weasyprint {version}" if version else "not recorded"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))], 3)


def _plain(row: Mapping[Any, Any]) -> dict[str, Any]:
    """Plain str keys (column names come back as str subclasses) and aware UTC times (SQLite
    returns them naive), so both backends give the same values."""
    return {str(k): _aware(v) if isinstance(v, datetime) else v for k, v in row.items()}
