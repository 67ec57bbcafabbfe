"""Reading a stored span tree: both layouts, and a damaged or edited blob refused, never
exported as an invalid trace (an edited row is an integrity failure the readers report)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from otel_lineage.reading.exports import (
    MAX_SPAN_TREE_BYTES,
    CorruptTraceError,
    span_tree,
    to_jaeger,
    to_otlp_json,
)
from otel_lineage.record import SPAN_TREE_FORMAT, compress

TRACE = "ab" * 16
ROOT = [1, None, "report.generate", 0, 10, 20, 1, None, {"a": 1}, None, None, ["s", "1"], False]
CHILD = [2, 1, "SELECT", 2, 11, 12, 0, None, {}, [["e", 11, {}]], [[TRACE, 7]], None, False]


def _row(document: Any) -> dict[str, Any]:
    # json, not orjson: the damaged trees include an integer orjson refuses to write
    return {"report_generation_id": "r", "span_tree": compress(json.dumps(document).encode())}


def _compact(*spans: list[Any], **extra: Any) -> dict[str, Any]:
    return {"format": SPAN_TREE_FORMAT, "trace_id": TRACE, "spans": list(spans), **extra}


def test_the_compact_layout_reads_as_one_dict_per_span() -> None:
    tree = span_tree(_row(_compact(ROOT, CHILD, resource={"service.name": "s"})))
    root, child = tree["spans"]
    assert (root["span_id"], root["parent_span_id"], root["kind"], root["status"]) == (
        "0000000000000001",
        None,
        "INTERNAL",
        "OK",
    )
    assert (child["parent_span_id"], child["kind"], child["trace_id"]) == (
        "0000000000000001",
        "CLIENT",
        TRACE,
    )
    assert child["events"] == [{"name": "e", "time_ns": 11, "attributes": {}}]
    assert child["links"] == [{"trace_id": TRACE, "span_id": "0000000000000007"}]
    assert to_jaeger(tree)["data"][0]["traceID"] == TRACE
    assert len(to_otlp_json(tree)["resourceSpans"][0]["scopeSpans"]) == 2


def _with(span: list[Any], index: int, value: Any) -> list[Any]:
    changed = list(span)
    changed[index] = value
    return changed


CORRUPT = {
    "not an object": [1, 2],
    "spans not a list": _compact() | {"spans": {"0": ROOT}},
    "a span of the wrong length": _compact(ROOT[:5]),
    "a negative span id": _compact(_with(ROOT, 0, -5)),
    "a span id beyond 64 bits": _compact(_with(ROOT, 0, 2**64)),
    "a span id as text": _compact(_with(ROOT, 0, "1")),
    "no name": _compact(_with(ROOT, 2, None)),
    "a start time as text": _compact(_with(ROOT, 4, "x")),
    "a kind by name": _compact(_with(ROOT, 3, "SERVER")),
    "attributes as a list": _compact(_with(ROOT, 8, [1])),
    "no trace id": {"format": SPAN_TREE_FORMAT, "spans": [ROOT]},
    "resource as a list": _compact(ROOT, resource=[1]),
    "first layout, keys missing": {"resource": {}, "spans": [{"name": "x"}]},
    "first layout, a null span": {"resource": {}, "spans": [None]},
}


@pytest.mark.parametrize("document", CORRUPT.values(), ids=CORRUPT.keys())
def test_a_damaged_tree_is_refused_as_corrupt(document: Any) -> None:
    with pytest.raises(CorruptTraceError, match="the stored span tree is corrupt"):
        span_tree(_row(document))


def test_a_frame_declaring_more_than_the_limit_is_refused_before_it_is_expanded() -> None:
    bomb = compress(b" " * (MAX_SPAN_TREE_BYTES + 1))
    assert len(bomb) < 100_000
    with pytest.raises(CorruptTraceError, match="more than"):
        span_tree({"report_generation_id": "r", "span_tree": bomb})


def test_an_unchecked_read_takes_a_partial_first_layout() -> None:
    document = {"spans": [{"name": "report.convert_pdf", "attributes": {"k": "v"}}]}
    assert span_tree(_row(document), checked=False)["spans"][0]["attributes"] == {"k": "v"}
