"""``LineageRecord``: one report's lineage, as folded from its trace and stored as one row.

The field names are the ``report_lineage`` column names (a public contract: people query them
with SQL). Records travel from the span processor to the writer through the hand-off, so they
serialise to and from compact bytes.
"""

from __future__ import annotations

import dataclasses
import re
import struct
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import zstandard

CODEC = "zstd"
#: A blob as folded, not yet compressed: how a record travels from the report thread to the
#: writer, which compresses it (``as_row``). Never stored in the lineage database.
RAW_CODEC = "raw"
#: Version of the stored span tree's compact layout (written by the fold,
#: read by ``reading.exports.span_tree``).
SPAN_TREE_FORMAT = 2
#: The fields of one span in the compact layout, in order (ids as integers, enums as values).
SPAN_FIELDS = (
    "span_id",
    "parent_span_id",
    "name",
    "kind",
    "start_ns",
    "end_ns",
    "status",
    "status_message",
    "attributes",
    "events",
    "links",
    "scope",
    "sampled",
)
_HEADER = struct.Struct(">I")
#: zstd level 1: on snapshot-like JSON (5 KB to 5 MB) it compressed as small as level 3 here,
#: at 1.5-2.1 µs/KB against 1.8-2.8 (docs/benchmarks.md); it runs on the writer thread.
ZSTD_LEVEL = 1


_local = threading.local()

#: What a database or a JSON encoder refuses in text: NUL (PostgreSQL text) and lone
#: surrogates (``os.environ`` decodes invalid bytes to them; UTF-8 encoders refuse them).
_BAD_TEXT = re.compile(r"[\x00\ud800-\udfff]")
REPLACEMENT = "\ufffd"


def clean_text(value: str) -> str:
    """``value`` with NUL dropped and lone surrogates replaced by U+FFFD (as a decoder would)."""
    return _BAD_TEXT.sub(lambda m: "" if m.group() == "\x00" else REPLACEMENT, value)


def needs_cleaning(value: str) -> bool:
    return _BAD_TEXT.search(value) is not None


def may_need_cleaning(value: object) -> bool:
    """False when no string in the JSON-shaped ``value`` (keys too) holds a NUL or a lone
    surrogate, told in one C pass: orjson refuses lone surrogates and writes NUL as
    ``\\u0000``. True for anything it refuses (for any reason) or that may hold a NUL: only
    then is the value worth looking at string by string, a walk that costs more CPU than
    writing a demo report's row."""
    try:
        return b"\\u0000" in orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:  # orjson.JSONEncodeError: a lone surrogate, or an int beyond 64 bits
        return True


def clean_json(value: object) -> object:
    """A JSON-shaped value with every string (keys too) passed through ``clean_text``."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_json(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_json(v) for v in value]
    return value


def compress(data: bytes) -> bytes:
    """zstd, one compressor per thread: creating one costs more than compressing a report."""
    compressor: zstandard.ZstdCompressor | None = getattr(_local, "compressor", None)
    if compressor is None:
        compressor = _local.compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    return compressor.compress(data)


#: Largest snapshot a reader decompresses when the row records no size (the generator's own
#: limit, D6_MAX_SNAPSHOT_BYTES, is far below).
MAX_SNAPSHOT_BYTES = 256 << 20


def snapshot_size_limit(row: Mapping[str, Any]) -> int:
    """How many bytes a row's snapshot may decompress to: the size it recorded."""
    recorded = row.get("inputs_bytes")
    if isinstance(recorded, int) and 0 <= recorded <= MAX_SNAPSHOT_BYTES:
        return recorded
    return MAX_SNAPSHOT_BYTES


def decompress(data: bytes, codec: str = CODEC, *, max_bytes: int | None = None) -> bytes:
    """``data`` decompressed; refused (ValueError) beyond ``max_bytes`` when given.

    A stored blob may have been tampered with into a decompression bomb: readers pass the size
    the row recorded, so one edited frame cannot exhaust memory (the frame's declared size is
    checked before anything is allocated).
    """
    if codec == RAW_CODEC:  # a record's blob before ``as_row`` compressed it
        if max_bytes is not None and len(data) > max_bytes:
            raise ValueError(f"{len(data)} bytes, more than the {max_bytes} expected")
        return bytes(data)
    if codec != CODEC:
        raise ValueError(f"unknown codec {codec!r}")
    if max_bytes is None:
        return zstandard.ZstdDecompressor().decompress(data)
    declared = zstandard.frame_content_size(data)
    if declared > max_bytes:
        raise ValueError(f"the frame declares {declared} bytes, more than the {max_bytes} expected")
    # Without a declared size, the output buffer is max_bytes: more is an error, not growth.
    return zstandard.ZstdDecompressor().decompress(data, max_output_size=max(max_bytes, 1))


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
    #: Trace id of the span that requested the report (the root's link), when there was one.
    caller_trace_id: str | None = None
    #: The trace was sampled and this process had a span exporter: it can be in a backend.
    #: None for records folded before the field existed (outboxes of older versions).
    exported: bool | None = None
    #: Which attempt of its generation this trace was (None in records of older versions).
    attempt: int | None = None
    #: What rendered the PDF: library versions, font subsetter, embedded fonts (family and
    #: sha256 of the font file). None when the converter recorded none (and in older records).
    renderer: dict[str, Any] | None = None
    #: Which spans of the trace were recorded: ``report`` (the report's own spans: an unsampled
    #: trace under the default policy) or ``all``. None in records of older versions.
    span_recording: str | None = None

    def as_row(self) -> dict[str, Any]:
        """Column values for an insert (every field is a column), blobs compressed.

        The fold leaves the blobs raw (``RAW_CODEC``) so that compressing them is the writer
        thread's work, not the report's; this is where it happens.
        """
        row = {name: getattr(self, name) for name in _FIELDS}
        for blob, codec in _BLOBS:
            if row[codec] == RAW_CODEC and row[blob] is not None:
                row[blob], row[codec] = compress(row[blob]), CODEC
        return row

    def to_bytes(self) -> bytes:
        """Compact serialisation: JSON of the scalar fields, then the two blobs as they are."""
        snapshot = self.inputs_snapshot or b""
        fields = {name: getattr(self, name) for name in _FIELDS}
        fields["inputs_snapshot"] = len(snapshot) if self.inputs_snapshot else None
        fields["span_tree"] = len(self.span_tree)
        fields_json = orjson.dumps(fields)
        return b"".join((_HEADER.pack(len(fields_json)), fields_json, snapshot, self.span_tree))

    @classmethod
    def from_bytes(cls, data: bytes) -> LineageRecord:
        (json_size,) = _HEADER.unpack_from(data)
        start = _HEADER.size + json_size
        values = orjson.loads(data[_HEADER.size : start])
        snapshot_size = values["inputs_snapshot"]
        if snapshot_size is not None:
            values["inputs_snapshot"] = data[start : start + snapshot_size]
            start += snapshot_size
        values["span_tree"] = data[start : start + values["span_tree"]]
        for key in ("started_at", "ended_at", "created_at"):
            if values[key] is not None:
                values[key] = datetime.fromisoformat(values[key])
        return cls(**values)


_FIELDS = tuple(f.name for f in dataclasses.fields(LineageRecord))
#: The blob columns and the codec column that says how each is encoded.
_BLOBS = (("inputs_snapshot", "inputs_codec"), ("span_tree", "span_tree_codec"))
