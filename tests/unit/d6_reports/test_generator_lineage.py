"""The generator's side of the lineage contract, seen from a real SDK (no lineage plugin).

What a lineage processor relies on: one trace per report whose root carries the report's
identity from the very start (the sampler decides on it), one child span per step, a link to
the requesting span, and the report context carrier (``REPORT_CONTEXT_KEY``): the dict in the
root's start Context that the generator keeps filling, so identity, digests, the input
snapshot and the full error message reach the processor whatever the span limits, while the
exported span data never quote the error message.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind, StatusCode
from opentelemetry.util.types import Attributes
from sqlalchemy.orm import Session, sessionmaker

from d6_reports import telemetry as t
from d6_reports.generator import GenerationOptions, GenerationResult, ReportGenerator
from tests.fast_pdf import FastPDFConverter

SUMMARY = GenerationOptions("summary")


class RecordingSampler(Sampler):
    """Always samples; keeps the attributes each span had when it was sampled (at start)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, object]]] = []

    def should_sample(
        self,
        parent_context: otel_context.Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: trace.TraceState | None = None,
    ) -> SamplingResult:
        self.seen.append((name, dict(attributes or {})))
        return ALWAYS_ON.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return "RecordingSampler"


@dataclass
class CarrierProbe(SpanProcessor):
    """Takes the report context carrier from the root span's start Context, as lineage does."""

    carriers: list[object] = field(default_factory=list)

    def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
        if span.name == t.SPAN_GENERATE:
            self.carriers.append(otel_context.get_value(t.REPORT_CONTEXT_KEY, parent_context))


@dataclass
class Traced:
    provider: TracerProvider
    exporter: InMemorySpanExporter
    sampler: RecordingSampler
    probe: CarrierProbe
    generator: ReportGenerator

    def carrier(self) -> dict[str, object]:
        (carrier,) = self.probe.carriers
        assert isinstance(carrier, dict)
        return carrier

    def spans(self) -> tuple[ReadableSpan, ...]:
        return self.exporter.get_finished_spans()

    def root(self) -> ReadableSpan:
        (root,) = [s for s in self.spans() if s.name == t.SPAN_GENERATE]
        return root


@pytest.fixture
def traced(sessions: sessionmaker[Session], tmp_path: Path) -> Iterator[Traced]:
    sampler = RecordingSampler()
    provider = TracerProvider(sampler=sampler, shutdown_on_exit=False)
    exporter = InMemorySpanExporter()
    probe = CarrierProbe()
    provider.add_span_processor(probe)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    generator = ReportGenerator(
        sessions, tmp_path / "reports", converter=FastPDFConverter(), tracer_provider=provider
    )
    yield Traced(provider, exporter, sampler, probe, generator)
    generator.close()
    provider.shutdown()


def _generate(traced: Traced, business_id: int) -> GenerationResult:
    return traced.generator.generate_report_sync(business_id, SUMMARY)


def test_one_trace_per_report_with_one_span_per_step(
    traced: Traced, business_ids: list[int]
) -> None:
    first = _generate(traced, business_ids[0])
    second = _generate(traced, business_ids[1])
    spans = traced.spans()
    roots = [s for s in spans if s.name == t.SPAN_GENERATE]
    assert len(roots) == 2 and all(r.parent is None for r in roots)
    assert {trace.format_trace_id(r.context.trace_id) for r in roots} == {
        first.trace_id,
        second.trace_id,
    }
    for root in roots:
        children = [
            s for s in spans if s.parent is not None and s.parent.span_id == root.context.span_id
        ]
        assert [s.name for s in children] == list(t.STEP_SPANS)
        assert all(s.context.trace_id == root.context.trace_id for s in children)


def test_identity_attributes_are_there_when_the_root_is_sampled(
    traced: Traced, business_ids: list[int]
) -> None:
    result = _generate(traced, business_ids[0])
    (at_start,) = [attrs for name, attrs in traced.sampler.seen if name == t.SPAN_GENERATE]
    assert at_start == {
        t.GENERATION_ID: result.generation_id,
        t.BUSINESS_ID: business_ids[0],
        t.TEMPLATE_NAME: "summary",
        t.ATTEMPT: 1,
    }


def test_a_report_requested_inside_a_span_links_to_it_and_is_named_on_it(
    traced: Traced, business_ids: list[int]
) -> None:
    with traced.provider.get_tracer("app").start_as_current_span("request") as request:
        result = _generate(traced, business_ids[0])
    caller = request.get_span_context()
    root = traced.root()
    assert root.parent is None and root.context.trace_id != caller.trace_id  # its own trace
    assert [link.context for link in root.links] == [caller]
    carrier = traced.carrier()
    assert carrier[t.CALLER_TRACE_ID] == trace.format_trace_id(caller.trace_id)
    assert carrier[t.CALLER_SPAN_ID] == trace.format_span_id(caller.span_id)
    (requested,) = [s for s in traced.spans() if s.name == "request"]
    (event,) = [e for e in requested.events if e.name == t.EVENT_REPORT_REQUESTED]
    assert dict(event.attributes or {}) == {
        t.GENERATION_ID: result.generation_id,
        t.REPORT_TRACE_ID: result.trace_id,
    }


def test_the_carrier_holds_the_whole_completed_report(
    traced: Traced, business_ids: list[int]
) -> None:
    result = _generate(traced, business_ids[0])
    carrier = traced.carrier()
    assert result.pdf_path is not None
    pdf = result.pdf_path.read_bytes()
    snapshot = carrier[t.INPUTS_SNAPSHOT]
    assert isinstance(snapshot, bytes)
    assert carrier[t.INPUTS_SHA256] == hashlib.sha256(snapshot).hexdigest()
    assert carrier[t.INPUTS_BYTES] == len(snapshot)
    expected = {
        t.GENERATION_ID: result.generation_id,
        t.BUSINESS_ID: business_ids[0],
        t.TEMPLATE_NAME: "summary",
        t.TEMPLATE_VERSION: result.template_version,
        t.OUTPUT_SHA256: hashlib.sha256(pdf).hexdigest(),
        t.OUTPUT_BYTES: len(pdf),
        t.OUTPUT_PAGES: result.pages,
        t.OUTPUT_URI: result.pdf_path.resolve().as_uri(),
        t.STATUS: "completed",
    }
    assert {k: carrier.get(k) for k in expected} == expected
    for key in (t.TEMPLATE_SHA256, t.HTML_SHA256):
        assert isinstance(carrier[key], str) and len(str(carrier[key])) == 64
    assert t.CALLER_TRACE_ID not in carrier  # requested outside any span
    assert t.ERROR_MESSAGE not in carrier and t.ERROR_TYPE not in carrier
    span_attributes: dict[str, object] = {}
    for span in traced.spans():
        span_attributes.update(span.attributes or {})
    assert t.INPUTS_SNAPSHOT not in span_attributes  # the snapshot never becomes span data
    for key in (t.GENERATION_ID, t.INPUTS_SHA256, t.OUTPUT_SHA256, t.STATUS):
        assert span_attributes[key] == carrier[key]  # the spans agree with their carrier


def test_a_failure_goes_to_the_carrier_whole_and_to_the_span_without_its_message(
    traced: Traced, business_ids: list[int]
) -> None:
    missing = 987654
    result = _generate(traced, missing)
    assert not result.success and result.error_message
    carrier = traced.carrier()
    assert carrier[t.STATUS] == "failed"
    assert carrier[t.ERROR_TYPE] == result.error_type == "BusinessNotFound"
    assert carrier[t.ERROR_MESSAGE] == result.error_message  # the full message, in-process
    root = traced.root()
    assert root.status.status_code is StatusCode.ERROR
    assert (root.attributes or {})[t.ERROR_TYPE] == "BusinessNotFound"
    exported = [
        str(value)
        for span in traced.spans()
        for value in [
            span.status.description or "",
            *(span.attributes or {}).values(),
            *(v for e in span.events for v in (e.attributes or {}).values()),
        ]
    ]
    assert not any(result.error_message in value for value in exported)
