"""The JSON API under ``/api/v1``: thin routes over ``otel_lineage.reading``.

Each route checks its parameters (a bad one is a 422 naming it), its permission, and calls the
same query function the CLI calls. Reads of customer data (inputs, PDF), verify, identify and
the access log are logged through ``actions`` in the transaction that serves them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Path, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from otel_lineage.access.keys import (
    ApiKey,
    KeyInputError,
    KeyNotFoundError,
    create_key,
    list_keys,
    revoke_key,
)
from otel_lineage.access.log import list_access
from otel_lineage.access.roles import Permission, Role
from otel_lineage.delivery.store import untraced
from otel_lineage.reading.exports import (
    CorruptTraceError,
    TraceUnavailableError,
    exported_tree,
    to_jaeger,
    to_otlp_json,
)
from otel_lineage.reading.identify import embedded_lineage
from otel_lineage.reading.openlineage import run_events
from otel_lineage.reading.query import ListFilter, generations_by_pdf, list_rows, step_stats
from otel_lineage.reading.retention import MAX_AGE_DAYS, prune
from otel_lineage.reading.verify import VerifyError, verify
from otel_lineage.web import actions
from otel_lineage.web.deps import (
    AccessLogReader,
    CurrentUser,
    EngineDep,
    Identifier,
    InputsReader,
    KeyCreator,
    KeyLister,
    KeyRevoker,
    PdfReader,
    Pruner,
    ReportReader,
    ReportsEngineDep,
    RequesterDep,
    Searcher,
    SettingsDep,
    TraceReader,
    Verifier,
    log_access,
)
from otel_lineage.web.errors import ApiError
from otel_lineage.web.security import CSRF_FIELD, CSRF_HEADER, Principal, check_csrf

router = APIRouter(prefix="/api/v1", tags=["lineage"])
MAX_INT32 = 2**31 - 1
_CHUNK = 1 << 20
SHA256 = r"^[0-9a-fA-F]{64}$"
ReportId = Annotated[
    str,
    Path(
        min_length=1,
        max_length=36,
        pattern=r"^[A-Za-z0-9-]+$",
        description="ReportGeneration id (or a unique prefix of one)",
    ),
]
Text = Annotated[str | None, Query(min_length=1, max_length=200)]
Since = Annotated[datetime | None, Query(description="At/after this time (ISO 8601)")]
Until = Annotated[datetime | None, Query(description="Before this time (ISO 8601)")]


def _attachment(name: str) -> str:
    """A download header; ``name`` is already reduced to ``[A-Za-z0-9._-]``."""
    return f'attachment; filename="{name}"'


async def csrf(request: Request, settings: SettingsDep, _: CurrentUser) -> None:
    """Browser POSTs (cookie sessions) must carry the CSRF token; bearer calls are exempt.
    Depends on the user so that an anonymous call is told 401 (sign in), not 403."""
    submitted = request.headers.get(CSRF_HEADER)
    if submitted is None and request.headers.get("content-type", "").startswith(
        ("multipart/form-data", "application/x-www-form-urlencoded")
    ):
        value = (await request.form()).get(CSRF_FIELD)
        submitted = value if isinstance(value, str) else None
    check_csrf(request, settings, submitted)


Csrf = Depends(csrf)


@router.get("/me", summary="Who the API sees you as")
def me(user: CurrentUser) -> dict[str, Any]:
    permissions = [p.value for p in Permission if user.can(p)]
    return {"name": user.name, "role": user.role.value, "via": user.via, "can": permissions}


@router.get("/reports", summary="Search lineage rows (newest first)")
def search(
    engine: EngineDep,
    _: Searcher,
    business_id: Annotated[int | None, Query(ge=0, le=MAX_INT32)] = None,
    template: Text = None,
    version: Text = None,
    status: Text = None,
    since: Since = None,
    until: Until = None,
    incomplete: bool = False,
    inputs_sha256: Annotated[str | None, Query(pattern=SHA256)] = None,
    output_sha256: Annotated[str | None, Query(pattern=SHA256)] = None,
    caller_trace: Annotated[str | None, Query(pattern=r"^[0-9a-fA-F]{32}$")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=100_000_000)] = 0,
) -> dict[str, Any]:
    where = ListFilter(
        business_id=business_id,
        template_name=template,
        template_version=version,
        status=status,
        since=since,
        until=until,
        incomplete_only=incomplete,
        caller_trace_id=caller_trace,
        inputs_sha256=inputs_sha256,
        output_sha256=output_sha256,
    )
    rows, total = list_rows(engine, where, limit=limit, offset=offset)
    return {"total": total, "limit": limit, "offset": offset, "items": rows}


@router.get("/reports/{report_id}", summary="One report's lineage, steps included")
def report(
    report_id: ReportId,
    engine: EngineDep,
    settings: SettingsDep,
    _: ReportReader,
) -> dict[str, Any]:
    return actions.report_detail(engine, actions.find_row(engine, report_id), settings)


@router.get(
    "/reports/{report_id}/inputs",
    summary="The stored input snapshot, byte-exact (auditor and admin; logged)",
    response_class=Response,
)
def inputs(
    report_id: ReportId,
    engine: EngineDep,
    origin: RequesterDep,
    user: InputsReader,
) -> Response:
    found: dict[str, Any] = {}

    def read(row: dict[str, Any]) -> bytes:
        found.update(row)
        return actions.snapshot(row)

    data = actions.logged_read(engine, user, origin, "read_inputs", report_id, read)
    return Response(
        data,
        media_type="application/json",
        headers={
            "Content-Disposition": _attachment(actions.download_name(found, "-inputs.json")),
            "X-Content-SHA256": str(found["inputs_sha256"]),
            "Cache-Control": "no-store",
        },
    )


@router.get(
    "/reports/{report_id}/pdf", summary="The report's PDF (logged)", response_class=Response
)
def pdf(
    report_id: ReportId,
    engine: EngineDep,
    settings: SettingsDep,
    origin: RequesterDep,
    user: PdfReader,
) -> Response:
    found: dict[str, Any] = {}

    def read(row: dict[str, Any]) -> bytes:
        found.update(row)
        return actions.pdf_bytes(row, settings.reports_dir)

    data = actions.logged_read(engine, user, origin, "download_pdf", report_id, read)
    return Response(
        data,
        media_type="application/pdf",
        headers={
            "Content-Disposition": _attachment(actions.download_name(found, ".pdf")),
            "Cache-Control": "no-store",
        },
    )


@router.get("/reports/{report_id}/trace", summary="The stored trace (Jaeger JSON or OTLP/JSON)")
def trace(
    report_id: ReportId,
    engine: EngineDep,
    _: TraceReader,
    format: Literal["jaeger", "otlp"] = "jaeger",
) -> Response:
    row = actions.find_row(engine, report_id)
    try:
        tree = exported_tree(row)
    except TraceUnavailableError as exc:
        raise ApiError(404, "trace_not_stored", str(exc)) from exc
    except CorruptTraceError as exc:
        raise ApiError(409, "integrity_check_failed", "the stored span tree is corrupt") from exc
    document = to_jaeger(tree) if format == "jaeger" else to_otlp_json(tree)
    name = actions.download_name(row, f"-trace-{format}.json")
    return Response(
        orjson.dumps(document),
        media_type="application/json",
        headers={"Content-Disposition": _attachment(name)},
    )


@router.get("/reports/{report_id}/openlineage", summary="OpenLineage RunEvents of the report")
def openlineage(
    report_id: ReportId,
    engine: EngineDep,
    settings: SettingsDep,
    _: TraceReader,
) -> list[dict[str, Any]]:
    return run_events(actions.find_row(engine, report_id), settings.reports_database_url)


@router.post(
    "/reports/{report_id}/verify",
    summary="Re-render from the stored inputs and compare every digest (logged)",
    dependencies=[Csrf],
)
async def verify_report(
    report_id: ReportId,
    engine: EngineDep,
    origin: RequesterDep,
    user: Verifier,
) -> dict[str, Any]:
    return await run_in_threadpool(run_verify, engine, user, origin, report_id)


def run_verify(engine: Any, user: Principal, origin: Any, report_id: str) -> dict[str, Any]:
    """Verify and log it in one transaction (called off the event loop: it renders a PDF)."""

    def replay(row: dict[str, Any]) -> dict[str, Any]:
        try:
            return verify(row).as_dict()
        except VerifyError as exc:
            raise ApiError(409, "cannot_verify", f"cannot verify: {exc}") from exc

    return actions.logged_read(engine, user, origin, "verify", report_id, replay)


@router.post(
    "/identify",
    summary="Which report produced this PDF (upload; logged)",
    dependencies=[Csrf],
)
async def identify(
    file: UploadFile,
    engine: EngineDep,
    reports: ReportsEngineDep,
    settings: SettingsDep,
    origin: RequesterDep,
    user: Identifier,
) -> dict[str, Any]:
    upload = await read_pdf(file, settings.max_upload_bytes)
    return await run_in_threadpool(identify_upload, engine, reports, user, origin, upload)


@dataclass(frozen=True, slots=True)
class UploadedPDF:
    sha256: str
    data: bytes


async def read_pdf(file: UploadFile, limit: int) -> UploadedPDF:
    """An uploaded PDF, hashed as it is read in chunks; refuses non-PDFs and oversize files."""
    if file.size is not None and file.size > limit:
        raise ApiError(413, "too_large", f"the file is larger than {limit} bytes")
    digest = hashlib.sha256()
    chunks: list[bytes] = []
    read = 0
    while chunk := await file.read(_CHUNK):
        if read == 0 and not chunk.startswith(b"%PDF-"):
            raise ApiError(415, "not_a_pdf", "the file is not a PDF (it does not start with %PDF-)")
        read += len(chunk)
        if read > limit:
            raise ApiError(413, "too_large", f"the file is larger than {limit} bytes")
        digest.update(chunk)
        chunks.append(chunk)
    if read == 0:
        raise ApiError(415, "not_a_pdf", "the file is empty: not a PDF")
    return UploadedPDF(digest.hexdigest(), b"".join(chunks))


def identify_upload(
    engine: Any, reports: Any, user: Principal, origin: Any, upload: UploadedPDF
) -> dict[str, Any]:
    """Exact copies by sha256; else the report a modified copy names (see ``identify``)."""
    digest = upload.sha256
    named = None
    if not actions.has_output(engine, digest):
        named = embedded_lineage(upload.data)
    rows, copy_of = actions.identify_rows(
        engine, user, origin, digest, named.report_id if named else None
    )
    without = [] if rows or copy_of else generations_by_pdf(reports, digest)
    return {
        "sha256": digest,
        "matches": rows,
        "modified_copy_of": copy_of,
        "embedded": named.as_dict() if named else None,
        "generations_without_lineage": without,
    }


@router.get("/stats", summary="Per template version: count, failure rate, p50/p95 per step")
def stats(
    engine: EngineDep,
    _: Searcher,
    since: Since = None,
    until: Until = None,
) -> list[dict[str, Any]]:
    return step_stats(engine, since=since, until=until)


@router.get("/audit", summary="Capture rate, missing rows with reasons, counters per process")
def audit(
    engine: EngineDep,
    reports: ReportsEngineDep,
    settings: SettingsDep,
    _: Searcher,
    since: Since = None,
    until: Until = None,
    limit: Annotated[int, Query(ge=0, le=10_000)] = 100,
) -> dict[str, Any]:
    return actions.audit_answer(reports, engine, settings, limit, since=since, until=until)


@router.get("/access-log", summary="Who read what (auditor and admin; itself logged)")
def access_log(
    engine: EngineDep,
    origin: RequesterDep,
    user: AccessLogReader,
    report_id: Annotated[str | None, Query(min_length=1, max_length=36)] = None,
    by: Annotated[str | None, Query(alias="user", min_length=1, max_length=200)] = None,
    since: Since = None,
    until: Until = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=100_000_000)] = 0,
) -> dict[str, Any]:
    return read_access_log(engine, user, origin, report_id, by, since, until, limit, offset)


def read_access_log(
    engine: Any,
    user: Principal,
    origin: Any,
    report_id: str | None,
    by: str | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    offset: int,
) -> dict[str, Any]:
    """A page of the access log; the reading itself is appended first (it is committed before
    the page is read, so a reader sees their own entry)."""
    with untraced(), engine.begin() as conn:
        log_access(conn, user, origin, "read_access_log", outcome="allowed", report_id=report_id)
    with untraced():
        items, total = list_access(
            engine,
            report_id=report_id,
            user=by,
            since=since,
            until=until,
            limit=limit,
            offset=offset,
        )
    return {"total": total, "limit": limit, "offset": offset, "items": items}


# -- keys and prune (admin) -----------------------------------------------------------------------


@router.get("/keys", summary="Every API key (no secrets; admin)")
def keys(
    engine: EngineDep,
    _: KeyLister,
) -> list[dict[str, Any]]:
    with untraced():
        return [key.as_dict() for key in list_keys(engine)]


@router.post(
    "/keys", summary="Create a key: its secret is in this answer only", dependencies=[Csrf]
)
def new_key(
    engine: EngineDep,
    origin: RequesterDep,
    user: KeyCreator,
    name: Annotated[str, Query(min_length=1, max_length=100)],
    role: Role,
    expires_at: datetime | None = None,
) -> dict[str, Any]:
    def audit_hook(conn: Any, key: ApiKey) -> None:
        log_access(conn, user, origin, "key_create", outcome="allowed", detail=_key_detail(key))

    try:
        with untraced():
            key, secret = create_key(
                engine,
                name=name,
                role=role,
                created_by=user.name,
                expires_at=expires_at,
                audit=audit_hook,
            )
    except KeyInputError as exc:
        raise ApiError(422, "invalid_key_request", str(exc)) from exc
    return {**key.as_dict(), "secret": secret}


@router.post("/keys/{name_or_id}/revoke", summary="Revoke a key (admin)", dependencies=[Csrf])
def revoke(
    name_or_id: Annotated[str, Path(min_length=1, max_length=100)],
    engine: EngineDep,
    origin: RequesterDep,
    user: KeyRevoker,
) -> dict[str, Any]:
    def audit_hook(conn: Any, key: ApiKey) -> None:
        log_access(conn, user, origin, "key_revoke", outcome="allowed", detail=_key_detail(key))

    try:
        with untraced():
            return revoke_key(engine, name_or_id, audit=audit_hook).as_dict()
    except KeyNotFoundError as exc:
        raise ApiError(404, "key_not_found", str(exc)) from exc


def _key_detail(key: ApiKey) -> str:
    return f"key {key.name!r} ({key.role}, id {key.id})"


@router.post("/prune", summary="Drop old snapshots and span trees (admin)", dependencies=[Csrf])
def prune_rows(
    engine: EngineDep,
    origin: RequesterDep,
    user: Pruner,
    snapshots_older_than_days: Annotated[float, Query(ge=0, le=MAX_AGE_DAYS)],
    dry_run: bool = True,
) -> dict[str, Any]:
    with untraced():
        result = prune(engine, older_than_days=snapshots_older_than_days, dry_run=dry_run)
        with engine.begin() as conn:
            log_access(
                conn,
                user,
                origin,
                "prune",
                outcome="allowed",
                detail=f"{'dry run: ' if dry_run else ''}{result.rows} rows before "
                f"{result.cutoff.isoformat(timespec='seconds')}, {result.bytes_freed} bytes",
            )
    return {
        "cutoff": result.cutoff.isoformat(),
        "rows": result.rows,
        "bytes_freed": result.bytes_freed,
        "dry_run": result.dry_run,
    }
