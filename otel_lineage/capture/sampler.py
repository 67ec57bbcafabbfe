"""``LineageSampler``: report traces are always *recorded*; export still follows the delegate.

Why a sampler at all: a ``DROP`` decision makes a span invisible to every processor, and the
stock ``ParentBased`` sampler drops the children of a recording-but-unsampled root (SQLAlchemy
spans included). So a report trace is recognised where it starts (its root span's name, given
at span start) and marked in the W3C trace state; every span whose parent carries the mark is
recorded too. Whether the trace is *sampled* (exported to Jaeger) is what the delegate decided
for it, so export stays consistent per trace and follows the configured ratio, with one
exception: a report root linked to a *sampled* span (the request that asked for the report) is
sampled too, whatever the ratio, so a user who follows an exported request always finds its
report trace. Marked spans under a sampled parent are sampled, so that trace is exported whole.

Which spans of a report trace are recorded follows the span-recording policy
(``OTEL_LINEAGE_RECORD_SPANS``, ``settings.span_recording``). Under ``report`` (the default) an
*unsampled* report trace records only the report's own ``report.*`` spans: the fold needs
nothing else, and recording a library span (SQL, HTTP) costs the report thread about as much
as lineage's own work on it. Under ``all``, and for every sampled trace, the whole trace is
recorded, so the row keeps the full trace offline. The policy in force is set on the root as
``lineage.span_recording`` and stored with the row.

Every other span gets the delegate's decision untouched. With the flag off the factories return
the delegate itself, not a wrapper.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind, get_current_span
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

from otel_lineage import semconv
from otel_lineage.ratelimit import RateLimitedLogger
from otel_lineage.settings import SPAN_RECORDING_CHOICES, lineage_enabled, span_recording

_log = RateLimitedLogger(logging.getLogger(__name__))


class LineageSampler(Sampler):
    """Wraps ``delegate``; records report traces whatever it decides about exporting them."""

    def __init__(
        self,
        delegate: Sampler,
        *,
        root_span_name: str = semconv.SPAN_GENERATE,
        span_recording: str = semconv.SPAN_RECORDING_REPORT,
    ) -> None:
        """``span_recording``: ``report`` (an unsampled report trace records its ``report.*``
        spans only) or ``all`` (every span of a report trace is recorded)."""
        if span_recording not in SPAN_RECORDING_CHOICES:
            raise ValueError(f"span_recording must be one of {SPAN_RECORDING_CHOICES}")
        self.delegate = delegate
        self.span_recording = span_recording
        self._root_name = root_span_name
        self._record_all = span_recording == semconv.SPAN_RECORDING_ALL

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        try:
            result = self.delegate.should_sample(
                parent_context, trace_id, name, kind, attributes, links, trace_state
            )
        except Exception:  # a sampler must never raise into the application
            _log.exception("delegate sampler failed; treating its decision as DROP")
            result = SamplingResult(Decision.DROP)
        try:
            parent = get_current_span(parent_context).get_span_context()
            parent_state = parent.trace_state if parent.is_valid else None
            marked = parent_state is not None and (
                parent_state.get(semconv.TRACE_STATE_KEY) == semconv.TRACE_STATE_VALUE
            )
            is_root = not marked and name == self._root_name
            if not marked and not is_root:
                return result
            state = result.trace_state or parent_state or TraceState()
            if state.get(semconv.TRACE_STATE_KEY) != semconv.TRACE_STATE_VALUE:
                state = _with_mark(state)
            followed = parent.is_valid and parent.trace_flags.sampled
            if is_root:
                followed = followed or _links_a_sampled_span(links)
            if followed and result.decision is not Decision.RECORD_AND_SAMPLE:
                # The requester (link) or the parent is exported: so is this report trace.
                result = SamplingResult(Decision.RECORD_AND_SAMPLE, attributes, state)
            elif result.decision is Decision.DROP:
                if not (self._record_all or is_root or name.startswith(semconv.REPORT_SPAN_PREFIX)):
                    # Not exported, and lineage folds only the report's own spans: not
                    # recorded. The mark stays, so a report span below is still recorded.
                    return SamplingResult(Decision.DROP, None, state)
                # A DROP result carries no attributes: the span's start attributes must be
                # passed on, or the recorded span would start without them.
                result = SamplingResult(Decision.RECORD_ONLY, attributes, state)
            else:
                result = SamplingResult(result.decision, result.attributes, state)
            if is_root:
                return self._with_policy(result)
            return result
        except Exception:  # a sampler must never raise into the application
            _log.exception("lineage sampler failed; using the delegate's decision")
            return result

    def _with_policy(self, result: SamplingResult) -> SamplingResult:
        """The root says which spans its trace records (a sampled trace: all of them)."""
        whole = self._record_all or result.decision is Decision.RECORD_AND_SAMPLE
        policy = semconv.SPAN_RECORDING_ALL if whole else semconv.SPAN_RECORDING_REPORT
        attributes = {**(result.attributes or {}), semconv.SPAN_RECORDING: policy}
        return SamplingResult(result.decision, attributes, result.trace_state)

    def get_description(self) -> str:
        return f"LineageSampler{{{self.delegate.get_description()}}}"


def _links_a_sampled_span(links: Sequence[Link] | None) -> bool:
    return any(link.context.is_valid and link.context.trace_flags.sampled for link in links or ())


def _with_mark(state: TraceState) -> TraceState:
    if semconv.TRACE_STATE_KEY in state:
        return state.update(semconv.TRACE_STATE_KEY, semconv.TRACE_STATE_VALUE)
    return state.add(semconv.TRACE_STATE_KEY, semconv.TRACE_STATE_VALUE)


def parse_ratio(arg: str | float | None) -> float:
    """``OTEL_TRACES_SAMPLER_ARG`` as a ratio: None or "" mean 1.0; anything else must parse."""
    if arg is None or (isinstance(arg, str) and not arg.strip()):
        return 1.0
    ratio = float(arg)
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"sampling ratio must be within [0, 1], got {ratio}")
    return ratio


#: Standard sampler names (as in ``OTEL_TRACES_SAMPLER``) -> factory of the argument.
STANDARD_SAMPLERS: dict[str, Callable[[str | float | None], Sampler]] = {
    "always_on": lambda _: ALWAYS_ON,
    "always_off": lambda _: ALWAYS_OFF,
    "traceidratio": lambda arg: TraceIdRatioBased(parse_ratio(arg)),
    "parentbased_always_on": lambda _: ParentBased(ALWAYS_ON),
    "parentbased_always_off": lambda _: ParentBased(ALWAYS_OFF),
    "parentbased_traceidratio": lambda arg: ParentBased(TraceIdRatioBased(parse_ratio(arg))),
}
LINEAGE_PREFIX = "lineage_"


def sampler_from_name(name: str | None, arg: str | float | None = None) -> Sampler:
    """Build the sampler ``OTEL_TRACES_SAMPLER`` names, including the ``lineage_*`` ones.

    ``lineage_<standard>`` wraps ``<standard>`` in a ``LineageSampler`` when the flag is on and
    is exactly ``<standard>`` when it is off.
    """
    name = (name or "parentbased_always_on").strip().lower()
    wrapped = name.startswith(LINEAGE_PREFIX)
    base = name.removeprefix(LINEAGE_PREFIX)
    if base not in STANDARD_SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; known: {', '.join(sorted(STANDARD_SAMPLERS))}")
    delegate = STANDARD_SAMPLERS[base](arg)
    if wrapped and lineage_enabled():
        return LineageSampler(delegate, span_recording=span_recording())
    return delegate


def _factory(base: str) -> Callable[[str | float | None], Sampler]:
    def factory(arg: str | float | None = None) -> Sampler:
        return sampler_from_name(LINEAGE_PREFIX + base, arg)

    factory.__name__ = f"lineage_{base}_factory"
    factory.__doc__ = f"Entry point ``lineage_{base}`` for ``OTEL_TRACES_SAMPLER``."
    return factory


# Entry points (group ``opentelemetry_traces_sampler``); the SDK passes OTEL_TRACES_SAMPLER_ARG
# as a string, or None when it is unset.
lineage_always_on = _factory("always_on")
lineage_always_off = _factory("always_off")
lineage_traceidratio = _factory("traceidratio")
lineage_parentbased_always_on = _factory("parentbased_always_on")
lineage_parentbased_always_off = _factory("parentbased_always_off")
lineage_parentbased_traceidratio = _factory("parentbased_traceidratio")
