"""Reading stored blobs: a tampered frame cannot exhaust memory."""

from __future__ import annotations

import pytest
import zstandard

from otel_lineage.record import decompress


def test_a_decompression_bomb_is_refused_before_it_is_allocated() -> None:
    bomb = zstandard.ZstdCompressor().compress(b" " * (64 << 20))
    with pytest.raises(ValueError, match="declares 67108864 bytes"):
        decompress(bomb, max_bytes=1000)
    undeclared = zstandard.ZstdCompressor(write_content_size=False).compress(b"x" * 5000)
    with pytest.raises(zstandard.ZstdError):
        decompress(undeclared, max_bytes=1000)
    assert decompress(undeclared, max_bytes=5000) == b"x" * 5000
