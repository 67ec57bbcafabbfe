"""Personal data stays home, including in errors (issue 9 item 1, contract 9).

A unique marker goes into every input column in turn; each report then fails at one step (bad
date, bad number, bad encoding, template, PDF, storage) or succeeds. Traces are exported at
ratio 1.0 over the real OTLP/HTTP exporter to a local receiver and OpenLineage events are
emitted to another; no marker may appear in any exported byte nor in any log record above
DEBUG, while the lineage database keeps the full message and snapshot.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

import otel_lineage
from d6_reports.generator import GenerationOptions, ReportGenerator
from d6_reports.models import ReportGeneration
from d6_reports.templates import TemplateRegistry
from otel_lineage.protection.snapshots import has_snapshot, snapshot_blob
from otel_lineage.reading.openlineage import (
    EmitError,
    EmitURLError,
    emit,
    failure_message,
    run_events,
)
from otel_lineage.reading.query import get_row
from otel_lineage.record import decompress
from tests.fast_pdf import FastPDFConverter
from tests.privacy_support import (
    COLUMNS,
    Case,
    MarkerQuotingConverter,
    break_inputs,
    drip_server,
    insert_case,
    new_marker,
    protobuf_strings,
    recording_server,
    template_root,
)

#: Failure kinds on every backend, and those only SQLite can store (any text in any column).
FAILURES = ("success", "template", "pdf", "storage", "bad_date", "bad_number")
SQLITE_ONLY = ("bad_encoding", "number_as_text")
TEMPLATE = {"template": "lookup", "number_as_text": "audit_report"}
#: Where the load succeeds, the snapshot (kept at home) holds the marker.
SNAPSHOT_KEPT = {"success", "template", "pdf", "storage", "number_as_text"}


def _message_quotes_marker(failure: str, sqlite: bool) -> bool:
    """Whether the exception of ``failure`` itself quotes the marked value."""
    return failure in ("template", "pdf", "bad_encoding") or (failure == "bad_date" and sqlite)


@contextlib.contextmanager
def _generators(
    sessions: sessionmaker[Session], provider: TracerProvider, tmp_path: Path
) -> Iterator[dict[str, ReportGenerator]]:
    """One generator per way of failing outside the data: PDF converter, storage."""
    registry = TemplateRegistry(template_root(tmp_path / "templates"))
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")  # reports below a regular file cannot be stored, even by root
    made = {
        "default": ReportGenerator(
            sessions,
            tmp_path / "reports",
            registry=registry,
            converter=FastPDFConverter(),
            tracer_provider=provider,
        ),
        "pdf": ReportGenerator(
            sessions,
            tmp_path / "reports",
            registry=registry,
            converter=MarkerQuotingConverter(),
            tracer_provider=provider,
        ),
        "storage": ReportGenerator(
            sessions,
            blocker / "reports",
            registry=registry,
            converter=FastPDFConverter(),
            tracer_provider=provider,
        ),
    }
    try:
        yield made
    finally:
        for generator in made.values():
            generator.close()


def _generate(generators: dict[str, ReportGenerator], case: Case) -> None:
    generator = generators.get(case.failure, generators["default"])
    name = TEMPLATE.get(case.failure, "everything")
    version = "2.0.0" if name == "audit_report" else "1.0.0"
    # An unexpected error (a value the driver cannot decode) may reach the caller; what
    # matters here is where its message goes, not whether it is raised.
    with contextlib.suppress(Exception):
        generator.generate_report_sync(case.business_id, GenerationOptions(name, version))


def _exported_strings(bodies: list[bytes]) -> Iterator[tuple[str, str]]:
    """(trace id, string) for every string of every exported span, resource and scope."""
    for body in bodies:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    for value in protobuf_strings(span):
                        yield span.trace_id.hex(), value
            for value in protobuf_strings(resource_spans.resource):
                yield "", value


def _logged(caplog: pytest.LogCaptureFixture) -> Iterator[str]:
    formatter = logging.Formatter()
    for record in caplog.records:
        if record.levelno > logging.DEBUG:
            yield record.getMessage()
            if record.exc_info:
                yield formatter.formatException(record.exc_info)


def test_no_input_value_leaves_the_process_whatever_fails(
    db_url: str,
    engine: Engine,
    sessions: sessionmaker[Session],
    tmp_path: Path,
    otlp_receiver: tuple[str, list[bytes]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)  # every logger, INFO and above
    sqlite = engine.dialect.name == "sqlite"
    failures = FAILURES + (SQLITE_ONLY if sqlite else ())
    cases = [
        insert_case(sessions, Case(table, column, failure, new_marker()))
        for failure in failures
        for table, column in COLUMNS
    ]
    for case in cases:
        break_inputs(engine, case)

    endpoint, bodies = otlp_receiver
    lineage = otel_lineage.configure(
        engines=[engine],  # SQL spans exported too, as zero-code mode does
        database_url=db_url,
        sampler=ParentBased(TraceIdRatioBased(1.0)),
        exporter=OTLPSpanExporter(endpoint=endpoint),
        set_global=False,
    )
    try:
        with _generators(sessions, lineage.provider, tmp_path) as generators:
            for case in cases:
                _generate(generators, case)
        assert lineage.flush(60)
    finally:
        lineage.shutdown()
        lineage.provider.shutdown()

    with sessions() as session:
        generations = {g.business_id: g for g in session.scalars(select(ReportGeneration))}
    rows = {case.label: get_row(engine, generations[case.business_id].id) for case in cases}

    # OpenLineage events of the same reports, emitted to a local receiver.
    with recording_server() as (marquez, events_sent):
        events = [e for row in rows.values() for e in run_events(row, db_url)]
        assert emit(events, marquez) == len(events) == 2 * len(cases)
    assert len(events_sent) == len(events)

    exported = list(_exported_strings(bodies))
    exported_traces = {trace_id for trace_id, _ in exported if trace_id}
    assert exported_traces == {str(row["trace_id"]) for row in rows.values()}  # ratio 1.0
    logged = list(_logged(caplog))
    problems = [problem for case in cases for problem in _problems(case, generations, rows, sqlite)]
    for case in cases:
        marker = case.marker
        # Nothing leaves: span data (decoded, and raw bytes), OpenLineage bytes, logs.
        problems += [
            f"{case.label}: exported span data: {v[:120]!r}" for _, v in exported if marker in v
        ]
        if any(marker.encode() in body for body in bodies):
            problems.append(f"{case.label}: raw OTLP bytes")
        if any(marker.encode() in body for body in events_sent):
            problems.append(f"{case.label}: OpenLineage event")
        problems += [f"{case.label}: log: {t[:120]!r}" for t in logged if marker in t]
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems)

    fails = [orjson.loads(body) for body in events_sent]
    fails = [event for event in fails if event["eventType"] == "FAIL"]
    assert len(fails) == len(cases) - len(COLUMNS)
    for event in fails:
        message = event["run"]["facets"]["errorMessage"]["message"]
        assert message.split(":")[0] in {str(r["error_type"]) for r in rows.values()}
        assert "stackTrace" not in event["run"]["facets"]["errorMessage"]


def _problems(
    case: Case,
    generations: dict[int, ReportGeneration],
    rows: dict[str, dict[str, Any]],
    sqlite: bool,
) -> Iterator[str]:
    """What is wrong with the rows of ``case``: everything must stay home, in full."""
    generation, row = generations[case.business_id], rows[case.label]
    expected = "completed" if case.failure == "success" else "failed"
    if (generation.status, row["status"]) != (expected, expected):
        yield f"{case.label}: status {generation.status}/{row['status']}, not {expected}"
    if expected == "completed":
        return
    if row["error_type"] != generation.error_type:
        yield f"{case.label}: error_type {row['error_type']} != {generation.error_type}"
    quoted = _message_quotes_marker(case.failure, sqlite)
    if (case.marker in (generation.error_message or "")) is not quoted:
        yield f"{case.label}: ReportGeneration.error_message {generation.error_message!r}"
    if (case.marker in str(row["error_message"] or "")) is not quoted:
        yield f"{case.label}: report_lineage.error_message {row['error_message']!r}"
    kept = has_snapshot(row) and case.marker.encode() in decompress(*snapshot_blob(row))
    if kept is not (case.failure in SNAPSHOT_KEPT):
        yield f"{case.label}: snapshot {'kept' if kept else 'missing'}"


def test_failure_message_is_fixed_per_type() -> None:
    assert failure_message("InputsError") == failure_message("InputsError")
    assert failure_message("InputsError").startswith("InputsError: ")
    # An error type is a class name: anything else is not trusted to be free of data.
    assert failure_message("hello@bakery.example: bad").startswith("UnknownError: ")
    assert "hello@" not in failure_message("hello@bakery.example: bad")
    assert failure_message(None).startswith("UnknownError: ")


_EVENT = {"eventType": "START", "run": {"runId": "0"}}


@pytest.mark.parametrize("in_body", [False, True], ids=["drip-headers", "drip-body"])
def test_emit_to_a_server_that_drips_bytes_stops_at_the_deadline(in_body: bool) -> None:
    """Each byte arrives well within the socket timeout; only the total deadline stops it."""
    with drip_server(in_body=in_body) as url, pytest.raises(EmitError) as raised:
        emit([_EVENT], url, timeout_s=5.0, deadline_s=0.3)
    message = str(raised.value)
    assert "did not answer within 0.3 s" in message and "\n" not in message
    assert isinstance(raised.value, OSError)  # what the CLI catches and prints in one line


def test_emit_refuses_what_is_not_an_http_url() -> None:
    for url in ("file:///etc/passwd", "not a url", "http://", "http://host:99999"):
        with pytest.raises(EmitURLError) as raised:
            emit([_EVENT], url)
        assert isinstance(raised.value, ValueError) and "\n" not in str(raised.value)


def test_emit_failures_are_one_line() -> None:
    with recording_server() as (url, _):
        pass  # the port is free again: nothing listens there now
    with pytest.raises(EmitError) as raised:
        emit([_EVENT], url, timeout_s=2.0)
    assert "ConnectionRefusedError" in str(raised.value) and "\n" not in str(raised.value)


def test_the_collector_strips_exception_messages_and_stack_traces() -> None:
    """Second line of defence: whatever records an error message, the Collector removes it."""
    import yaml  # type: ignore[import-untyped]  # PyYAML: via openlineage-python (dev)

    config = yaml.safe_load((Path(__file__).parents[2] / "collector-config.yaml").read_text())
    processors = config["service"]["pipelines"]["traces"]["processors"]
    name = "transform/strip_error_messages"
    assert processors.index(name) < processors.index("batch")
    groups = config["processors"][name]["trace_statements"]
    statements = [s.replace(" ", "") for group in groups for s in group["statements"]]
    for target in ("spanevent.attributes", "span.attributes"):
        for key in ("exception.message", "exception.stacktrace"):
            assert f'delete_key({target},"{key}")' in statements
    assert any(s.startswith('set(span.status.message,"")') for s in statements)
    # span statements in a group of their own: in the span event context they would only
    # run for spans that have events
    assert all(len({s.split("(")[1].split(".")[0] for s in g["statements"]}) == 1 for g in groups)
