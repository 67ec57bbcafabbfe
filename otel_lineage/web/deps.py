"""Typed dependencies of the routes: engines, settings, the current user, permissions.

Routes stay thin: they declare ``engine: EngineDep, user: CurrentUser`` (or a ``require(...)``
permission) and call the reading functions. A refused permission on an action the access log
covers (inputs, PDF, verify, identify, access log, keys, prune) is itself logged, as
``denied``, before the 403 is answered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import Connection, Engine

from otel_lineage.access.log import record_access
from otel_lineage.access.roles import Permission
from otel_lineage.delivery.store import untraced
from otel_lineage.web.errors import ApiError
from otel_lineage.web.security import (
    FailureLimiter,
    Principal,
    client_address,
    identify_request,
)
from otel_lineage.web.settings import WebSettings

_MAX_USER_AGENT = 500


def get_settings(request: Request) -> WebSettings:
    settings: WebSettings = request.app.state.settings
    return settings


def lineage_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def reports_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.reports_engine
    return engine


def limiter(request: Request) -> FailureLimiter:
    found: FailureLimiter = request.app.state.limiter
    return found


SettingsDep = Annotated[WebSettings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(lineage_engine)]
ReportsEngineDep = Annotated[Engine, Depends(reports_engine)]
LimiterDep = Annotated[FailureLimiter, Depends(limiter)]


def optional_user(
    request: Request, engine: EngineDep, settings: SettingsDep, failures: LimiterDep
) -> Principal | None:
    return identify_request(request, engine, settings, failures)


MaybeUser = Annotated[Principal | None, Depends(optional_user)]


def current_user(user: MaybeUser) -> Principal:
    if user is None:
        raise ApiError(
            401,
            "unauthenticated",
            "sign in: send `Authorization: Bearer <API key>` or sign in at /login",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return user


CurrentUser = Annotated[Principal, Depends(current_user)]


@dataclass(frozen=True)
class Requester:
    """Where a request comes from, as the access log records it."""

    client: str
    user_agent: str | None


def requester(request: Request, settings: SettingsDep) -> Requester:
    agent = request.headers.get("user-agent")
    return Requester(client_address(request, settings), agent[:_MAX_USER_AGENT] if agent else None)


RequesterDep = Annotated[Requester, Depends(requester)]


def log_access(
    conn: Connection,
    user: Principal,
    origin: Requester,
    action: str,
    *,
    outcome: str,
    report_id: str | None = None,
    detail: str | None = None,
) -> None:
    """Append one access-log row on ``conn`` (the transaction that serves the read)."""
    record_access(
        conn,
        user=user.name,
        role=str(user.role),
        action=action,
        report_id=report_id,
        client=origin.client,
        user_agent=origin.user_agent,
        outcome=outcome,
        detail=detail,
    )


#: The user the access log names for a request that came with no (valid) key.
ANONYMOUS = "(no key)"


def require(permission: Permission, *, action: str | None = None) -> Callable[..., Principal]:
    """A dependency answering 403 unless the current user's role allows ``permission``;
    with ``action``, the refusal is appended to the access log first."""

    def dependency(
        request: Request, maybe: MaybeUser, engine: EngineDep, origin: RequesterDep
    ) -> Principal:
        if maybe is not None and maybe.can(permission):
            return maybe
        if action is not None:  # a refused read of personal data is logged, anonymous or not
            report_id = request.path_params.get("report_id")
            with untraced(), engine.begin() as conn:
                record_access(
                    conn,
                    user=maybe.name if maybe else ANONYMOUS,
                    role=str(maybe.role) if maybe else None,
                    action=action,
                    report_id=str(report_id)[:64] if report_id else None,
                    client=origin.client,
                    user_agent=origin.user_agent,
                    outcome="denied",
                    detail=f"role {maybe.role} lacks {permission}" if maybe else "no key",
                )
        user = current_user(maybe)  # 401 for nobody
        raise ApiError(
            403,
            "forbidden",
            f"your role ({user.role}) does not allow {permission}; ask an admin for a key "
            "with a role that does",
        )

    return dependency


def _allowed(permission: Permission, action: str | None = None) -> object:
    return Depends(require(permission, action=action))


# The principals of each permission (those with an action log their refusals).
Searcher = Annotated[Principal, _allowed(Permission.SEARCH)]
ReportReader = Annotated[Principal, _allowed(Permission.READ_REPORT)]
TraceReader = Annotated[Principal, _allowed(Permission.READ_TRACE)]
InputsReader = Annotated[Principal, _allowed(Permission.READ_INPUTS, "read_inputs")]
PdfReader = Annotated[Principal, _allowed(Permission.DOWNLOAD_PDF, "download_pdf")]
Verifier = Annotated[Principal, _allowed(Permission.VERIFY, "verify")]
Identifier = Annotated[Principal, _allowed(Permission.IDENTIFY, "identify")]
AccessLogReader = Annotated[Principal, _allowed(Permission.READ_ACCESS_LOG, "read_access_log")]
KeyLister = Annotated[Principal, _allowed(Permission.MANAGE_KEYS)]
KeyCreator = Annotated[Principal, _allowed(Permission.MANAGE_KEYS, "key_create")]
KeyRevoker = Annotated[Principal, _allowed(Permission.MANAGE_KEYS, "key_revoke")]
Pruner = Annotated[Principal, _allowed(Permission.PRUNE, "prune")]
