"""The outbox's WAL is copied back by a thread of its own (``Checkpointer``).

SQLite checkpoints automatically in whichever commit crosses 1,000 WAL pages (4 MB): in the
outbox, a report's ``put``. The checkpointer copies the pages first, every second that saw
writes and at once per 4 MB put, whatever the writer is doing, so that commit has little left
to do; SQLite's own checkpoint still bounds the WAL when puts come faster than it copies.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from otel_lineage.delivery.outbox import OutboxHandOff
from otel_lineage.record import RAW_CODEC, LineageRecord
from tests.integration.test_writer import _record

MB = 1 << 20


def _large(template: LineageRecord) -> LineageRecord:
    return dataclasses.replace(
        template,
        trace_id=uuid.uuid4().hex,
        inputs_snapshot=os.urandom(MB),  # incompressible: the file holds all of it
        inputs_codec=RAW_CODEC,
    )


def _within(seconds: float, condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_the_checkpointer_copies_the_wal_back_with_no_writer_at_all(tmp_path: Path) -> None:
    box = OutboxHandOff(tmp_path)
    wal = Path(f"{box.path}-wal")
    template = _record()
    try:
        for _ in range(3):  # 3 MB: below SQLite's own checkpoint (1,000 pages, 4 MB)
            assert box.put(_large(template))
        # Nobody takes or acknowledges (a writer stuck in a database call, say): only the
        # checkpointer copies the pages into the file.
        assert _within(10, lambda: box.path.stat().st_size > 3 * MB)
        assert box.put(template)  # every frame copied: the WAL starts again from its top
        assert wal.stat().st_size <= 4 * MB
    finally:
        box.close()
    assert not wal.exists() and box.path.exists()  # records left: the file stays, no WAL


def test_back_to_back_puts_with_no_writer_keep_the_wal_bounded(tmp_path: Path) -> None:
    box = OutboxHandOff(tmp_path)
    wal = Path(f"{box.path}-wal")
    template = _record()
    largest = 0
    try:
        for _ in range(40):  # 40 MB of reports with the database down, no pause between them
            assert box.put(_large(template))
            largest = max(largest, wal.stat().st_size)
    finally:
        box.close()
    assert largest < 16 * MB  # measured: 4-5 MB (the WAL is cut back to 4 MB at each restart)


def test_small_writes_are_checkpointed_within_a_second_or_so(tmp_path: Path) -> None:
    box = OutboxHandOff(tmp_path)
    try:
        before = box.path.stat().st_size
        assert box.put(_record())
        assert box.path.stat().st_size == before  # not at the put: in the WAL
        assert _within(10, lambda: box.path.stat().st_size > before)
    finally:
        box.close()


def test_a_removed_outbox_file_is_not_created_again_by_the_checkpointer(tmp_path: Path) -> None:
    box = OutboxHandOff(tmp_path)
    try:
        box.path.unlink()
        assert box.put(_record())  # the write goes to the open file, now unlinked
        time.sleep(2.5)  # past the checkpoint that falls due
        assert not box.path.exists()
    finally:
        box.close()


def test_a_record_that_would_not_decode_the_same_is_read_from_the_file(tmp_path: Path) -> None:
    box = OutboxHandOff(tmp_path)
    try:
        odd = dataclasses.replace(_record(), trace_id=uuid.uuid4().hex, duration_ms=math.inf)
        assert box.put(odd)
        (item,) = box.take(10, 0)
        assert item.record.duration_ms is None  # as the file holds it (orjson: null)
        box.ack([item])
    finally:
        box.close()


def test_take_after_close_hands_out_nothing(tmp_path: Path) -> None:
    box = OutboxHandOff(tmp_path)
    assert box.put(_record())
    box.close()
    assert box.take(10, 0) == []
