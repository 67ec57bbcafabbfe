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
"""

from __future__ import annotations

import urllib.request
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
            "message": f"{row['error_type']}: {row['error_message']}",
            "programmingLanguage": "python",
        }
    end = _event(
        "FAIL" if failed else "COMPLETE", row["ended_at"] or row["started_at"], run_id, facets, job
    )
    end["inputs"] = inputs
    end["outputs"] = outputs
    return [start, end]


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


def emit(events: list[dict[str, Any]], base_url: str, timeout_s: float = 10.0) -> int:
    """POST each event to a Marquez-compatible ``<base_url>/api/v1/lineage``; returns count."""
    import orjson

    endpoint = base_url.rstrip("/") + "/api/v1/lineage"
    for event in events:
        request = urllib.request.Request(
            endpoint,
            data=orjson.dumps(event),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            if response.status >= 300:
                raise OSError(f"{endpoint} answered {response.status}")
    return len(events)
