"""The lineage service: ``create_app(settings)`` and the factory uvicorn's workers call.

The app reads the lineage database (and the report database for the audit and for PDFs made
without lineage) and writes only the access log. It traces itself with the FastAPI
instrumentation on the global tracer provider; its spans are never report roots, so they never
become lineage, and its own SQL runs untraced like the lineage store's. Request spans carry the
path without the query string (search filters are nobody's business in a trace backend).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from opentelemetry import trace
from sqlalchemy import Engine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from otel_lineage.delivery.engines import MissingDatabaseError, create_lineage_engine, sqlite_path
from otel_lineage.settings import LineageConfigError
from otel_lineage.web import api, pages
from otel_lineage.web.errors import ApiError, BodyTooLargeError, install
from otel_lineage.web.security import FailureLimiter, SecurityHeaders, UploadsNeedAUser
from otel_lineage.web.settings import WebSettings

_log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).resolve().parent / "static"
#: Room for the multipart envelope around an upload of the configured maximum size.
MULTIPART_OVERHEAD = 64 * 1024
STATEMENT_TIMEOUT_S = 60.0


def create_app(settings: WebSettings) -> FastAPI:
    """The FastAPI app over the databases ``settings`` name (engines are made here)."""
    app = FastAPI(
        title="Report lineage",
        version="1",
        summary="What made each PDF, who looked at its inputs, and whether it reproduces.",
        openapi_url="/api/v1/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.engine = _engine(settings.database_url, read_only=False)
    app.state.reports_engine = (
        app.state.engine
        if settings.reports_database_url == settings.database_url
        else _engine(settings.reports_database_url, read_only=True)
    )
    app.state.limiter = FailureLimiter(settings.sign_in_attempts_per_minute)
    install(app)
    app.include_router(api.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(UploadsNeedAUser, state=app.state)
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes + MULTIPART_OVERHEAD)
    app.add_middleware(SecurityHeaders)
    _instrument(app)
    return app


def create_app_from_env() -> FastAPI:
    """The factory for ``uvicorn --factory`` (each worker builds its own app and engines)."""
    return create_app(WebSettings.from_env())


def dispose(app: FastAPI) -> None:
    for engine in {app.state.engine, app.state.reports_engine}:
        engine.dispose()


def _engine(url: str, *, read_only: bool) -> Engine:
    """An engine with deadlines that never creates a missing SQLite file."""
    path = sqlite_path(url)
    if path is not None and not path.is_file():
        raise LineageConfigError(f"no database at {path}; run `d6-reports db upgrade`")
    try:
        return create_lineage_engine(
            url, connect_timeout_s=10, statement_timeout_s=STATEMENT_TIMEOUT_S, read_only=read_only
        )
    except MissingDatabaseError as exc:
        raise LineageConfigError(str(exc)) from exc


def _instrument(app: FastAPI) -> None:
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=trace.get_tracer_provider(),
        server_request_hook=_without_query,
        excluded_urls="/static/.*",
    )


def _without_query(span: Any, scope: dict[str, Any]) -> None:
    """Keep search filters and upload names out of spans: the URL without its query."""
    if span is None or not span.is_recording():
        return
    path = scope.get("path", "")
    for key in ("http.url", "url.full", "http.target"):
        span.set_attribute(key, path)
    span.set_attribute("url.query", "")


class BodyLimit:
    """Refuse request bodies over ``limit``: by ``Content-Length`` before reading anything,
    and by counting while streaming (chunked uploads). Answers 413 with the API's error body."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            from fastapi.responses import JSONResponse

            error = ApiError(
                413, "too_large", f"the request body is larger than {self.limit} bytes"
            )
            await JSONResponse(error.body(), status_code=413)(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise BodyTooLargeError(self.limit)
            return message

        await self.app(scope, counted, send)
