"""Report runs as OpenLineage RunEvents (START, then COMPLETE or FAIL), and emitting them.

Mapping (docs/semantic-conventions.md has the table):
- job: namespace = the service name, name = the template name (the template *version* is in
  the ``d6_report`` run facet: a new template version is a new run configuration, not a new job);
- run: ``runId`` = the trace id as a UUID, so a run and its trace are the same identity;
- inputs: the tables read, named per the OpenLineage naming rules of the report database
  (PostgreSQL: namespace ``postgres://host:port``, name ``database.schema.table``; SQLite, which
  the rules do not cover: namespace ``sqlite://<file path>``, name ``table``);
- output: the PDF (namespace ``file``, name = its path), with its sha256 as the dataset version;
- run facets: ``d6_report`` (trace id, root span id, report id, template version and hash,
  input snapshot hash) and, for failures, the standard ``errorMessage``.

Events leave the host, so they carry no input value: the ``errorMessage`` facet names the error
*type* with a fixed description and no stack trace. The full message (which may quote customer
data, e.g. an unparsable value) stays in the lineage database, for people with access to it.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import unquote, urlsplit

from sqlalchemy.engine import make_url

PRODUCER = "https://d6-reports.invalid/otel_lineage/0.1.0"
SCHEMA_URL = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent"
REPORT_FACET_SCHEMA = "https://d6-reports.invalid/spec/facets/1-0-0/D6ReportRunFacet.json"
ERROR_FACET_SCHEMA = (
    "https://openlineage.io/spec/facets/1-0-1/ErrorMessageRunFacet.json#/$defs/ErrorMessageRunFacet"
)
FAILURE_DESCRIPTION = "report generation failed (the full message is in the lineage database)"
#: An error type is a class name (``InputsError``, ``OperationalError``); anything else is not
#: trusted to be free of input data and is replaced.
_ERROR_TYPE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,99}$")
VERSION_FACET_SCHEMA = (
    "https://openlineage.io/spec/facets/1-0-1/DatasetVersionDatasetFacet.json"
    "#/$defs/DatasetVersionDatasetFacet"
)


def input_dataset_namespace(database_url: str) -> tuple[str, str]:
    """(namespace, name prefix) of tables in ``database_url`` per the naming rules."""
    url = make_url(database_url)
    if url.get_backend_name() == "postgresql":
        options = url.query.get("options", "")
        schema = "public"
        if isinstance(options, str) and "search_path=" in options:
            schema = options.split("search_path=", 1)[1].split()[0].split(",")[0]
        return (
            f"postgres://{url.host or 'localhost'}:{url.port or 5432}",
            f"{url.database}.{schema}.",
        )
    return f"sqlite://{url.database}", ""


def run_events(row: Mapping[str, Any], reports_database_url: str) -> list[dict[str, Any]]:
    """START and COMPLETE/FAIL events for one lineage row."""
    run_id = str(uuid.UUID(hex=str(row["trace_id"])))
    namespace, prefix = input_dataset_namespace(reports_database_url)
    inputs = [{"namespace": namespace, "name": f"{prefix}{table}"} for table in row["input_tables"]]
    outputs = []
    if row.get("output_uri"):
        outputs.append(
            {
                "namespace": "file",
                "name": unquote(urlsplit(str(row["output_uri"])).path),
                "facets": {
                    "version": {
                        "_producer": PRODUCER,
                        "_schemaURL": VERSION_FACET_SCHEMA,
                        "datasetVersion": row["output_sha256"],
                    }
                },
            }
        )
    job = {"namespace": row.get("service_name") or "d6-reports", "name": row["template_name"]}
    report_facet = {
        "_producer": PRODUCER,
        "_schemaURL": REPORT_FACET_SCHEMA,
        "traceId": row["trace_id"],
        "spanId": row["root_span_id"],
        "reportGenerationId": row["report_generation_id"],
        "templateVersion": row["template_version"],
        "templateSha256": row["template_sha256"],
        "inputsSha256": row["inputs_sha256"],
        "sampled": bool(row["sampled"]),
    }
    start = _event("START", row["started_at"], run_id, {"d6_report": report_facet}, job)
    start["inputs"] = inputs
    facets: dict[str, Any] = {"d6_report": report_facet}
    failed = row["status"] != "completed"
    if failed:
        facets["errorMessage"] = {
            "_producer": PRODUCER,
            "_schemaURL": ERROR_FACET_SCHEMA,
            "message": failure_message(row.get("error_type")),
            "programmingLanguage": "python",
        }
    end = _event(
        "FAIL" if failed else "COMPLETE", row["ended_at"] or row["started_at"], run_id, facets, job
    )
    end["inputs"] = inputs
    end["outputs"] = outputs
    return [start, end]


def failure_message(error_type: object) -> str:
    """The exported description of a failure: its type and a fixed text, never its message."""
    name = str(error_type) if error_type is not None else ""
    return f"{name if _ERROR_TYPE.match(name) else 'UnknownError'}: {FAILURE_DESCRIPTION}"


def _event(
    event_type: str, when: datetime | str, run_id: str, facets: dict[str, Any], job: dict[str, str]
) -> dict[str, Any]:
    return {
        "eventType": event_type,
        "eventTime": when.isoformat() if isinstance(when, datetime) else str(when),
        "run": {"runId": run_id, "facets": facets},
        "job": dict(job),
        "producer": PRODUCER,
        "schemaURL": SCHEMA_URL,
        "inputs": [],
        "outputs": [],
    }


class EmitError(OSError):
    """An emit that failed or ran out of time; its message is one line for the CLI."""


class EmitURLError(EmitError, ValueError):
    """The endpoint is not an ``http(s)://host[:port][/path]`` URL (a usage error)."""


def check_endpoint(base_url: str) -> str:
    """The lineage endpoint ``<base_url>/api/v1/lineage``; ``EmitURLError`` if not HTTP(S)."""
    parts = urlsplit(base_url)
    shown = redacted(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise EmitURLError(f"not an http(s) URL: {shown!r}")
    if any(ch.isspace() or not ch.isprintable() for ch in base_url):
        raise EmitURLError(f"the URL holds spaces or control characters: {shown!r}")
    try:
        parts.port  # noqa: B018 - raises ValueError for a non-numeric or out-of-range port
    except ValueError as exc:
        raise EmitURLError(f"invalid port in {shown!r}") from exc
    return base_url.rstrip("/") + "/api/v1/lineage"


def redacted(url: str) -> str:
    """``url`` as it may be printed: credentials replaced by ``***``, at most 200 characters."""
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        host = parts.hostname or ""
        netloc = f"***@{host}" + (f":{parts.port}" if _has_valid_port(parts) else "")
        url = parts._replace(netloc=netloc).geturl()
    return url[:200]


def _has_valid_port(parts: Any) -> bool:
    try:
        return parts.port is not None
    except ValueError:
        return False


def emit(
    events: list[dict[str, Any]],
    base_url: str,
    timeout_s: float = 10.0,
    deadline_s: float = 30.0,
) -> int:
    """POST each event to a Marquez-compatible ``<base_url>/api/v1/lineage``; returns count.

    ``timeout_s`` bounds the connect and each socket read; ``deadline_s`` bounds each whole
    request, so a server that answers one byte at a time cannot hold the caller forever (a
    socket timeout alone restarts with every byte). Raises ``EmitError`` (an ``OSError``) with
    a one-line message on any failure.
    """
    import orjson

    endpoint = check_endpoint(base_url)
    parts = urlsplit(endpoint)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    connection_class = (
        http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    )
    connection = connection_class(
        parts.hostname or "", parts.port, timeout=min(timeout_s, deadline_s)
    )
    try:
        for event in events:
            _post(connection, path, orjson.dumps(event), redacted(endpoint), deadline_s)
    finally:
        connection.close()
    return len(events)


def _post(
    connection: http.client.HTTPConnection,
    path: str,
    body: bytes,
    shown: str,
    deadline_s: float,
) -> None:
    """One POST on ``connection``, aborted by a watchdog when ``deadline_s`` has passed.

    ``shown`` is the endpoint as error messages may print it (credentials redacted)."""
    watchdog = _Watchdog(connection, deadline_s)
    started = time.monotonic()
    try:
        with watchdog:
            if connection.sock is None:
                connection.connect()  # bounded by the socket timeout, itself <= the deadline
                if watchdog.fired:  # fired while connecting, before there was a socket to shut
                    raise TimeoutError("deadline passed while connecting")
            connection.request(
                "POST", path, body=body, headers={"Content-Type": "application/json"}
            )
            response = connection.getresponse()
            response.read()
    except (OSError, http.client.HTTPException) as exc:
        connection.close()
        if watchdog.fired:
            raise EmitError(f"{shown} did not answer within {deadline_s:g} s") from exc
        if isinstance(exc, TimeoutError):
            waited = time.monotonic() - started
            raise EmitError(f"{shown} timed out after {waited:.1f} s") from exc
        reason = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise EmitError(f"{shown}: {type(exc).__name__}{': ' if reason else ''}{reason}") from exc
    if watchdog.fired:  # the shut socket can look like the end of a (truncated) answer
        connection.close()
        raise EmitError(f"{shown} did not answer within {deadline_s:g} s")
    if response.status >= 300:
        raise EmitError(f"{shown} answered {response.status} {response.reason[:100]}")


class _Watchdog:
    """Shuts the connection's socket down at the deadline, which wakes a blocked read."""

    def __init__(self, connection: http.client.HTTPConnection, deadline_s: float) -> None:
        self._connection = connection
        self._timer = threading.Timer(deadline_s, self._fire)
        self._timer.daemon = True
        self._lock = threading.Lock()
        self._done = False
        self.fired = False

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            self._done = True
        self._timer.cancel()

    def _fire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.fired = True
            sock = self._connection.sock
            if sock is not None:
                # The plain socket's shutdown, also for TLS: it only needs the descriptor. An
                # already closed socket raises OSError: the request is ending anyway.
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
