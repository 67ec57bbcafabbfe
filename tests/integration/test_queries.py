"""Every query command, on SQLite and PostgreSQL, including the bad inputs."""

from __future__ import annotations

import base64
import hashlib
import http.server
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import orjson
import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from d6_reports.generator import GenerationOptions, GenerationResult
from otel_lineage.cli import app
from otel_lineage.delivery.schema import report_lineage
from tests.lineage_support import lineage_pipeline, make_generator

runner = CliRunner()
DOCS = Path(__file__).resolve().parents[2] / "docs"


@dataclass
class Reports:
    summary: list[GenerationResult]
    audit_v1: GenerationResult
    failed: GenerationResult
    engine: Engine


@pytest.fixture
def reports(
    db_url: str,
    engine: Engine,
    sessions: sessionmaker[Session],
    business_ids: list[int],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Reports:
    monkeypatch.setenv("D6_DATABASE_URL", db_url)
    monkeypatch.delenv("OTEL_LINEAGE_DATABASE_URL", raising=False)
    with lineage_pipeline(db_url, engine, ratio=1.0) as (lineage, _):
        generator = make_generator(sessions, lineage, tmp_path / "pdfs")
        summary = [
            generator.generate_report_sync(b, GenerationOptions("summary"))
            for b in business_ids[:3]
        ]
        audit_v1 = generator.generate_report_sync(
            business_ids[3], GenerationOptions("audit_report", "1.0.0")
        )
        failed = generator.generate_report_sync(777777, GenerationOptions("summary"))
        assert lineage.flush(30)
    return Reports(summary, audit_v1, failed, engine)


def _json(args: list[str]) -> object:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return orjson.loads(result.stdout)


def _blob(engine: Engine, report_id: str, column: str) -> bytes | None:
    with engine.connect() as conn:
        value = conn.scalar(
            select(report_lineage.c[column]).where(
                report_lineage.c.report_generation_id == report_id
            )
        )
    return None if value is None else bytes(value)


def _set(engine: Engine, report_id: str, **values: object) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(report_lineage)
            .where(report_lineage.c.report_generation_id == report_id)
            .values(**values)
        )


def test_list_filters_and_pages(reports: Reports) -> None:
    everything = _json(["list", "--json"])
    assert isinstance(everything, dict) and everything["total"] == 5
    assert all("report_generation_id" in r for r in everything["rows"])
    only_v1 = _json(["list", "--template", "audit_report", "--version", "1.0.0", "--json"])
    assert [r["report_generation_id"] for r in only_v1["rows"]] == [  # type: ignore[index]
        reports.audit_v1.generation_id
    ]
    failed = _json(["list", "--status", "failed", "--json"])
    assert [r["report_generation_id"] for r in failed["rows"]] == [  # type: ignore[index]
        reports.failed.generation_id
    ]
    by_business = _json(["list", "--business", str(reports.summary[0].business_id), "--json"])
    assert by_business["total"] == 1  # type: ignore[index]
    page_two = _json(["list", "--limit", "2", "--page", "2", "--json"])
    assert page_two["total"] == 5 and len(page_two["rows"]) == 2  # type: ignore[index]
    assert _json(["list", "--incomplete", "--json"])["total"] == 0  # type: ignore[index]
    assert _json(["list", "--since", "2999-01-01", "--json"])["total"] == 0  # type: ignore[index]
    table = runner.invoke(app, ["list"])
    assert table.exit_code == 0 and "summary" in table.output


def test_identify_a_pdf(reports: Reports, tmp_path: Path) -> None:
    pdf = reports.summary[1].pdf_path
    assert pdf is not None
    found = _json(["identify", str(pdf), "--json"])
    assert isinstance(found, dict)
    assert found["sha256"] == hashlib.sha256(pdf.read_bytes()).hexdigest()
    assert [m["report_generation_id"] for m in found["matches"]] == [
        reports.summary[1].generation_id
    ]
    text = runner.invoke(app, ["identify", str(pdf)])
    assert text.exit_code == 0 and reports.summary[1].generation_id in text.output
    not_pdf = tmp_path / "invoice.pdf"
    not_pdf.write_text("<html>not a pdf</html>")
    result = runner.invoke(app, ["identify", str(not_pdf)])
    assert result.exit_code == 1 and "is not a PDF" in result.output
    stranger = tmp_path / "stranger.pdf"
    stranger.write_bytes(b"%PDF-1.7\n% someone else's\n")
    result = runner.invoke(app, ["identify", str(stranger)])
    assert result.exit_code == 1 and "no report produced a PDF" in result.output
    result = runner.invoke(app, ["identify", str(tmp_path / "missing.pdf")])
    assert result.exit_code == 1 and "cannot read" in result.output


def test_inputs_byte_exact_and_bad_blobs(reports: Reports, tmp_path: Path) -> None:
    report_id = reports.audit_v1.generation_id
    out = tmp_path / "inputs.json"
    result = runner.invoke(app, ["inputs", report_id, "--output", str(out)])
    assert result.exit_code == 0, result.output
    row = orjson.loads(runner.invoke(app, ["show", report_id, "--json"]).stdout)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == row["inputs_sha256"]
    stdout = runner.invoke(app, ["inputs", report_id])
    assert stdout.stdout_bytes == out.read_bytes()
    missing = runner.invoke(app, ["inputs", str(uuid.uuid4())])
    assert missing.exit_code == 1 and "no lineage row" in missing.output
    _set(reports.engine, report_id, inputs_snapshot=b"\x28\xb5\x2f\xfd garbage")
    corrupt = runner.invoke(app, ["inputs", report_id])
    assert corrupt.exit_code == 1 and "is corrupt" in corrupt.output
    assert _blob(reports.engine, report_id, "inputs_snapshot") == b"\x28\xb5\x2f\xfd garbage"
    failed = runner.invoke(app, ["inputs", reports.failed.generation_id])
    assert failed.exit_code == 1 and "never captured" in failed.output


def test_stats_per_template_version(reports: Reports) -> None:
    groups = {(g["template_name"], g["template_version"]): g for g in _json(["stats", "--json"])}  # type: ignore[union-attr, index]
    version = reports.summary[0].template_version  # the latest released summary version
    summary = groups[("summary", version)]
    assert (summary["count"], summary["failed"], summary["failure_rate"]) == (4, 1, 0.25)
    assert set(summary["steps"]) >= {"report.convert_pdf", "report.load_inputs"}
    pdf = summary["steps"]["report.convert_pdf"]
    assert 0 < pdf["p50_ms"] <= pdf["p95_ms"]
    assert groups[("audit_report", "1.0.0")]["count"] == 1
    assert runner.invoke(app, ["stats"]).exit_code == 0


def test_verify_reproduces_and_reports_differences(reports: Reports) -> None:
    report_id = reports.summary[0].generation_id
    ok = runner.invoke(app, ["verify", report_id])
    assert ok.exit_code == 0, ok.output
    assert "reproduced byte for byte" in ok.output
    _set(reports.engine, report_id, html_sha256="0" * 64)
    differs = runner.invoke(app, ["verify", report_id, "--json"])
    assert differs.exit_code == 1
    checks = {c["what"]: c["ok"] for c in orjson.loads(differs.stdout)["checks"]}
    assert checks == {
        "inputs snapshot sha256": True,
        "template sha256": True,
        "html sha256": False,
        "pdf sha256": True,
    }
    _set(reports.engine, report_id, template_version="0.9.0")
    gone = runner.invoke(app, ["verify", report_id])
    assert gone.exit_code == 1 and "0.9.0 is no longer installed" in gone.output
    assert runner.invoke(app, ["verify", "nope"]).exit_code == 1


def test_trace_as_jaeger_json(reports: Reports) -> None:
    report_id = reports.summary[0].generation_id
    document = _json(["trace", report_id, "--format", "jaeger"])
    assert isinstance(document, dict)
    (trace,) = document["data"]
    row = orjson.loads(runner.invoke(app, ["show", report_id, "--json"]).stdout)
    assert trace["traceID"] == row["trace_id"]
    assert trace["processes"]["p1"]["serviceName"]
    spans = {s["spanID"]: s for s in trace["spans"]}
    assert len(spans) == row["span_count"]
    roots = [s for s in spans.values() if not s["references"]]
    assert [r["operationName"] for r in roots] == ["report.generate"]
    for span in spans.values():
        assert span["processID"] == "p1" and span["duration"] >= 0
        for ref in span["references"]:
            assert ref["refType"] == "CHILD_OF" and ref["spanID"] in spans
    failed = _json(["trace", reports.failed.generation_id])
    failed_root = next(
        s
        for s in failed["data"][0]["spans"]
        if s["operationName"] == "report.generate"  # type: ignore[index]
    )
    assert {"key": "error", "type": "bool", "value": True} in failed_root["tags"]


def test_trace_as_otlp_json_parses_as_export_request(reports: Reports, tmp_path: Path) -> None:
    report_id = reports.summary[2].generation_id
    out = tmp_path / "trace.json"
    assert (
        runner.invoke(app, ["trace", report_id, "--format", "otlp", "-o", str(out)]).exit_code == 0
    )
    document = orjson.loads(out.read_bytes())
    hex_ids = {}
    for resource_spans in document["resourceSpans"]:
        for scope_spans in resource_spans["scopeSpans"]:
            for span in scope_spans["spans"]:
                hex_ids[span["spanId"]] = span.get("parentSpanId")
                for key in ("traceId", "spanId", "parentSpanId"):  # OTLP/JSON ids are hex
                    if key in span:
                        span[key] = base64.b64encode(bytes.fromhex(span[key])).decode()
    request = json_format.ParseDict(document, ExportTraceServiceRequest())
    spans = [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
    row = orjson.loads(runner.invoke(app, ["show", report_id, "--json"]).stdout)
    assert len(spans) == row["span_count"]
    assert {s.trace_id.hex() for s in spans} == {row["trace_id"]}
    by_id = {s.span_id.hex(): s for s in spans}
    root = by_id[row["root_span_id"]]
    assert root.name == "report.generate" and not root.parent_span_id
    for span in spans:
        if span.parent_span_id:
            assert span.parent_span_id.hex() in by_id
    resource = {a.key: a.value.string_value for a in request.resource_spans[0].resource.attributes}
    assert "service.name" in resource
    assert runner.invoke(app, ["trace", report_id, "--format", "zipkin"]).exit_code == 2


class _Marquez(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append((self.path, orjson.loads(body)))  # type: ignore[attr-defined]
        self.send_response(201)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def marquez() -> Iterator[tuple[str, list[tuple[str, dict[str, object]]]]]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Marquez)
    server.received = []  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", server.received  # type: ignore[attr-defined]
    server.shutdown()
    server.server_close()


def test_openlineage_events(
    reports: Reports, marquez: tuple[str, list[tuple[str, dict[str, object]]]]
) -> None:
    facet_schema = orjson.loads((DOCS / "openlineage" / "D6ReportRunFacet.json").read_bytes())
    report_id = reports.audit_v1.generation_id
    result = runner.invoke(app, ["openlineage", report_id])
    assert result.exit_code == 0, result.output
    start, complete = (orjson.loads(line) for line in result.stdout.splitlines())
    row = orjson.loads(runner.invoke(app, ["show", report_id, "--json"]).stdout)
    assert (start["eventType"], complete["eventType"]) == ("START", "COMPLETE")
    assert start["run"]["runId"] == complete["run"]["runId"] == str(uuid.UUID(row["trace_id"]))
    assert complete["job"] == {"namespace": row["service_name"], "name": "audit_report"}
    assert [d["name"].rsplit(".", 1)[-1] for d in complete["inputs"]] == [
        "business",
        "website_assessment",
        "finding",
    ]
    (output,) = complete["outputs"]
    assert output["namespace"] == "file" and output["name"].endswith(".pdf")
    assert output["facets"]["version"]["datasetVersion"] == reports.audit_v1.pdf_sha256
    facet = complete["run"]["facets"]["d6_report"]
    assert (facet["traceId"], facet["spanId"]) == (row["trace_id"], row["root_span_id"])
    jsonschema.validate({"d6_report": facet}, facet_schema)
    for event in (start, complete):
        assert event["schemaURL"].startswith("https://openlineage.io/spec/")
        assert event["eventTime"] and event["producer"].startswith("https://")

    fail = runner.invoke(app, ["openlineage", reports.failed.generation_id])
    _, ended = (orjson.loads(line) for line in fail.stdout.splitlines())
    assert ended["eventType"] == "FAIL"
    assert ended["run"]["facets"]["errorMessage"]["message"].startswith("BusinessNotFound")

    url, received = marquez
    sent = runner.invoke(app, ["openlineage", "--since", "2000-01-01", "--emit", url])
    assert sent.exit_code == 0, sent.output
    assert len(received) == 10 and {path for path, _ in received} == {"/api/v1/lineage"}
    assert {e["eventType"] for _, e in received} == {"START", "COMPLETE", "FAIL"}
    dead = runner.invoke(app, ["openlineage", report_id, "--emit", "http://127.0.0.1:9"])
    assert dead.exit_code == 1 and "emitting" in dead.output
    assert runner.invoke(app, ["openlineage"]).exit_code == 2


def test_prune_keeps_the_row_and_drops_the_payloads(reports: Reports) -> None:
    before = _json(["list", "--json"])
    dry = runner.invoke(app, ["prune", "--snapshots-older-than", "0", "--dry-run"])
    assert dry.exit_code == 0 and "5 rows" in dry.output and "would free" in dry.output
    report_id = reports.summary[0].generation_id
    assert _blob(reports.engine, report_id, "span_tree") is not None  # dry run changed nothing
    none_old = runner.invoke(app, ["prune", "--snapshots-older-than", "30"])
    assert "0 rows" in none_old.output
    refused = runner.invoke(app, ["prune", "--snapshots-older-than", "0"])
    assert refused.exit_code == 2 and "confirm with --yes" in refused.stderr
    assert _blob(reports.engine, report_id, "span_tree") is not None
    done = runner.invoke(app, ["prune", "--snapshots-older-than", "0", "--yes"])
    assert done.exit_code == 0 and "freed" in done.output
    assert int(done.output.split("freed ")[1].split()[0]) > 0
    assert _blob(reports.engine, report_id, "span_tree") is None
    assert _blob(reports.engine, report_id, "inputs_snapshot") is None
    assert _json(["list", "--json"]) == before  # hashes, steps and rows are all kept
    inputs = runner.invoke(app, ["inputs", report_id])
    assert inputs.exit_code == 1 and "pruned at" in inputs.output
    trace = runner.invoke(app, ["trace", report_id])
    assert trace.exit_code == 1 and "pruned" in trace.output
    assert runner.invoke(app, ["show", report_id]).exit_code == 0


def test_show_links_to_jaeger(reports: Reports, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_LINEAGE_JAEGER_URL", "http://jaeger.example:16686/")
    report_id = reports.summary[0].generation_id
    _set(reports.engine, report_id, exported=True, sampled=True)
    shown = orjson.loads(runner.invoke(app, ["show", report_id, "--json"]).stdout)
    assert shown["jaeger_url"] == f"http://jaeger.example:16686/trace/{shown['trace_id']}"
    text = runner.invoke(app, ["show", report_id[:8]])
    assert text.exit_code == 0 and "http://jaeger.example:16686/trace/" in text.output
    assert "(exported)" in text.output
    # "exported" comes from the row's exported column only: a sampled trace with no exporter
    # configured went nowhere
    _set(reports.engine, report_id, exported=False, sampled=True)
    shown = orjson.loads(runner.invoke(app, ["show", report_id, "--json"]).stdout)
    assert shown["jaeger_url"] is None
    assert "(not exported)" in runner.invoke(app, ["show", report_id]).output
    assert runner.invoke(app, ["show"]).exit_code == 2


def test_openlineage_events_match_the_official_client_model(reports: Reports) -> None:
    """Rebuild each event with openlineage-python's typed classes (generated from the spec, with
    their validators: UUID run ids, ISO 8601 times, event types) and compare what they
    serialise with what we emit."""
    from openlineage.client.event_v2 import (
        InputDataset,
        Job,
        OutputDataset,
        Run,
        RunEvent,
        RunState,
    )
    from openlineage.client.facet_v2 import dataset_version_dataset, error_message_run
    from openlineage.client.serde import Serde

    for report_id in (reports.audit_v1.generation_id, reports.failed.generation_id):
        result = runner.invoke(app, ["openlineage", report_id])
        for ours in (orjson.loads(line) for line in result.stdout.splitlines()):
            facets = {}
            if "errorMessage" in ours["run"]["facets"]:
                error = ours["run"]["facets"]["errorMessage"]
                facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
                    message=error["message"],
                    programmingLanguage=error["programmingLanguage"],
                    producer=ours["producer"],
                )
            official = RunEvent(
                eventType=RunState(ours["eventType"]),
                eventTime=ours["eventTime"],
                run=Run(runId=ours["run"]["runId"], facets=facets),
                job=Job(namespace=ours["job"]["namespace"], name=ours["job"]["name"]),
                producer=ours["producer"],
                inputs=[
                    InputDataset(namespace=d["namespace"], name=d["name"]) for d in ours["inputs"]
                ],
                outputs=[
                    OutputDataset(
                        namespace=d["namespace"],
                        name=d["name"],
                        facets={
                            "version": dataset_version_dataset.DatasetVersionDatasetFacet(
                                datasetVersion=d["facets"]["version"]["datasetVersion"],
                                producer=ours["producer"],
                            )
                        },
                    )
                    for d in ours["outputs"]
                ],
            )
            expected = Serde.to_dict(official)
            del ours["run"]["facets"]["d6_report"]  # our own facet (schema in docs/openlineage)
            if not ours["run"]["facets"]:
                del ours["run"]["facets"]
            assert _without_empty(ours) == _without_empty(expected)


def _without_empty(value: object) -> object:
    if isinstance(value, dict):
        return {k: _without_empty(v) for k, v in value.items() if v not in ({}, [], None)}
    if isinstance(value, list):
        return [_without_empty(v) for v in value]
    return value
