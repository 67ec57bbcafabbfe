"""The outbox's WAL is copied back by the writer (``ack``), never inside a report's ``put``.

SQLite checkpoints automatically in whichever commit crosses 1,000 WAL pages (4 MB): in the
outbox that was a report's ``put``, which then copied the WAL into the file and synced it. The
report's connection now checkpoints only past a safety size; ``ack`` checkpoints on the writer's
own connection, outside the lock ``put`` waits on.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from pathlib import Path

from otel_lineage.delivery.outbox import OutboxHandOff
from otel_lineage.record import RAW_CODEC, LineageRecord
from tests.integration.test_writer import _record

MB = 1 << 20


def _large(n: int) -> list[LineageRecord]:
    return [
        dataclasses.replace(
            _record(),
            trace_id=uuid.uuid4().hex,
            inputs_snapshot=os.urandom(MB),  # incompressible: the file holds all of it
            inputs_codec=RAW_CODEC,
        )
        for _ in range(n)
    ]


def test_puts_never_checkpoint_and_the_writers_ack_does(tmp_path: Path) -> None:
    box = OutboxHandOff(tmp_path)
    wal = Path(f"{box.path}-wal")
    try:
        for record in _large(6):
            assert box.put(record)
        # Past SQLite's automatic checkpoint (1,000 pages): still all in the WAL, the file
        # itself untouched by the report's commits.
        assert wal.stat().st_size > 6 * MB
        assert box.path.stat().st_size < MB

        items = box.take(10, 0)
        assert len(items) == 6
        box.ack(items)  # more than 4 MB acknowledged: the writer's checkpoint runs now
        assert box.path.stat().st_size > 6 * MB  # the WAL's pages copied back into the file
        assert box.pending() == 0
    finally:
        box.close()
    assert not wal.exists() and not box.path.exists()  # empty at close: all of it removed


def test_a_checkpoint_is_at_most_once_a_second_for_small_acks(tmp_path: Path) -> None:
    box = OutboxHandOff(tmp_path)
    try:
        before = box.path.stat().st_size
        assert box.put(_record())
        box.ack(box.take(1, 0))  # a few KB acknowledged, well within the second
        assert box.path.stat().st_size == before  # not copied back yet: still in the WAL
    finally:
        box.close()
