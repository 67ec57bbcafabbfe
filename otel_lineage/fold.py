"""The fold: a pure function from one report's finished span tree to a ``LineageRecord``.

It trusts nothing it can check. The input snapshot is compared with the sha256 and size the
load step recorded; every digest attribute must still be a full sha256 (span limits truncate
silently); any span that dropped attributes, events or links, any expected step span that is
missing, and any span the buffer had to drop, mark the record *incomplete* with a reason instead
of being stored as if whole.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

from otel_lineage import semconv as sc
from otel_lineage.record import CODEC, LineageRecord, compress

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def fold(
    spans: Sequence[ReadableSpan],
    *,
    root: ReadableSpan,
    snapshot: bytes | None,
    dropped_spans: int = 0,
    evicted: bool = False,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> LineageRecord:
    """Fold ``spans`` (the report's trace, root included) into one record."""
    context = root.context
    assert context is not None, "a recorded span always has a context"
    root_attrs: Mapping[str, Any] = root.attributes or {}
    by_name = _first_by_name(spans)
    merged = _merged_attributes(root, spans)
    reasons: list[str] = []

    status = _status(root, root_attrs)
    error_type = root_attrs.get(sc.ERROR_TYPE)
    error_message = root.status.description if root.status.status_code is StatusCode.ERROR else None

    inputs_sha256 = merged.get(sc.INPUTS_SHA256)
    inputs_bytes = merged.get(sc.INPUTS_BYTES)
    stored_snapshot, codec = None, None
    if snapshot is not None:
        actual = hashlib.sha256(snapshot).hexdigest()
        if inputs_sha256 is not None and actual != inputs_sha256:
            reasons.append("inputs_snapshot_sha256_mismatch")
        if inputs_bytes is not None and len(snapshot) != inputs_bytes:
            reasons.append("inputs_snapshot_size_mismatch")
        stored_snapshot, codec = compress(snapshot), CODEC
    elif inputs_sha256 is not None:
        reasons.append("inputs_snapshot_missing")

    for key in sc.DIGEST_ATTRIBUTES:
        value = merged.get(key)
        if value is not None and not (isinstance(value, str) and _SHA256.match(value)):
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
        reasons.append("root_span_not_ended_before_ttl")

    resource = root.resource.attributes if root.resource else {}
    start_ns = root.start_time or 0
    end_ns = root.end_time
    tables = merged.get(sc.INPUTS_TABLES)
    return LineageRecord(
        trace_id=f"{context.trace_id:032x}",
        root_span_id=f"{context.span_id:016x}",
        report_generation_id=_str(root_attrs.get(sc.GENERATION_ID)),
        business_id=_int(root_attrs.get(sc.BUSINESS_ID)),
        template_name=_str(merged.get(sc.TEMPLATE_NAME)),
        template_version=_str(merged.get(sc.TEMPLATE_VERSION)),
        template_sha256=_str(merged.get(sc.TEMPLATE_SHA256)),
        inputs_sha256=_str(inputs_sha256),
        inputs_bytes=_int(inputs_bytes),
        inputs_snapshot=stored_snapshot,
        inputs_codec=codec,
        html_sha256=_str(merged.get(sc.HTML_SHA256)),
        output_sha256=_str(merged.get(sc.OUTPUT_SHA256)),
        output_bytes=_int(merged.get(sc.OUTPUT_BYTES)),
        output_pages=_int(merged.get(sc.OUTPUT_PAGES)),
        output_uri=_str(merged.get(sc.OUTPUT_URI)),
        status=status,
        error_type=_str(error_type),
        error_message=error_message,
        started_at=_time(start_ns),
        ended_at=_time(end_ns) if end_ns else None,
        duration_ms=round((end_ns - start_ns) / 1e6, 3) if end_ns else None,
        steps=_steps(root, spans),
        input_tables=list(tables) if isinstance(tables, Sequence) else [],
        span_count=len(spans),
        span_tree=compress(span_tree_json(spans, root)),
        span_tree_codec=CODEC,
        sampled=context.trace_flags.sampled,
        complete=not reasons,
        incomplete_reasons=reasons,
        service_name=_str(resource.get(sc.SERVICE_NAME)),
        service_version=_str(resource.get(sc.SERVICE_VERSION)),
        created_at=now(),
    )


def span_tree_json(spans: Sequence[ReadableSpan], root: ReadableSpan) -> bytes:
    """The whole trace as JSON: the offline copy kept with the row (no payloads in it)."""
    resource = root.resource
    document = {
        "resource": dict(resource.attributes) if resource else {},
        "trace_state": root.context.trace_state.to_header() if root.context else "",
        "spans": [_span_dict(span) for span in sorted(spans, key=lambda s: s.start_time or 0)],
    }
    return orjson.dumps(document, default=_jsonable)


def _span_dict(span: ReadableSpan) -> dict[str, Any]:
    ctx = span.context
    assert ctx is not None
    scope = span.instrumentation_scope
    return {
        "trace_id": f"{ctx.trace_id:032x}",
        "span_id": f"{ctx.span_id:016x}",
        "parent_span_id": f"{span.parent.span_id:016x}" if span.parent else None,
        "name": span.name,
        "kind": span.kind.name,
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": span.status.status_code.name,
        "status_message": span.status.description,
        "attributes": dict(span.attributes or {}),
        "events": [
            {"name": e.name, "time_ns": e.timestamp, "attributes": dict(e.attributes or {})}
            for e in span.events
        ],
        "links": [
            {"trace_id": f"{link.context.trace_id:032x}", "span_id": f"{link.context.span_id:016x}"}
            for link in span.links
        ],
        "scope": {"name": scope.name, "version": scope.version} if scope else None,
        "sampled": ctx.trace_flags.sampled,
    }


def _jsonable(value: object) -> object:
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def _first_by_name(spans: Sequence[ReadableSpan]) -> dict[str, ReadableSpan]:
    found: dict[str, ReadableSpan] = {}
    for span in spans:
        found.setdefault(span.name, span)
    return found


def _merged_attributes(root: ReadableSpan, spans: Sequence[ReadableSpan]) -> dict[str, Any]:
    """report.* attributes from the report's own spans; the root's own values win."""
    merged: dict[str, Any] = {}
    for span in spans:
        if not span.name.startswith("report."):
            continue  # SQL and other library spans carry no report.* attributes
        for key, value in (span.attributes or {}).items():
            if key.startswith("report."):
                merged.setdefault(key, value)
    merged.update({k: v for k, v in (root.attributes or {}).items() if k.startswith("report.")})
    return merged


def _status(root: ReadableSpan, attrs: Mapping[str, Any]) -> str:
    if root.status.status_code is StatusCode.ERROR or attrs.get(sc.STATUS) == "failed":
        return "failed"
    if root.end_time is None:
        return "unfinished"
    return "completed"


def _steps(root: ReadableSpan, spans: Sequence[ReadableSpan]) -> list[dict[str, Any]]:
    root_ctx = root.context
    assert root_ctx is not None
    start = root.start_time or 0
    steps = []
    for span in sorted(spans, key=lambda s: s.start_time or 0):
        if span.parent is None or span.parent.span_id != root_ctx.span_id:
            continue
        if not span.name.startswith("report."):
            continue  # the root's own SQL (row insert/update) is in the span tree, not a step
        end = span.end_time
        step: dict[str, Any] = {
            "name": span.name,
            "start_offset_ms": round(((span.start_time or start) - start) / 1e6, 3),
            "duration_ms": round((end - (span.start_time or 0)) / 1e6, 3) if end else None,
            "status": "error" if span.status.status_code is StatusCode.ERROR else "ok",
        }
        error_type = (span.attributes or {}).get(sc.ERROR_TYPE)
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
