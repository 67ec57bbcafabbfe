"""``LineageRecord``: one report's lineage, as folded from its trace and stored as one row.

The field names are the ``report_lineage`` column names (a public contract: people query them
with SQL). Records travel from the span processor to the writer through the hand-off, so they
serialise to and from compact bytes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import zstandard

CODEC = "zstd"
_LEVEL = 3


def compress(data: bytes) -> bytes:
    # ZstdCompressor objects are not thread-safe for concurrent calls; one call is one frame.
    return zstandard.ZstdCompressor(level=_LEVEL).compress(data)


def decompress(data: bytes, codec: str = CODEC) -> bytes:
    if codec != CODEC:
        raise ValueError(f"unknown codec {codec!r}")
    return zstandard.ZstdDecompressor().decompress(data)


@dataclass(slots=True)
class LineageRecord:
    trace_id: str
    root_span_id: str
    report_generation_id: str | None
    business_id: int | None
    template_name: str | None
    template_version: str | None
    template_sha256: str | None
    inputs_sha256: str | None
    inputs_bytes: int | None
    inputs_snapshot: bytes | None
    inputs_codec: str | None
    html_sha256: str | None
    output_sha256: str | None
    output_bytes: int | None
    output_pages: int | None
    output_uri: str | None
    status: str
    error_type: str | None
    error_message: str | None
    started_at: datetime
    ended_at: datetime | None
    duration_ms: float | None
    steps: list[dict[str, Any]]
    input_tables: list[str]
    span_count: int
    span_tree: bytes
    span_tree_codec: str
    sampled: bool
    complete: bool
    incomplete_reasons: list[str]
    service_name: str | None
    service_version: str | None
    created_at: datetime

    def as_row(self) -> dict[str, Any]:
        """Column values for an insert (every field is a column)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                **self.as_row(),
                "inputs_snapshot": self.inputs_snapshot.hex() if self.inputs_snapshot else None,
                "span_tree": self.span_tree.hex(),
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> LineageRecord:
        values = orjson.loads(data)
        values["inputs_snapshot"] = (
            bytes.fromhex(values["inputs_snapshot"]) if values["inputs_snapshot"] else None
        )
        values["span_tree"] = bytes.fromhex(values["span_tree"])
        for key in ("started_at", "ended_at", "created_at"):
            if values[key] is not None:
                values[key] = datetime.fromisoformat(values[key])
        return cls(**values)
