"""The outbox's WAL is copied back by its own thread (``Checkpointer``), never inside a ``put``.

SQLite checkpoints automatically in whichever commit crosses 1,000 WAL pages (4 MB): in the
outbox that was a report's ``put``, which then copied the WAL into the file and synced it. The
report's connection now checkpoints only past a safety size (64 MB); the checkpointer does it
every second that saw writes and at once per 4 MB put, whatever the writer is doing.
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


def test_puts_past_sqlites_own_threshold_do_not_checkpoint(tmp_path: Path) -> None:
    box = OutboxHandOff(tmp_path)
    box._checkpointer.stop()  # only the report's connection is left to checkpoint
    template = _record()
    try:
        for _ in range(6):
            assert box.put(_large(template))
        # Past SQLite's automatic checkpoint (1,000 pages): all still in the WAL, the file
        # itself untouched by the report's commits.
        assert Path(f"{box.path}-wal").stat().st_size > 6 * MB
        assert box.path.stat().st_size < MB
    finally:
        box.close()


def test_the_checkpointer_copies_the_wal_back_with_no_writer_at_all(tmp_path: Path) -> None:
    box = OutboxHandOff(tmp_path)
    wal = Path(f"{box.path}-wal")
    template = _record()
    try:
        for _ in range(6):
            assert box.put(_large(template))
        # Nobody takes or acknowledges (a writer stuck in a database call, say).
        assert _within(10, lambda: box.path.stat().st_size > 6 * MB)
        assert box.put(template)  # the WAL starts again from the top, cut back to 4 MB
        assert wal.stat().st_size <= 5 * MB
    finally:
        box.close()
    assert not wal.exists() and box.path.exists()  # records left: the file stays, no WAL


def test_a_writer_that_never_acknowledges_does_not_let_the_wal_grow(tmp_path: Path) -> None:
    box = OutboxHandOff(tmp_path)
    wal = Path(f"{box.path}-wal")
    template = _record()
    largest = 0
    try:
        for _ in range(40):  # 40 MB of reports with the database down
            assert box.put(_large(template))
            largest = max(largest, wal.stat().st_size)
            time.sleep(0.01)
    finally:
        box.close()
    # Each 4 MB wakes the checkpointer (measured: the WAL stays near 4-8 MB); the report's own
    # safety checkpoint would only come at 64 MB.
    assert largest < 32 * MB


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
