"""The fold with the producer's report carrier, under real SDK span limits, and with text the
database or a JSON encoder would refuse (issue 9 items 3 and 4)."""

from __future__ import annotations

import hashlib
import uuid

import orjson
import pytest
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanContext, TraceFlags

from otel_lineage import LineageRecord, LineageSampler, fold, semconv
from otel_lineage.capture.sampler import sampler_from_name
from otel_lineage.reading.exports import span_tree
from otel_lineage.record import decompress
from tests.unit.test_fold_and_processor import DIGEST, SHA, SNAPSHOT, _fold, _report, _tracer

IDENTITY = (
    "report_generation_id",
    "business_id",
    "template_name",
    "template_version",
    "template_sha256",
    "inputs_sha256",
    "inputs_bytes",
    "output_sha256",
    "output_pages",
    "status",
)


def _identity(record: LineageRecord) -> tuple[object, ...]:
    return tuple(getattr(record, name) for name in IDENTITY)


@pytest.mark.parametrize(
    "limits",
    [
        SpanLimits(max_attribute_length=1),
        SpanLimits(max_attribute_length=16),
        SpanLimits(max_attribute_length=63),
        SpanLimits(max_span_attributes=1),
        SpanLimits(max_span_attributes=3),
    ],
    ids=["length-1", "length-16", "length-63", "count-1", "count-3"],
)
def test_span_limits_never_change_what_the_carrier_says(limits: SpanLimits) -> None:
    unlimited, unlimited_exporter = _tracer()
    generation_id = str(uuid.uuid4())
    _report(unlimited, generation_id=generation_id)
    reference = _fold(unlimited_exporter)
    assert reference.complete, reference.incomplete_reasons

    provider, exporter = _tracer(limits=limits)
    _report(provider, generation_id=generation_id)
    record = _fold(exporter)
    assert _identity(record) == _identity(reference)
    assert record.report_generation_id == generation_id
    assert record.inputs_snapshot is not None
    assert decompress(record.inputs_snapshot, record.inputs_codec) == SNAPSHOT
    assert not record.complete
    # Whatever the limit cut is named, attribute by attribute.
    cut = {r.split(":", 1)[1] for r in record.incomplete_reasons if "_attribute:" in r}
    if limits.max_attribute_length == 1:
        assert {semconv.GENERATION_ID, semconv.TEMPLATE_SHA256, semconv.INPUTS_SHA256} <= cut
    elif limits.max_attribute_length is not None:
        assert {semconv.TEMPLATE_SHA256, semconv.INPUTS_SHA256, semconv.OUTPUT_SHA256} <= cut
    else:
        # The SDK drops the *oldest* attributes when a span is full: the start attributes,
        # the report's identity, are the first to go.
        assert {semconv.GENERATION_ID, semconv.BUSINESS_ID} <= cut
        assert any(r.startswith("dropped_span_data:") for r in record.incomplete_reasons)


def test_a_length_limit_of_16_names_the_cut_generation_id() -> None:
    provider, exporter = _tracer(limits=SpanLimits(max_attribute_length=16))
    generation_id = str(uuid.uuid4())
    _report(provider, generation_id=generation_id)
    record = _fold(exporter)
    assert record.report_generation_id == generation_id  # not its 16-character prefix
    assert f"truncated_attribute:{semconv.GENERATION_ID}" in record.incomplete_reasons


def test_a_count_limit_names_missing_attributes() -> None:
    provider, exporter = _tracer(limits=SpanLimits(max_span_attributes=1))
    _report(provider)
    record = _fold(exporter)
    (root,) = [s for s in exporter.get_finished_spans() if s.name == semconv.SPAN_GENERATE]
    assert dict(root.attributes or {}) == {semconv.STATUS: "completed"}  # the last one set
    for key in (semconv.GENERATION_ID, semconv.BUSINESS_ID, semconv.TEMPLATE_NAME):
        assert f"missing_attribute:{key}" in record.incomplete_reasons
    assert record.business_id == 7 and record.template_name == "t"


def test_without_a_carrier_the_attributes_are_folded_as_before() -> None:
    provider, exporter = _tracer()
    _report(provider, generation_id="gen-2")
    spans = exporter.get_finished_spans()
    (root,) = [s for s in spans if s.name == semconv.SPAN_GENERATE]
    record = fold(spans, root=root)
    assert (record.report_generation_id, record.business_id) == ("gen-2", 7)
    assert (record.inputs_sha256, record.output_sha256) == (DIGEST, SHA)
    assert record.inputs_snapshot is None
    assert record.incomplete_reasons == ["inputs_snapshot_missing"]


def test_a_carried_value_the_span_does_not_have_is_a_mismatch() -> None:
    provider, exporter = _tracer()
    carrier = _report(provider)
    carrier[semconv.OUTPUT_SHA256] = "c" * 64  # the producer's word differs from the span's
    record = _fold(exporter)
    assert record.output_sha256 == "c" * 64
    assert f"mismatched_attribute:{semconv.OUTPUT_SHA256}" in record.incomplete_reasons


def test_the_full_error_message_comes_from_the_carrier_only() -> None:
    provider, exporter = _tracer()
    _report(provider, fail=True, steps=(semconv.SPAN_LOAD_INPUTS,))
    record = _fold(exporter)
    assert record.error_message == "it broke for Acme"
    (root,) = [s for s in exporter.get_finished_spans() if s.name == semconv.SPAN_GENERATE]
    assert "Acme" not in (root.status.description or "")


def _requester(sampled: bool) -> SpanContext:
    flags = TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
    return SpanContext(0x1234, 0x5678, is_remote=False, trace_flags=flags)


def test_caller_trace_id_from_the_carrier_else_the_first_link() -> None:
    provider = TracerProvider(sampler=LineageSampler(sampler_from_name("traceidratio", "0")))
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    link = Link(_requester(sampled=True))
    with tracer.start_as_current_span(semconv.SPAN_GENERATE, links=[link]):
        pass
    (root,) = exporter.get_finished_spans()
    assert root.context is not None and root.context.trace_flags.sampled  # follows the link
    by_link = fold([root], root=root, carrier={}, exporting=True)
    assert by_link.caller_trace_id == f"{0x1234:032x}"
    assert by_link.exported is True and by_link.sampled is True
    carried = {semconv.CALLER_TRACE_ID: "ab" * 16}
    assert fold([root], root=root, carrier=carried).caller_trace_id == "ab" * 16
    assert fold([root], root=root, carrier=carried).exported is False  # no exporter: not shown


def test_unsampled_is_never_exported() -> None:
    provider, exporter = _tracer()
    _report(provider)
    spans = exporter.get_finished_spans()
    (root,) = [s for s in spans if s.name == semconv.SPAN_GENERATE]
    record = fold(spans, root=root, exporting=True)
    assert record.exported is True and record.caller_trace_id is None
    ratio_zero = TracerProvider(sampler=LineageSampler(sampler_from_name("traceidratio", "0")))
    span = ratio_zero.get_tracer("t").start_span(semconv.SPAN_GENERATE)
    span.end()
    assert fold([span], root=span, exporting=True).exported is False  # type: ignore[list-item, arg-type]


# -- text that a database or JSON encoder refuses ------------------------------------------


def _resource_from_env(monkeypatch: pytest.MonkeyPatch) -> Resource:
    # os.environ decodes invalid bytes as lone surrogates: this is what a process sees.
    monkeypatch.setenv("OTEL_SERVICE_NAME", "svc-\udcff\udcfe")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.version=1.\udcff,deploy=\udce9u")
    return Resource.create()


def test_invalid_utf8_from_the_environment_never_fails_the_fold(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    resource = _resource_from_env(monkeypatch)
    assert resource.attributes[semconv.SERVICE_NAME] == "svc-\udcff\udcfe"
    provider = TracerProvider(
        sampler=LineageSampler(sampler_from_name("parentbased_always_on")), resource=resource
    )
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _report(provider)
    record = _fold(exporter)
    assert record.service_name == "svc-\ufffd\ufffd"
    assert record.service_version == "1.\ufffd"
    for reason in ("service_name", "service_version", "span_tree"):
        assert f"invalid_text:{reason}" in record.incomplete_reasons
    tree = span_tree(record.as_row())  # valid UTF-8 JSON
    assert tree["resource"]["deploy"] == "\ufffdu"
    orjson.dumps(record.as_row(), default=str)  # every field encodable
    assert LineageRecord.from_bytes(record.to_bytes()) == record


def test_nul_and_surrogates_in_span_data_are_cleaned_and_named() -> None:
    provider, exporter = _tracer()
    tracer = provider.get_tracer("other-producer")
    with tracer.start_as_current_span(
        semconv.SPAN_GENERATE,
        context=Context(),
        attributes={
            semconv.GENERATION_ID: "g\x00en",
            semconv.TEMPLATE_NAME: "tpl\udcff",
            semconv.ERROR_TYPE: "Bad\x00Type",
            "big": 2**70,  # the SDK keeps any int; orjson refuses beyond 64 bits
        },
    ) as root:
        root.set_attribute(semconv.STATUS, "failed")
        with tracer.start_as_current_span(semconv.SPAN_LOAD_INPUTS) as step:
            step.set_attribute(semconv.ERROR_TYPE, "E\udcff")
            step.set_attribute(semconv.INPUTS_TABLES, ["business\x00"])
    spans = exporter.get_finished_spans()
    (root_span,) = [s for s in spans if s.name == semconv.SPAN_GENERATE]
    record = fold(spans, root=root_span)
    assert (record.report_generation_id, record.template_name) == ("gen", "tpl\ufffd")
    assert record.error_type == "BadType"
    assert record.steps[0]["error_type"] == "E\ufffd"
    assert record.input_tables == ["business"]
    for name in ("report_generation_id", "template_name", "error_type", "steps", "input_tables"):
        assert f"invalid_text:{name}" in record.incomplete_reasons
    assert span_tree(record.as_row())["spans"][0]["attributes"]["big"] == 2**70


def test_the_carried_error_message_is_cleaned_too() -> None:
    provider, exporter = _tracer()
    carrier = _report(provider, fail=True, steps=())
    carrier[semconv.ERROR_MESSAGE] = "bad email a\udcff@x\x00"
    record = _fold(exporter)
    assert record.error_message == "bad email a\ufffd@x"
    assert "invalid_text:error_message" in record.incomplete_reasons


def test_values_too_long_for_their_column_are_not_cut_but_named() -> None:
    provider, exporter = _tracer()
    tracer = provider.get_tracer("other-producer")
    long_id = "x" * 37
    with tracer.start_as_current_span(
        semconv.SPAN_GENERATE,
        attributes={
            semconv.GENERATION_ID: long_id,
            semconv.BUSINESS_ID: 2**40,
            semconv.OUTPUT_SHA256: hashlib.sha512(b"").hexdigest(),
        },
    ):
        pass
    spans = exporter.get_finished_spans()
    record = fold(spans, root=spans[0])
    assert record.report_generation_id is None and record.business_id is None
    assert record.output_sha256 is None
    for name in ("report_generation_id", "business_id", "output_sha256"):
        assert f"oversized_value:{name}" in record.incomplete_reasons
