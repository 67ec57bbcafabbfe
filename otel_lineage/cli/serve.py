"""``otel-lineage serve``: the lineage service (FastAPI) on uvicorn.

The settings are checked here, once, before uvicorn starts (a bad variable is one ``error:``
line, not a traceback per worker), which also creates the shared session secret file before
several workers race for it. Workers build their own app from the environment
(``create_app_from_env``, an import string: uvicorn needs one to spawn them); ``--no-auth`` and
the host travel to them in the environment, and the settings refuse ``--no-auth`` off loopback
in every worker too.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

from otel_lineage.cli.support import CliError
from otel_lineage.settings import LineageConfigError

FACTORY = "otel_lineage.web.app:create_app_from_env"


def serve(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8080,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Worker processes.")] = 1,
    no_auth: Annotated[
        bool,
        typer.Option(
            "--no-auth",
            help="Everyone is admin, no key needed: a local demo only (loopback hosts only).",
        ),
    ] = False,
) -> None:
    """Serve the lineage API (/api/v1, docs at /docs) and pages on HOST:PORT."""
    from otel_lineage.web.settings import HOST_ENV, NO_AUTH_ENV, WebSettings, is_loopback

    if no_auth and not is_loopback(host):
        raise CliError(
            f"--no-auth is refused on host {host!r}: it would serve every report and input "
            "snapshot to anyone who can connect; bind 127.0.0.1 or create keys instead"
        )
    os.environ[HOST_ENV] = host
    os.environ[NO_AUTH_ENV] = "1" if no_auth else "0"
    try:
        settings = WebSettings.from_env()
        from otel_lineage.web.app import create_app, dispose

        dispose(create_app(settings))  # the databases are there and the app builds
    except LineageConfigError as exc:
        raise CliError(str(exc)) from exc
    import uvicorn

    typer.echo(
        f"lineage service on http://{host}:{port}/ ({workers} worker(s)"
        f"{', NO AUTHENTICATION' if no_auth else ''})",
        err=True,
    )
    uvicorn.run(
        FACTORY,
        factory=True,
        host=host,
        port=port,
        workers=workers,
        proxy_headers=False,  # the service trusts forwarded headers only from its own list
        server_header=False,
        log_level="info",
    )
