"""The offline copy of a report's trace, in the formats trace tools read.

A lineage row keeps the whole span tree (compressed JSON, no payloads), so the trace outlives
the trace backend's retention. It converts to:

- Jaeger's native JSON (``{"data": [trace]}``), which the Jaeger UI loads from its "JSON File"
  tab with no backend;
- OTLP/JSON, an ``ExportTraceServiceRequest`` built with the OTLP protobuf classes and rendered
  with protobuf's JSON mapping, except that trace and span ids are hex strings as the OTLP/JSON
  specification requires (the generic protobuf mapping would use base64).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status
from opentelemetry.trace import SpanKind, StatusCode

from otel_lineage.record import SPAN_FIELDS, SPAN_TREE_FORMAT, decompress

_KINDS = {"INTERNAL": 1, "SERVER": 2, "CLIENT": 3, "PRODUCER": 4, "CONSUMER": 5}
_STATUS = {"UNSET": 0, "OK": 1, "ERROR": 2}
#: The SDK's enum values in the compact span tree (``SpanKind``, ``StatusCode``).
_KIND_NAMES = {kind.value: kind.name for kind in SpanKind}
_STATUS_NAMES = {code.value: code.name for code in StatusCode}


class TraceUnavailableError(LookupError):
    pass


#: Largest span tree a reader decompresses: 2,000 spans of generous attributes are a few MB;
#: an edited frame declaring more is refused before anything is allocated.
MAX_SPAN_TREE_BYTES = 64 << 20


class CorruptTraceError(ValueError):
    """The stored span tree does not decode to a trace (an edited or damaged row)."""


def span_tree(row: Mapping[str, Any], *, checked: bool = True) -> dict[str, Any]:
    """The stored span tree of a lineage row, decoded and checked: one dict per span (hex ids,
    enum names), whichever layout it was stored in.

    Raises ``TraceUnavailableError`` when the row keeps no span tree (pruned) and
    ``CorruptTraceError`` when the blob is not a trace, so no reader turns a damaged row into
    an invalid export. An abandoned report's tree holds no spans (its process died first).
    ``checked=False`` skips the per-span check, for a reader that looks up one attribute."""
    blob = row.get("span_tree")
    report = row.get("report_generation_id")
    if blob is None:
        raise TraceUnavailableError(
            f"the span tree of report {report} is not stored (pruned by retention)"
        )
    try:
        raw = decompress(
            bytes(blob), row.get("span_tree_codec") or "zstd", max_bytes=MAX_SPAN_TREE_BYTES
        )
        document = orjson.loads(raw)
        if not isinstance(document, dict):
            raise ValueError("not a JSON object")
        tree = _expanded(document) if document.get("format") == SPAN_TREE_FORMAT else document
        if checked:
            _check(tree)
    except CorruptTraceError:
        raise
    except Exception as exc:
        raise CorruptTraceError(f"the stored span tree is corrupt: {_why(exc)}") from exc
    return tree


def exported_tree(row: Mapping[str, Any]) -> dict[str, Any]:
    """``span_tree`` for a trace export (``trace``, the API's trace download): a row whose
    tree holds no span has no trace to export, and an empty document would read as one.
    Raises ``TraceUnavailableError`` saying why (an abandoned report's process died before
    any of its spans ended)."""
    tree = span_tree(row)
    if not tree["spans"]:
        report = row.get("report_generation_id")
        why = (
            "its process died before any of its spans ended (abandoned)"
            if row.get("error_type") == "abandoned"
            else "it holds no span"
        )
        raise TraceUnavailableError(f"report {report} has no stored trace: {why}")
    return tree


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if isinstance(exc, ValueError) else type(exc).__name__


_HEX16 = re.compile(r"[0-9a-f]{16}")
_HEX32 = re.compile(r"[0-9a-f]{32}")


def _check(tree: Mapping[str, Any]) -> None:
    """Every field the exports read, of the type they read it as (a first-layout tree is
    checked the same way)."""
    if not isinstance(tree.get("resource", {}), dict) or not isinstance(tree.get("spans"), list):
        raise ValueError("resource or spans of the wrong type")
    for span in tree["spans"]:
        if not isinstance(span, dict):
            raise ValueError("a span is not an object")
        ids_ok = (
            _HEX32.fullmatch(str(span.get("trace_id")))
            and _HEX16.fullmatch(str(span.get("span_id")))
            and (
                span.get("parent_span_id") is None or _HEX16.fullmatch(str(span["parent_span_id"]))
            )
        )
        if not ids_ok:
            raise ValueError("a span id is not hexadecimal of its length")
        if not isinstance(span.get("name"), str) or not _is_int(span.get("start_ns")):
            raise ValueError("a span's name or start time is missing")
        if span.get("end_ns") is not None and not _is_int(span["end_ns"]):
            raise ValueError("a span's end time is not an integer")
        if span.get("kind") not in _KINDS or span.get("status") not in _STATUS:
            raise ValueError("a span's kind or status is unknown")
        if not isinstance(span.get("attributes"), dict):
            raise ValueError("a span's attributes are not an object")
        events, links = span.get("events"), span.get("links")
        if not isinstance(events, list) or not isinstance(links, list):
            raise ValueError("a span's events or links are not lists")
        for event in events:
            if not (isinstance(event, dict) and isinstance(event.get("attributes"), dict)):
                raise ValueError("an event is malformed")
            if not (isinstance(event.get("name"), str) and _is_int(event.get("time_ns"))):
                raise ValueError("an event is malformed")
        for link in links:
            if not isinstance(link, dict) or not (
                _HEX32.fullmatch(str(link.get("trace_id")))
                and _HEX16.fullmatch(str(link.get("span_id")))
            ):
                raise ValueError("a link is malformed")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _expanded(document: Mapping[str, Any]) -> dict[str, Any]:
    """The compact layout (one array per span, ``SPAN_FIELDS``) as one dict per span."""
    trace_id = document.get("trace_id") or ""
    spans = []
    for row in document.get("spans") or ():
        span = dict(zip(SPAN_FIELDS, row, strict=True))
        span["trace_id"] = trace_id
        span["span_id"] = f"{span['span_id']:016x}"
        parent = span["parent_span_id"]
        span["parent_span_id"] = None if parent is None else f"{parent:016x}"
        span["kind"] = _KIND_NAMES[span["kind"]]  # an unknown value: KeyError, corrupt
        span["status"] = _STATUS_NAMES[span["status"]]
        span["events"] = [
            {"name": name, "time_ns": time_ns, "attributes": attributes}
            for name, time_ns, attributes in span["events"] or ()
        ]
        span["links"] = [
            {"trace_id": link_trace, "span_id": f"{link_span:016x}"}
            for link_trace, link_span in span["links"] or ()
        ]
        scope = span["scope"]
        span["scope"] = None if scope is None else {"name": scope[0], "version": scope[1]}
        spans.append(span)
    return {
        "resource": document.get("resource") or {},
        "trace_state": document.get("trace_state") or "",
        "spans": spans,
    }


# -- Jaeger -------------------------------------------------------------------------------------


def to_jaeger(tree: Mapping[str, Any]) -> dict[str, Any]:
    spans = tree["spans"]
    resource = tree.get("resource", {})
    trace_id = spans[0]["trace_id"] if spans else ""
    return {
        "data": [
            {
                "traceID": trace_id,
                "spans": [_jaeger_span(span) for span in spans],
                "processes": {
                    "p1": {
                        "serviceName": str(resource.get("service.name", "unknown")),
                        "tags": [
                            _jaeger_tag(k, v) for k, v in resource.items() if k != "service.name"
                        ],
                    }
                },
                "warnings": None,
            }
        ],
        "total": 0,
        "limit": 0,
        "offset": 0,
        "errors": None,
    }


def _jaeger_span(span: Mapping[str, Any]) -> dict[str, Any]:
    references = []
    if span["parent_span_id"]:
        references.append(
            {"refType": "CHILD_OF", "traceID": span["trace_id"], "spanID": span["parent_span_id"]}
        )
    references.extend(
        {"refType": "FOLLOWS_FROM", "traceID": link["trace_id"], "spanID": link["span_id"]}
        for link in span["links"]
    )
    tags = [_jaeger_tag(k, v) for k, v in span["attributes"].items()]
    tags.append(_jaeger_tag("span.kind", span["kind"].lower()))
    if span["status"] != "UNSET":
        tags.append(_jaeger_tag("otel.status_code", span["status"]))
    if span["status"] == "ERROR":
        tags.append(_jaeger_tag("error", True))
        if span["status_message"]:
            tags.append(_jaeger_tag("otel.status_description", span["status_message"]))
    if span.get("scope"):
        tags.append(_jaeger_tag("otel.scope.name", span["scope"]["name"]))
    start, end = span["start_ns"], span["end_ns"] or span["start_ns"]
    return {
        "traceID": span["trace_id"],
        "spanID": span["span_id"],
        "flags": 1 if span.get("sampled") else 0,
        "operationName": span["name"],
        "references": references,
        "startTime": start // 1000,
        "duration": max(0, (end - start) // 1000),
        "tags": tags,
        "logs": [
            {
                "timestamp": event["time_ns"] // 1000,
                "fields": [_jaeger_tag("event", event["name"])]
                + [_jaeger_tag(k, v) for k, v in event["attributes"].items()],
            }
            for event in span["events"]
        ],
        "processID": "p1",
        "warnings": None,
    }


def _jaeger_tag(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"key": key, "type": "bool", "value": value}
    if isinstance(value, int):
        return {"key": key, "type": "int64", "value": value}
    if isinstance(value, float):
        return {"key": key, "type": "float64", "value": value}
    if isinstance(value, list | tuple):
        return {"key": key, "type": "string", "value": orjson.dumps(value).decode()}
    return {"key": key, "type": "string", "value": str(value)}


# -- OTLP ---------------------------------------------------------------------------------------


def to_otlp_request(tree: Mapping[str, Any]) -> ExportTraceServiceRequest:
    """The trace as the protobuf message an OTLP exporter would have sent."""
    by_scope: dict[tuple[str, str], list[Span]] = {}
    for span in tree["spans"]:
        scope = span.get("scope") or {"name": "", "version": ""}
        key = (scope["name"] or "", scope["version"] or "")
        by_scope.setdefault(key, []).append(_otlp_span(span, tree.get("trace_state", "")))
    resource_spans = ResourceSpans()
    resource_spans.resource.attributes.extend(_key_values(tree.get("resource", {})))
    for (name, version), spans in by_scope.items():
        scope_spans = ScopeSpans()
        scope_spans.scope.name = name
        scope_spans.scope.version = version
        scope_spans.spans.extend(spans)
        resource_spans.scope_spans.append(scope_spans)
    request = ExportTraceServiceRequest()
    request.resource_spans.append(resource_spans)
    return request


def to_otlp_json(tree: Mapping[str, Any]) -> dict[str, Any]:
    """OTLP/JSON of the trace (protobuf JSON mapping, ids as hex per the OTLP spec)."""
    document: dict[str, Any] = json_format.MessageToDict(to_otlp_request(tree))
    for resource_spans in document.get("resourceSpans", []):
        for scope_spans in resource_spans.get("scopeSpans", []):
            for span in scope_spans.get("spans", []):
                _ids_to_hex(span)
                for link in span.get("links", []):
                    _ids_to_hex(link)
    return document


def _ids_to_hex(message: dict[str, Any]) -> None:
    for key in ("traceId", "spanId", "parentSpanId"):
        if key in message:
            message[key] = base64.b64decode(message[key]).hex()


def _otlp_span(span: Mapping[str, Any], trace_state: str) -> Span:
    message = Span(
        trace_id=bytes.fromhex(span["trace_id"]),
        span_id=bytes.fromhex(span["span_id"]),
        trace_state=trace_state,
        name=span["name"],
        kind=_KINDS.get(span["kind"], 0),  # type: ignore[arg-type]
        start_time_unix_nano=span["start_ns"],
        end_time_unix_nano=span["end_ns"] or span["start_ns"],
        status=Status(code=_STATUS[span["status"]], message=span["status_message"] or ""),  # type: ignore[arg-type]
    )
    if span["parent_span_id"]:
        message.parent_span_id = bytes.fromhex(span["parent_span_id"])
    message.attributes.extend(_key_values(span["attributes"]))
    for event in span["events"]:
        added = message.events.add(name=event["name"], time_unix_nano=event["time_ns"])
        added.attributes.extend(_key_values(event["attributes"]))
    for link in span["links"]:
        message.links.add(
            trace_id=bytes.fromhex(link["trace_id"]), span_id=bytes.fromhex(link["span_id"])
        )
    return message


def _key_values(attributes: Mapping[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=key, value=_any_value(value)) for key, value in attributes.items()]


def _any_value(value: Any) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, Sequence) and not isinstance(value, str):
        return AnyValue(array_value=ArrayValue(values=[_any_value(v) for v in value]))
    return AnyValue(string_value=str(value))
