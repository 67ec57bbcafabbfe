"""The fold: a pure function from one report's finished span tree to a ``LineageRecord``.

It trusts nothing it can check. When the producer handed over its report carrier (a dict in
the root's start Context, see ``semconv.REPORT_CONTEXT_KEY``), the carrier is the authority for
the report's identity, digests, snapshot and full error message, since no span limit can cut
it; every span attribute that differs from it (truncated, dropped by a count limit) is named in
``incomplete_reasons``. Without a carrier (another producer) the record is built from the
attributes. Either way the input snapshot is compared with the recorded sha256 and size, every
digest must be a full sha256, and any span that dropped attributes, events or links, any
expected step span that is missing, any span the buffer had to drop, and any text that had to
be cleaned to be stored, mark the record *incomplete* with a reason instead of being stored as
if whole.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

from otel_lineage import semconv as sc
from otel_lineage.record import (
    RAW_CODEC,
    SPAN_TREE_FORMAT,
    LineageRecord,
    clean_json,
    clean_text,
    may_need_cleaning,
    needs_cleaning,
)

#: Why a trace was folded before its root ended (one of them is the record's reason).
EVICTED_BY_TTL = "root_span_not_ended_before_ttl"
EVICTED_BY_TRACE_CAP = "evicted_by_trace_cap"
EVICTED_AT_SHUTDOWN = "root_span_not_ended_before_shutdown"

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_TRACE_ID = re.compile(r"^[0-9a-f]{32}$")

#: Record fields stored in bounded columns that are never cut: a cut id or digest would point
#: at the wrong report, so a value that does not fit is not stored, and named.
_MAX_LENGTH = {
    "report_generation_id": 36,
    "template_sha256": 64,
    "inputs_sha256": 64,
    "html_sha256": 64,
    "output_sha256": 64,
}
_MIN_INT, _MAX_INT = -(2**31), 2**31 - 1  # the integer columns (32 bits on PostgreSQL)
#: Text fields that may come from the environment, the resource, span data or an exception.
_TEXT_FIELDS = (
    "report_generation_id",
    "template_name",
    "template_version",
    "template_sha256",
    "inputs_sha256",
    "html_sha256",
    "output_sha256",
    "output_uri",
    "error_type",
    "error_message",
    "service_name",
    "service_version",
)


def fold(
    spans: Sequence[ReadableSpan],
    *,
    root: ReadableSpan,
    carrier: Mapping[str, object] | None = None,
    dropped_spans: int = 0,
    evicted: str | None = None,
    exporting: bool = False,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> LineageRecord:
    """Fold ``spans`` (the report's trace, root included) into one record.

    ``evicted`` is the reason the trace was folded before its root ended (``EVICTED_BY_*``);
    ``exporting`` says whether the process has a span exporter (``exported`` = sampled and it).
    """
    context = root.context
    assert context is not None, "a recorded span always has a context"
    carried: dict[str, object] = dict(carrier) if carrier is not None else {}
    attrs = _merged_attributes(root, spans)
    by_name = _first_by_name(spans)
    reasons: list[str] = _compare(carried, attrs) if carrier is not None else []

    def value(key: str) -> object:
        return carried[key] if carried.get(key) is not None else attrs.get(key)

    status = _status(root, value(sc.STATUS))
    error_message = carried.get(sc.ERROR_MESSAGE)
    if not isinstance(error_message, str):
        failed = root.status.status_code is StatusCode.ERROR
        error_message = root.status.description if failed else None

    inputs_sha256 = value(sc.INPUTS_SHA256)
    inputs_bytes = value(sc.INPUTS_BYTES)
    snapshot = carried.get(sc.INPUTS_SNAPSHOT)
    stored_snapshot, codec = None, None
    if isinstance(snapshot, bytes):
        actual = hashlib.sha256(snapshot).hexdigest()
        if inputs_sha256 is not None and actual != inputs_sha256:
            reasons.append("inputs_snapshot_sha256_mismatch")
        if inputs_bytes is not None and len(snapshot) != inputs_bytes:
            reasons.append("inputs_snapshot_size_mismatch")
        stored_snapshot, codec = snapshot, RAW_CODEC  # compressed by the writer (as_row)
    elif inputs_sha256 is not None:
        reasons.append("inputs_snapshot_missing")

    for key in sc.DIGEST_ATTRIBUTES:
        digest = value(key)
        if digest is not None and not (isinstance(digest, str) and _SHA256.match(digest)):
            reasons.append(f"truncated_attribute:{key}")
    for span in spans:
        dropped = span.dropped_attributes + span.dropped_events + span.dropped_links
        if dropped:
            reasons.append(f"dropped_span_data:{span.name}:{dropped}")
    if status == "completed":
        reasons.extend(f"missing_span:{name}" for name in sc.STEP_SPANS if name not in by_name)
    if dropped_spans:
        reasons.append(f"span_buffer_overflow:{dropped_spans}")
    if evicted:
        reasons.append(evicted)

    resource = root.resource.attributes if root.resource else {}
    start_ns = root.start_time or 0
    end_ns = root.end_time
    tables = attrs.get(sc.INPUTS_TABLES)
    ordered = sorted(spans, key=_start)
    tree, tree_cleaned = span_tree_json(ordered, root)
    if tree_cleaned:
        reasons.append("invalid_text:span_tree")
    fields: dict[str, Any] = {
        "report_generation_id": _str(value(sc.GENERATION_ID)),
        "template_name": _str(value(sc.TEMPLATE_NAME)),
        "template_version": _str(value(sc.TEMPLATE_VERSION)),
        "template_sha256": _str(value(sc.TEMPLATE_SHA256)),
        "inputs_sha256": _str(inputs_sha256),
        "html_sha256": _str(value(sc.HTML_SHA256)),
        "output_sha256": _str(value(sc.OUTPUT_SHA256)),
        "output_uri": _str(value(sc.OUTPUT_URI)),
        "error_type": _str(value(sc.ERROR_TYPE)),
        "error_message": error_message,
        "service_name": _str(resource.get(sc.SERVICE_NAME)),
        "service_version": _str(resource.get(sc.SERVICE_VERSION)),
    }
    numbers: dict[str, Any] = {
        "business_id": _int(value(sc.BUSINESS_ID)),
        "inputs_bytes": _int(inputs_bytes),
        "output_bytes": _int(value(sc.OUTPUT_BYTES)),
        "output_pages": _int(value(sc.OUTPUT_PAGES)),
        "attempt": _int(value(sc.ATTEMPT)),
    }
    _clean_fields(fields, reasons)
    _fit_bounded(fields, numbers, reasons)
    lists: dict[str, Any] = {
        "steps": _steps(root, ordered),
        "input_tables": [str(t) for t in tables] if isinstance(tables, Sequence) else [],
    }
    for name, items in lists.items():
        if _has_bad_text(items):
            lists[name] = clean_json(items)
            reasons.append(f"invalid_text:{name}")
    renderer = _renderer(value(sc.RENDERER_VERSIONS), value(sc.RENDERER_FONTS), value)
    reasons = [clean_text(r) for r in dict.fromkeys(reasons)]  # span names may need it too
    sampled = context.trace_flags.sampled
    return LineageRecord(
        trace_id=f"{context.trace_id:032x}",
        root_span_id=f"{context.span_id:016x}",
        inputs_snapshot=stored_snapshot,
        inputs_codec=codec,
        status=status,
        started_at=_time(start_ns),
        ended_at=_time(end_ns) if end_ns else None,
        duration_ms=round((end_ns - start_ns) / 1e6, 3) if end_ns else None,
        span_count=len(spans),
        span_tree=tree,
        span_tree_codec=RAW_CODEC,
        sampled=sampled,
        complete=not reasons,
        incomplete_reasons=reasons,
        created_at=now(),
        caller_trace_id=_caller_trace_id(carried, root),
        exported=sampled and exporting,
        renderer=renderer,
        span_recording=_span_recording(root),
        **fields,
        **numbers,
        **lists,
    )


def span_tree_json(spans: Sequence[ReadableSpan], root: ReadableSpan) -> tuple[bytes, bool]:
    """The whole trace as JSON (the offline copy kept with the row; no payloads in it).

    Compact: one array per span (``SPAN_FIELDS``), integers for ids and enums, the trace id
    once; building a dict per span cost several times what serialising it does. ``spans``
    are the trace's spans in start order. Returns the JSON and whether text had to be cleaned
    to encode it: a span name, attribute or resource value with lone surrogates (invalid bytes
    from the environment) is stored with U+FFFD in their place rather than losing the record.
    """
    resource = root.resource
    context = root.context
    document = {
        "format": SPAN_TREE_FORMAT,
        "trace_id": f"{context.trace_id:032x}" if context else None,
        "resource": dict(resource.attributes) if resource else {},
        "trace_state": context.trace_state.to_header() if context else "",
        "spans": [_span_row(span) for span in spans],
    }
    try:
        return orjson.dumps(document), False
    except orjson.JSONEncodeError:
        # Lone surrogates, or an integer beyond 64 bits (the SDK accepts any int): the stdlib
        # encoder takes any int, and the cleaned text is valid UTF-8.
        cleaned = _has_bad_text(document)
        text = json.dumps(clean_json(document), ensure_ascii=False, separators=(",", ":"))
        return text.encode(), cleaned


def _span_row(span: ReadableSpan) -> tuple[Any, ...]:
    parent, scope, status, context = (
        span.parent,
        span.instrumentation_scope,
        span.status,
        span.context,
    )
    # ``events``/``links`` copy their bounded list under a lock: asked only when there are any.
    has_events = _has_any(span, "_events")
    has_links = _has_any(span, "_links")
    return (
        context.span_id,
        parent.span_id if parent else None,
        span.name,
        span.kind.value,
        span.start_time,
        span.end_time,
        status.status_code.value,
        status.description,
        attributes_of(span),
        [(e.name, e.timestamp, dict(e.attributes or {})) for e in span.events]
        if has_events
        else None,
        [(f"{link.context.trace_id:032x}", link.context.span_id) for link in span.links]
        if has_links
        else None,
        (scope.name, scope.version) if scope else None,
        context.trace_flags.sampled,
    )


def _has_any(span: ReadableSpan, name: str) -> bool:
    """Whether the span holds events or links (its own list's length, else the property)."""
    held = getattr(span, name, None)
    if held is None:
        return bool(getattr(span, name.lstrip("_")))
    return len(held) > 0


def attributes_of(span: ReadableSpan) -> Mapping[str, Any]:
    """A finished span's attributes as a plain dict, without copying when the SDK allows.

    ``ReadableSpan.attributes`` wraps the SDK's ``BoundedAttributes`` in a read-only proxy, and
    copying that goes through the Python mapping protocol (about 1.2 µs per span here, against
    0.1 for the dict inside). A finished span's attributes no longer change, so the dict the
    SDK keeps is read as it is; the public property is the fallback for any other span type.
    """
    inner = getattr(getattr(span, "_attributes", None), "_dict", None)
    if isinstance(inner, dict):
        return inner
    return dict(span.attributes or {})


def _renderer(
    versions: object, fonts: object, value: Callable[[str], object]
) -> dict[str, Any] | None:
    """The renderer fingerprint as stored: ``{"<library>": "<version>", ..., "font_subsetter":
    ..., "fonts": [{"family", "sha256"}]}``; None when the converter recorded none."""
    if not isinstance(versions, Sequence) or isinstance(versions, str) or not versions:
        return None
    out: dict[str, Any] = {}
    for item in versions:
        name, _, version = str(item).partition(" ")
        out[clean_text(name)[:40]] = clean_text(version)[:80]
    subsetter = value(sc.OUTPUT_FONT_SUBSETTER)
    out["font_subsetter"] = str(subsetter) if subsetter is not None else None
    embedded = []
    for item in fonts if isinstance(fonts, Sequence) and not isinstance(fonts, str) else ():
        family, _, digest = str(item).rpartition(" sha256:")
        embedded.append({"family": clean_text(family)[:200], "sha256": digest[:64]})
    out["fonts"] = embedded
    return out


def _compare(carried: Mapping[str, object], attrs: Mapping[str, Any]) -> list[str]:
    """Name every carried value whose span attribute is missing, cut or different."""
    reasons = []
    for key in sc.CARRIED_ATTRIBUTES:
        expected = carried.get(key)
        if expected is None:
            continue
        actual = attrs.get(key)
        if actual is None:
            reasons.append(f"missing_attribute:{key}")
        elif actual != expected:
            cut = isinstance(actual, str) and str(expected).startswith(actual)
            reasons.append(f"{'truncated' if cut else 'mismatched'}_attribute:{key}")
    return reasons


def _clean_fields(fields: dict[str, Any], reasons: list[str]) -> None:
    if not needs_cleaning("".join(fields[name] or "" for name in _TEXT_FIELDS)):
        return  # the usual case: one search, not one per field
    for name in _TEXT_FIELDS:
        text = fields[name]
        if text is not None and needs_cleaning(text):
            fields[name] = clean_text(text)
            reasons.append(f"invalid_text:{name}")


def _fit_bounded(fields: dict[str, Any], numbers: dict[str, Any], reasons: list[str]) -> None:
    for name, limit in _MAX_LENGTH.items():
        text = fields[name]
        if text is not None and len(text) > limit:
            fields[name] = None
            reasons.append(f"oversized_value:{name}")
    for name, number in numbers.items():
        if number is not None and not _MIN_INT <= number <= _MAX_INT:
            numbers[name] = None
            reasons.append(f"oversized_value:{name}")


def _has_bad_text(value: object) -> bool:
    """Whether any string in a JSON-shaped value (keys too) needs ``clean_text``: one C pass
    in the usual clean case (``may_need_cleaning``), else string by string."""
    if not may_need_cleaning(value):
        return False
    texts: list[str] = []
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, dict):
            texts.extend(key for key in item if isinstance(key, str))
            pending.extend(item.values())
        elif isinstance(item, list | tuple):
            pending.extend(item)
    return needs_cleaning("".join(texts))


def _caller_trace_id(carried: Mapping[str, object], root: ReadableSpan) -> str | None:
    """The requesting trace: the carrier's word, else the root's first valid link."""
    caller = carried.get(sc.CALLER_TRACE_ID)
    if isinstance(caller, str) and _TRACE_ID.match(caller):
        return caller
    for link in root.links:
        if link.context.is_valid:
            return f"{link.context.trace_id:032x}"
    return None


def _first_by_name(spans: Sequence[ReadableSpan]) -> dict[str, ReadableSpan]:
    found: dict[str, ReadableSpan] = {}
    for span in spans:
        found.setdefault(span.name, span)
    return found


def _merged_attributes(root: ReadableSpan, spans: Sequence[ReadableSpan]) -> dict[str, Any]:
    """report.* attributes from the report's own spans; the root's own values win.

    ``error.type`` is the root's own (a step's error type is in its step entry).
    """
    merged: dict[str, Any] = {}
    for span in spans:
        if not span.name.startswith(sc.REPORT_SPAN_PREFIX):
            continue  # SQL and other library spans carry no report.* attributes
        for key, value in attributes_of(span).items():
            if key.startswith("report."):
                merged.setdefault(key, value)
    root_attrs = attributes_of(root)
    merged.update({k: v for k, v in root_attrs.items() if k.startswith("report.")})
    merged[sc.ERROR_TYPE] = root_attrs.get(sc.ERROR_TYPE)
    return merged


def _status(root: ReadableSpan, status: object) -> str:
    if root.status.status_code is StatusCode.ERROR or status == "failed":
        return "failed"
    if root.end_time is None:
        return "unfinished"
    return "completed"


def _start(span: ReadableSpan) -> int:
    return span.start_time or 0


def _span_recording(root: ReadableSpan) -> str | None:
    """The recording policy the sampler set on the root (None: another sampler's trace)."""
    policy = attributes_of(root).get(sc.SPAN_RECORDING)
    return policy if policy in (sc.SPAN_RECORDING_REPORT, sc.SPAN_RECORDING_ALL) else None


def _steps(root: ReadableSpan, ordered: Sequence[ReadableSpan]) -> list[dict[str, Any]]:
    """The root's ``report.*`` children, from the spans in start order."""
    root_ctx = root.context
    assert root_ctx is not None
    start = root.start_time or 0
    steps = []
    for span in ordered:
        if span.parent is None or span.parent.span_id != root_ctx.span_id:
            continue
        if not span.name.startswith(sc.REPORT_SPAN_PREFIX):
            continue  # the root's own SQL (row insert/update) is in the span tree, not a step
        end = span.end_time
        step: dict[str, Any] = {
            "name": span.name,
            "start_offset_ms": round(((span.start_time or start) - start) / 1e6, 3),
            "duration_ms": round((end - (span.start_time or 0)) / 1e6, 3) if end else None,
            "status": "error" if span.status.status_code is StatusCode.ERROR else "ok",
        }
        error_type = attributes_of(span).get(sc.ERROR_TYPE)
        if error_type is not None:
            step["error_type"] = error_type
        steps.append(step)
    return steps


def _time(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC)


def _str(value: object) -> str | None:
    return None if value is None else str(value)


def _int(value: object) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    try:
        return int(str(value))
    except ValueError:
        return None
