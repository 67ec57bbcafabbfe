"""The server-rendered pages: sign-in, search and identify, report, stats, audit, access log.

Pages call the same functions as the API (``actions`` and the reading functions) and render
Jinja2 templates with autoescaping on; every value is shown as text, and bidirectional and
other control characters are made visible (``_visible``) so a hostile name cannot reorder what
is around it. No inline script or style (the CSP forbids them): ``static/app.js`` only adds the
drop zone; everything reads without JavaScript.
"""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import jinja2
from fastapi import APIRouter, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy import Engine

from otel_lineage.access.keys import authenticate, end_sessions
from otel_lineage.access.log import record_access
from otel_lineage.access.roles import Permission
from otel_lineage.delivery.store import untraced
from otel_lineage.reading.query import ListFilter, list_rows, step_stats
from otel_lineage.web import actions, api
from otel_lineage.web.deps import (
    AccessLogReader,
    EngineDep,
    Identifier,
    LimiterDep,
    MaybeUser,
    ReportReader,
    ReportsEngineDep,
    RequesterDep,
    Searcher,
    SettingsDep,
    Verifier,
)
from otel_lineage.web.errors import ApiError
from otel_lineage.web.security import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    Principal,
    check_csrf,
    client_address,
    csrf_token_valid,
    is_https,
    new_csrf_token,
    session_value,
)
from otel_lineage.web.settings import WebSettings

router = APIRouter(include_in_schema=False)
TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
PAGE_SIZE = 50
_WATERFALL_WIDTH = 560
_BIDI = {"Cf", "Cc", "Co", "Cs", "Cn", "Zl", "Zp"}


def _visible(value: Any) -> Any:
    """Every output value: control and format characters (RTL overrides, zero-width, escapes)
    written as ``<U+202E>`` so they are seen, not obeyed. Autoescaping does the HTML."""
    if value is None:
        return ""
    if not isinstance(value, str):
        return value
    if all(ch.isprintable() or ch == " " for ch in value):
        return value
    return "".join(
        f"<U+{ord(ch):04X}>" if unicodedata.category(ch) in _BIDI and ch != " " else ch
        for ch in value
    )


_environment = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
    autoescape=True,
    finalize=_visible,
    trim_blocks=True,
    lstrip_blocks=True,
)
templates = Jinja2Templates(env=_environment)


def render(
    request: Request,
    name: str,
    user: Principal | None,
    context: dict[str, Any] | None = None,
    status: int = 200,
) -> HTMLResponse:
    """A page, with the user, the no-auth banner flag and the CSRF token of the browser."""
    settings: WebSettings = request.app.state.settings
    token = request.cookies.get(CSRF_COOKIE)
    fresh = not csrf_token_valid(settings.secret, token)
    if fresh:
        token = new_csrf_token(settings.secret)
    response = templates.TemplateResponse(
        request,
        name,
        {
            "user": user,
            "no_auth": settings.no_auth,
            "csrf_token": token,
            "can": (lambda p: user is not None and user.can(Permission(p))),
            **(context or {}),
        },
        status_code=status,
    )
    response.headers["Cache-Control"] = "no-store"
    if fresh:
        response.set_cookie(
            CSRF_COOKIE,
            token or "",
            httponly=True,
            samesite="strict",
            secure=is_https(request, settings),
            path="/",
        )
    return response


def error_page(request: Request, error: ApiError) -> Response:
    response = render(request, "error.html.j2", None, {"error": error}, status=error.status)
    response.headers.update(error.headers)
    return response


# -- sign-in --------------------------------------------------------------------------------------


@router.get("/login")
def login_page(request: Request, user: MaybeUser) -> Response:
    if user is not None and user.via in ("no-auth", "proxy"):
        return RedirectResponse("/", status_code=303)
    return render(request, "login.html.j2", user)


@router.post("/login")
def login(
    request: Request,
    engine: EngineDep,
    settings: SettingsDep,
    failures: LimiterDep,
    origin: RequesterDep,
    api_key: Annotated[str, Form(max_length=200)] = "",
    csrf_token: Annotated[str | None, Form(max_length=200)] = None,
) -> Response:
    check_csrf(request, settings, csrf_token)
    client = client_address(request, settings)
    with untraced():
        key = authenticate(engine, api_key.strip()) if api_key.strip() else None
    if key is None:
        # Only failures are limited (a valid key is never locked out by others' mistakes
        # from a shared address); a refused attempt is logged, limited or not.
        limited = failures.retry_after(client)
        outcome_detail = "rate limited" if limited else "unknown, revoked or expired key"
    with untraced(), engine.begin() as conn:
        record_access(
            conn,
            user=key.name if key else "(unknown key)",
            role=str(key.role) if key else None,
            action="sign_in",
            report_id=None,
            client=origin.client,
            user_agent=origin.user_agent,
            outcome="allowed" if key else "denied",
            detail=None if key else outcome_detail,
        )
    if key is None:
        failures.check(client)
        failures.failed(client)
        context = {"error": "That key is unknown, revoked or expired."}
        return render(request, "login.html.j2", None, context, status=401)
    expires = datetime.now(UTC) + timedelta(seconds=settings.session_ttl_s)
    if key.expires_at is not None:
        expires = min(expires, key.expires_at)
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        session_value(settings.secret, key.id, int(expires.timestamp())),
        max_age=max(1, int((expires - datetime.now(UTC)).total_seconds())),
        httponly=True,
        samesite="strict",
        secure=is_https(request, settings),
        path="/",
    )
    return response


@router.post("/logout")
def logout(
    request: Request,
    settings: SettingsDep,
    engine: EngineDep,
    user: MaybeUser,
    csrf_token: Annotated[str | None, Form(max_length=200)] = None,
) -> Response:
    """Sign out: the cookie is dropped *and* voided on the server (a copy of it, kept by
    someone else, stops working too), on every worker."""
    check_csrf(request, settings, csrf_token)
    if user is not None and user.via == "session" and user.key_id is not None:
        with untraced():
            end_sessions(engine, user.key_id)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# -- search and identify --------------------------------------------------------------------------

_FILTERS = ("business_id", "template", "version", "status", "since", "until")


def _filter(request: Request) -> tuple[ListFilter, dict[str, str], int]:
    """The search form's values (empty fields are no filter), each checked by name."""
    values = {name: request.query_params.get(name, "").strip()[:200] for name in _FILTERS}
    business = values["business_id"]
    if business and (not business.isdigit() or int(business) > api.MAX_INT32):
        raise ApiError(
            422, "invalid_parameter", "business_id: not a business id", field="business_id"
        )
    page_text = request.query_params.get("page", "1").strip() or "1"
    if not page_text.isdigit() or not 1 <= int(page_text) <= 1_000_000:
        raise ApiError(422, "invalid_parameter", "page: not a page number", field="page")
    where = ListFilter(
        business_id=int(business) if business else None,
        template_name=values["template"] or None,
        template_version=values["version"] or None,
        status=values["status"] or None,
        since=_time(values["since"], "since"),
        until=_time(values["until"], "until"),
        incomplete_only=request.query_params.get("incomplete") in ("1", "on", "true"),
    )
    return where, values, int(page_text)


def _time(value: str, field: str) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise ApiError(
            422, "invalid_parameter", f"{field}: not an ISO 8601 time", field=field
        ) from None


@router.get("/")
def search_page(request: Request, engine: EngineDep, user: Searcher) -> Response:
    where, values, page = _filter(request)
    rows, total = list_rows(engine, where, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE)
    pages = max(1, (total + PAGE_SIZE - 1) // PAGE_SIZE)
    context = {"rows": rows, "total": total, "values": values, "page": page, "pages": pages}
    return render(request, "search.html.j2", user, context)


@router.post("/identify")
async def identify_page(
    request: Request,
    file: UploadFile,
    engine: EngineDep,
    reports: ReportsEngineDep,
    settings: SettingsDep,
    origin: RequesterDep,
    user: Identifier,
    csrf_token: Annotated[str | None, Form(max_length=200)] = None,
) -> Response:
    check_csrf(request, settings, csrf_token)
    try:
        upload = await api.read_pdf(file, settings.max_upload_bytes)
    except ApiError as exc:
        return render(request, "identify.html.j2", user, {"error": exc}, status=exc.status)
    answer = await run_in_threadpool(api.identify_upload, engine, reports, user, origin, upload)
    return render(request, "identify.html.j2", user, {"answer": answer, "error": None})


# -- one report -----------------------------------------------------------------------------------


def waterfall(row: dict[str, Any]) -> dict[str, Any]:
    """Bars of the steps on a shared time axis (SVG coordinates, computed here)."""
    steps = row.get("steps") or []
    ends = [(s.get("start_offset_ms") or 0) + (s.get("duration_ms") or 0) for s in steps]
    total = max([row.get("duration_ms") or 0, *ends, 1e-9])
    bars = []
    for index, step in enumerate(steps):
        start = max(0.0, float(step.get("start_offset_ms") or 0))
        duration = max(0.0, float(step.get("duration_ms") or 0))
        bars.append(
            {
                "y": 8 + index * 26,
                "x": round(start / total * _WATERFALL_WIDTH, 2),
                "width": max(1.5, round(duration / total * _WATERFALL_WIDTH, 2)),
                "name": step.get("name"),
                "duration_ms": round(duration, 2),
                "start_ms": round(start, 2),
                "status": step.get("status") or "unset",
                "error_type": step.get("error_type"),
            }
        )
    return {"bars": bars, "height": 16 + 26 * len(steps), "total_ms": round(total, 2)}


_REASONS = {
    "root_span_not_ended_before_ttl": "the report did not finish within the time limit",
    "root_span_not_ended_before_shutdown": "the service stopped before the report finished",
    "evicted_by_trace_cap": "too many reports were open at once; this one was recorded early",
    "process_died_before_report_ended": "its process died before the report finished",
}


def plain_reason(reason: str) -> str:
    """An incomplete reason in plain words (the code stays visible next to it)."""
    if reason in _REASONS:
        return _REASONS[reason]
    if reason.startswith("span_buffer_overflow"):
        return "the report had more spans than are kept; library spans were dropped"
    if reason.startswith("invalid_text:"):
        return f"text no database accepts was cleaned in {reason.split(':', 1)[1]}"
    if reason.startswith("oversized_value:"):
        return f"a value too long for its column was not stored ({reason.split(':', 1)[1]})"
    return "recorded values could not be trusted"


def _report_context(engine: Engine, row: dict[str, Any], settings: WebSettings) -> dict[str, Any]:
    return {
        "report": actions.report_detail(engine, row, settings),
        "waterfall": waterfall(row),
        "reasons": [(r, plain_reason(str(r))) for r in row.get("incomplete_reasons") or []],
    }


@router.get("/reports/{report_id}")
def report_page(
    request: Request,
    report_id: api.ReportId,
    engine: EngineDep,
    settings: SettingsDep,
    user: ReportReader,
) -> Response:
    row = actions.find_row(engine, report_id)
    return render(request, "report.html.j2", user, _report_context(engine, row, settings))


@router.post("/reports/{report_id}/verify")
async def verify_page(
    request: Request,
    report_id: api.ReportId,
    engine: EngineDep,
    settings: SettingsDep,
    origin: RequesterDep,
    user: Verifier,
    csrf_token: Annotated[str | None, Form(max_length=200)] = None,
) -> Response:
    check_csrf(request, settings, csrf_token)
    try:
        result: dict[str, Any] | None = await run_in_threadpool(
            api.run_verify, engine, user, origin, report_id
        )
        failure = None
    except ApiError as exc:
        if exc.status == 404:
            raise
        result, failure = None, exc.message
    row = await run_in_threadpool(actions.find_row, engine, report_id)
    context = {**_report_context(engine, row, settings), "verify": result, "verify_error": failure}
    return render(request, "report.html.j2", user, context)


# -- stats, audit, access log, docs ---------------------------------------------------------------


def stat_bars(groups: list[dict[str, Any]]) -> dict[str, Any]:
    """One bar per template version and step (p95), scaled to the slowest."""
    rows = [
        (f"{g['template_name']} {g['template_version']}", step, figures)
        for g in groups
        for step, figures in g["steps"].items()
    ]
    slowest = max([f["p95_ms"] for _, _, f in rows] or [1.0]) or 1.0
    bars = [
        {
            "y": 6 + i * 22,
            "label": f"{label} · {step}",
            "p50": max(1.0, round(f["p50_ms"] / slowest * 380, 2)),
            "p95": max(1.0, round(f["p95_ms"] / slowest * 380, 2)),
            "p50_ms": f["p50_ms"],
            "p95_ms": f["p95_ms"],
        }
        for i, (label, step, f) in enumerate(rows)
    ]
    return {"bars": bars, "height": 12 + 22 * len(bars)}


@router.get("/stats")
def stats_page(request: Request, engine: EngineDep, user: Searcher) -> Response:
    since = _time(request.query_params.get("since", "").strip(), "since")
    until = _time(request.query_params.get("until", "").strip(), "until")
    groups = step_stats(engine, since=since, until=until)
    context = {"groups": groups, "chart": stat_bars(groups), "since": since, "until": until}
    return render(request, "stats.html.j2", user, context)


_PERIODS = {"1h": timedelta(hours=1), "24h": timedelta(days=1), "7d": timedelta(days=7)}


@router.get("/audit")
def audit_page(
    request: Request,
    engine: EngineDep,
    reports: ReportsEngineDep,
    settings: SettingsDep,
    user: Searcher,
) -> Response:
    period = request.query_params.get("period", "24h")
    if period not in (*_PERIODS, "all"):
        raise ApiError(422, "invalid_parameter", "period: use 1h, 24h, 7d or all", field="period")
    since = None if period == "all" else datetime.now(UTC) - _PERIODS[period]
    answer = actions.audit_answer(reports, engine, settings, 200, since=since)
    context = {"audit": answer, "period": period, "periods": [*_PERIODS, "all"]}
    return render(request, "audit.html.j2", user, context)


@router.get("/access-log")
def access_log_page(
    request: Request, engine: EngineDep, origin: RequesterDep, user: AccessLogReader
) -> Response:
    report_id = request.query_params.get("report_id", "").strip()[:36] or None
    who = request.query_params.get("user", "").strip()[:200] or None
    answer = api.read_access_log(engine, user, origin, report_id, who, None, None, 200, 0)
    context = {**answer, "report_id": report_id or "", "who": who or ""}
    return render(request, "access_log.html.j2", user, context)


@router.get("/docs")
def docs_page(request: Request, user: MaybeUser) -> Response:
    """The API reference, rendered here (Swagger UI needs inline script and a CDN)."""
    schema = request.app.openapi()
    endpoints = [
        {
            "method": method.upper(),
            "path": path,
            "summary": operation.get("summary", ""),
            "parameters": [p["name"] for p in operation.get("parameters", [])],
        }
        for path, item in schema.get("paths", {}).items()
        for method, operation in item.items()
    ]
    return render(request, "docs.html.j2", user, {"endpoints": endpoints})
