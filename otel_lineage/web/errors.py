"""Errors as the service answers them: a stable code and a message, never a traceback.

The API answers ``{"error": {"code": "...", "message": "...", "field": "..."}}`` (``field`` for
422s, naming the parameter); pages get the same facts as an HTML page, and a browser that is
not signed in is sent to ``/login``. Unexpected exceptions are logged by type only above DEBUG
(their messages may quote customer data) and answered with ``internal_error``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_parameter",
    429: "rate_limited",
}


class ApiError(Exception):
    """An answer other than success, with the code clients may rely on."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.field, self.headers = field, dict(headers or {})

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        return {"error": error}


class BodyTooLargeError(StarletteHTTPException):
    """Raised from the request body stream (see ``app.BodyLimit``); an HTTPException so that
    FastAPI's body parsing passes it on instead of turning it into a 400."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes")


def is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def install(app: FastAPI) -> None:
    """Register the handlers that give every failure its documented shape."""
    app.add_exception_handler(ApiError, _api_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_middleware(UnexpectedErrors)


class UnexpectedErrors:
    """Pure ASGI middleware: an unexpected exception becomes the documented 500, logged by
    type only. (Starlette's handler for ``Exception`` answers, then re-raises to the server,
    which logs the whole traceback and message at ERROR: paths, and possibly data.)"""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception as exc:
            if started:
                raise  # the answer is under way: nothing else can be said
            request = Request(scope)
            response = await _unexpected(request, exc)
            await response(scope, receive, send)


async def _api_error(request: Request, exc: ApiError) -> Response:
    return respond(request, exc)


async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    first = exc.errors()[0] if exc.errors() else {}
    location = [str(part) for part in first.get("loc", ()) if part not in ("query", "path", "body")]
    field = ".".join(location) or None
    reason = str(first.get("msg", "invalid value"))
    message = f"{field}: {reason}" if field else reason
    return respond(request, ApiError(422, "invalid_parameter", message, field=field))


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    if exc.status_code == 404 and message == "Not Found":
        message = f"no such page or endpoint: {request.url.path[:200]}"
    return respond(request, ApiError(exc.status_code, code, message, headers=exc.headers))


async def _unexpected(request: Request, exc: Exception) -> Response:
    route = getattr(request.scope.get("route"), "path", None) or request.url.path[:200]
    _log.error("unexpected %s serving %s %s", type(exc).__name__, request.method, route)
    _log.debug("unexpected error", exc_info=exc)
    return respond(
        request, ApiError(500, "internal_error", "internal error: the service log names its type")
    )


def respond(request: Request, error: ApiError) -> Response:
    """JSON for the API; for pages, a redirect to sign in or the error page."""
    if is_api(request):
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)
    if error.status == 401 and request.method == "GET":
        return RedirectResponse("/login", status_code=303)
    from otel_lineage.web.pages import error_page  # pages import this module

    return error_page(request, error)
