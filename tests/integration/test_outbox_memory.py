"""The writer takes the records ``put`` handed over from memory; the file is their durable copy.

It reads the file only for rows memory does not hold: after an adoption, or past the memory
budget, until it has read the file through. Whatever the mix, every record is taken once, in
the order it was put, and ``ack`` removes its row.
"""

from __future__ import annotations

import dataclasses
import random
import uuid
from pathlib import Path

import pytest

from otel_lineage.delivery.handoff import Pending
from otel_lineage.delivery.outbox import OutboxHandOff
from otel_lineage.record import LineageRecord
from tests.integration.test_writer import _record


@pytest.fixture(scope="module")
def template() -> LineageRecord:
    return _record()


def _fresh(record: LineageRecord) -> LineageRecord:
    return dataclasses.replace(record, trace_id=uuid.uuid4().hex)


def _damage_every_row(box: OutboxHandOff) -> None:
    box._conn.execute("UPDATE outbox SET record = x'00'")


def _rows(box: OutboxHandOff) -> int:
    return int(box._conn.execute("SELECT count(*) FROM outbox").fetchone()[0])


def test_put_records_are_taken_from_memory(tmp_path: Path, template: LineageRecord) -> None:
    box = OutboxHandOff(tmp_path)
    try:
        records = [_fresh(template) for _ in range(3)]
        for record in records:
            assert box.put(record)
        _damage_every_row(box)  # the file's copy is not what the writer reads
        items = box.take(10, 0)
        assert [item.record for item in items] == records
        box.ack(items)
        assert _rows(box) == 0 and box.pending() == 0
    finally:
        box.close()


def test_after_an_adoption_the_file_is_read_through_then_memory_again(
    tmp_path: Path, template: LineageRecord
) -> None:
    dead = OutboxHandOff(tmp_path)
    orphaned = [_fresh(template) for _ in range(3)]
    for record in orphaned:
        assert dead.put(record)
    dead._conn.close()  # its process dies: file and lock stay, the lock is released
    dead._lock_file.close()

    box = OutboxHandOff(tmp_path)
    try:
        before = [_fresh(template) for _ in range(2)]
        for record in before:
            assert box.put(record)
        assert box.recover() == 3
        after = [_fresh(template) for _ in range(2)]
        for record in after:
            assert box.put(record)
        first = box.take(4, 0)  # from the file, in seq order
        second = box.take(10, 0)
        taken = [item.record.trace_id for item in [*first, *second]]
        assert taken == [r.trace_id for r in [*before, *orphaned, *after]]
        box.ack([*first, *second])

        last = _fresh(template)
        assert box.put(last)  # read through: memory again
        _damage_every_row(box)
        (item,) = box.take(10, 0)
        assert item.record == last
        box.ack([item])
        assert _rows(box) == 0 and box.pending() == 0
    finally:
        box.close()


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("budget_records", [0, 2, 1000])
def test_any_mix_of_put_take_release_and_ack_delivers_each_record_once_in_order(
    tmp_path: Path, template: LineageRecord, seed: int, budget_records: int
) -> None:
    size = len(template.to_bytes())
    box = OutboxHandOff(tmp_path, memory_bytes=budget_records * size)
    rng = random.Random(seed)
    put: list[str] = []
    acked: list[str] = []
    first_taken: list[str] = []
    held: list[Pending] = []
    try:
        for _ in range(200):
            action = rng.choice(("put", "put", "put", "take", "ack", "release"))
            if action == "put":
                record = _fresh(template)
                assert box.put(record)
                put.append(record.trace_id)
            elif action == "take":
                taken = box.take(rng.randint(1, 5), 0)
                first_taken += [i.record.trace_id for i in taken if i.record.trace_id not in acked]
                held += taken
            elif held and action == "ack":
                done = held[: rng.randint(1, len(held))]
                del held[: len(done)]
                box.ack(done)
                acked += [item.record.trace_id for item in done]
            elif held:
                box.release(held)
                held = []
        box.release(held)
        while rest := box.take(50, 0):
            first_taken += [item.record.trace_id for item in rest]
            box.ack(rest)
            acked += [item.record.trace_id for item in rest]
        assert sorted(acked) == sorted(put) and len(set(acked)) == len(put)  # each once
        assert list(dict.fromkeys(first_taken)) == put  # first taken in the order put
        assert box.pending() == 0 and _rows(box) == 0
    finally:
        box.close()
