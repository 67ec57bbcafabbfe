from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanContext, TraceFlags

from otel_lineage import LineageSampler, semconv
from otel_lineage.capture import sampler as sampler_module
from otel_lineage.capture.sampler import sampler_from_name
from otel_lineage.settings import LineageConfigError, LineageSettings


def _provider(sampler: Sampler) -> tuple[TracerProvider, InMemorySpanExporter]:
    provider = TracerProvider(sampler=sampler)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def test_report_trace_recorded_but_not_exported_at_ratio_zero() -> None:
    sampler = LineageSampler(ParentBased(TraceIdRatioBased(0.0)), span_recording="all")
    provider, exporter = _provider(sampler)
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span(semconv.SPAN_GENERATE, attributes={"a": 1}) as root:
        assert root.is_recording()
        assert not root.get_span_context().trace_flags.sampled
        assert root.get_span_context().trace_state.get(semconv.TRACE_STATE_KEY) == "1"
        assert root.attributes == {"a": 1, semconv.SPAN_RECORDING: "all"}  # type: ignore[attr-defined]
        with tracer.start_as_current_span("SELECT") as child:
            assert child.is_recording()
            assert child.get_span_context().trace_state.get(semconv.TRACE_STATE_KEY) == "1"
            with tracer.start_as_current_span("grandchild") as grandchild:
                assert grandchild.is_recording()
    with tracer.start_as_current_span("other.request") as other:
        assert not other.is_recording()
    assert exporter.get_finished_spans() == ()


def test_default_policy_records_only_the_report_spans_of_an_unsampled_trace() -> None:
    provider, _ = _provider(LineageSampler(ParentBased(TraceIdRatioBased(0.0))))
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span(semconv.SPAN_GENERATE, attributes={"a": 1}) as root:
        assert root.is_recording()
        assert root.attributes == {"a": 1, semconv.SPAN_RECORDING: "report"}  # type: ignore[attr-defined]
        with tracer.start_as_current_span(semconv.SPAN_LOAD_INPUTS) as step:
            assert step.is_recording()
            with tracer.start_as_current_span("SELECT") as sql:
                assert not sql.is_recording()  # a library span: lineage does not need it
                # The mark survives the unrecorded span: a report span below it is recorded.
                assert sql.get_span_context().trace_state.get(semconv.TRACE_STATE_KEY) == "1"
                with tracer.start_as_current_span("report.nested") as nested:
                    assert nested.is_recording()
    with tracer.start_as_current_span("other.request") as other:
        assert not other.is_recording()


def test_default_policy_records_a_sampled_report_trace_whole() -> None:
    provider, exporter = _provider(LineageSampler(ParentBased(TraceIdRatioBased(1.0))))
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span(semconv.SPAN_GENERATE) as root:
        assert root.attributes == {semconv.SPAN_RECORDING: "all"}  # type: ignore[attr-defined]
        with tracer.start_as_current_span("SELECT") as sql:
            assert sql.is_recording() and sql.get_span_context().trace_flags.sampled
    assert len(exporter.get_finished_spans()) == 2


def test_span_recording_policy_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="span_recording"):
        LineageSampler(ALWAYS_ON, span_recording="some")
    monkeypatch.setenv("OTEL_LINEAGE_RECORD_SPANS", " ALL ")
    sampler = sampler_from_name("lineage_parentbased_always_off")
    assert isinstance(sampler, LineageSampler) and sampler.span_recording == "all"
    monkeypatch.setenv("OTEL_LINEAGE_RECORD_SPANS", "everything")
    with pytest.raises(LineageConfigError, match="OTEL_LINEAGE_RECORD_SPANS='everything'"):
        LineageSettings.from_env()


def test_export_follows_the_delegate_consistently_per_trace() -> None:
    provider, exporter = _provider(LineageSampler(ParentBased(TraceIdRatioBased(0.5))))
    tracer = provider.get_tracer("t")
    for _ in range(200):
        with tracer.start_as_current_span(semconv.SPAN_GENERATE), tracer.start_as_current_span("s"):
            pass
    exported = exporter.get_finished_spans()
    by_trace: dict[int, int] = {}
    for span in exported:
        assert span.context is not None
        by_trace[span.context.trace_id] = by_trace.get(span.context.trace_id, 0) + 1
    assert set(by_trace.values()) == {2}  # a trace is exported whole or not at all
    assert 50 < len(by_trace) < 150  # and about half of them are


def test_other_traffic_gets_exactly_the_delegate_decision() -> None:
    delegate = ParentBased(TraceIdRatioBased(0.5))
    wrapped = LineageSampler(delegate)
    for trace_id in range(1, 2**64, 2**58):
        expected = delegate.should_sample(None, trace_id, "GET /")
        actual = wrapped.should_sample(None, trace_id, "GET /")
        assert actual.decision is expected.decision
        assert actual.trace_state == expected.trace_state


def test_sampled_report_keeps_delegate_attributes_and_is_sampled() -> None:
    result = LineageSampler(ParentBased(TraceIdRatioBased(1.0))).should_sample(
        None, 123, semconv.SPAN_GENERATE, attributes={"k": "v"}
    )
    assert result.decision is Decision.RECORD_AND_SAMPLE
    assert dict(result.attributes) == {"k": "v", semconv.SPAN_RECORDING: "all"}
    assert result.trace_state is not None
    assert result.trace_state.get(semconv.TRACE_STATE_KEY) == "1"


class _Broken(Sampler):
    def should_sample(self, *args: object, **kwargs: object) -> SamplingResult:
        raise RuntimeError("boom")

    def get_description(self) -> str:
        return "broken"


def test_a_failing_delegate_never_raises_and_reports_still_record() -> None:
    sampler = LineageSampler(_Broken())
    assert sampler.should_sample(None, 1, semconv.SPAN_GENERATE).decision is Decision.RECORD_ONLY
    assert sampler.should_sample(None, 1, "GET /").decision is Decision.DROP
    assert sampler.get_description() == "LineageSampler{broken}"


@pytest.mark.parametrize(
    ("arg", "ratio"), [(None, 1.0), ("", 1.0), ("0.25", 0.25), (0.1, 0.1), ("0", 0.0)]
)
def test_entry_point_factory_accepts_none_empty_and_numbers(
    arg: str | float | None, ratio: float
) -> None:
    sampler = sampler_module.lineage_parentbased_traceidratio(arg)
    assert isinstance(sampler, LineageSampler)
    assert isinstance(sampler.delegate, ParentBased)
    assert f"TraceIdRatioBased{{{ratio}}}" in sampler.get_description()


@pytest.mark.parametrize("arg", ["abc", "1.5", "-0.1"])
def test_entry_point_factory_rejects_bad_ratios(arg: str) -> None:
    with pytest.raises(ValueError):
        sampler_module.lineage_traceidratio(arg)


def test_flag_off_factories_return_exactly_the_delegate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENABLE_REPORT_LINEAGE", "false")
    sampler = sampler_module.lineage_parentbased_always_off(None)
    assert sampler is not None and not isinstance(sampler, LineageSampler)
    assert isinstance(sampler, ParentBased)
    assert sampler_from_name("lineage_always_off") is ALWAYS_OFF


def test_entry_points_are_registered() -> None:
    from importlib.metadata import entry_points

    names = {ep.name for ep in entry_points(group="opentelemetry_traces_sampler")}
    assert {"lineage_parentbased_traceidratio", "lineage_parentbased_always_on"} <= names
    (ep,) = [
        e
        for e in entry_points(group="opentelemetry_traces_sampler")
        if e.name == "lineage_parentbased_traceidratio"
    ]
    assert isinstance(ep.load()("0.5"), LineageSampler)


def test_unknown_sampler_name() -> None:
    with pytest.raises(ValueError, match="unknown sampler"):
        sampler_from_name("lineage_sometimes")


def test_sdk_configurator_resolves_the_lineage_sampler(monkeypatch: pytest.MonkeyPatch) -> None:
    """The path opentelemetry-instrument takes: OTEL_TRACES_SAMPLER names our entry point."""
    from opentelemetry.sdk._configuration import _get_sampler, _import_sampler

    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "lineage_parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.01")
    sampler = _import_sampler(_get_sampler())
    assert isinstance(sampler, LineageSampler)
    assert "0.01" in sampler.get_description()


def test_producer_and_plugin_agree_on_conventions() -> None:
    from d6_reports import telemetry

    shared = [n for n in dir(semconv) if n.isupper() and hasattr(telemetry, n)]
    assert len(shared) >= 20
    for name in shared:
        assert getattr(semconv, name) == getattr(telemetry, name), name


def _requesting_span(sampled: bool) -> SpanContext:
    flags = TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
    return SpanContext(0xABC, 0xDEF, is_remote=False, trace_flags=flags)


@pytest.mark.parametrize(
    "delegate", [ParentBased(TraceIdRatioBased(0.0)), TraceIdRatioBased(0.0), ALWAYS_OFF]
)
def test_a_report_requested_by_a_sampled_span_is_exported_whole(delegate: Sampler) -> None:
    provider, exporter = _provider(LineageSampler(delegate))
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span(
        semconv.SPAN_GENERATE, links=[Link(_requesting_span(sampled=True))], attributes={"a": 1}
    ) as root:
        assert root.get_span_context().trace_flags.sampled
        assert root.get_span_context().trace_state.get(semconv.TRACE_STATE_KEY) == "1"
        with tracer.start_as_current_span("SELECT"), tracer.start_as_current_span("nested"):
            pass
    spans = exporter.get_finished_spans()
    assert sorted(s.name for s in spans) == ["SELECT", "nested", semconv.SPAN_GENERATE]
    (exported_root,) = [s for s in spans if s.name == semconv.SPAN_GENERATE]
    assert exported_root.attributes == {"a": 1, semconv.SPAN_RECORDING: "all"}


def test_a_link_to_an_unsampled_span_leaves_the_decision_to_the_delegate() -> None:
    provider, exporter = _provider(LineageSampler(ParentBased(TraceIdRatioBased(0.0))))
    tracer = provider.get_tracer("t")
    invalid = SpanContext(0, 0, is_remote=False)
    links = [Link(_requesting_span(sampled=False)), Link(invalid)]
    with tracer.start_as_current_span(semconv.SPAN_GENERATE, links=links) as root:
        assert root.is_recording() and not root.get_span_context().trace_flags.sampled
    assert exporter.get_finished_spans() == ()


def test_only_report_roots_follow_their_links() -> None:
    delegate = TraceIdRatioBased(0.0)
    result = LineageSampler(delegate).should_sample(
        None, 5, "GET /", links=[Link(_requesting_span(sampled=True))]
    )
    assert result.decision is Decision.DROP
