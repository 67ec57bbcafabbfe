"""Retention: drop the bulky parts of old lineage rows, keep the record.

Snapshots and span trees are most of a row's size; the hashes, steps, status and links are what
audits need for years. ``prune`` nulls the two blobs of rows started before the cutoff and
stamps ``pruned_at``, so a later ``inputs`` or ``trace`` says why the data is gone.

A shared snapshot (``lineage_snapshots``, revision 0010) is one copy for every row with the
same business and inputs: pruning a row drops its reference, and the copy is deleted only once
no row refers to it any more (a recent report of unchanged data keeps it).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, delete, func, select, update

from otel_lineage.delivery.schema import lineage_snapshots, report_lineage
from otel_lineage.delivery.store import untraced

#: Oldest cutoff accepted (a thousand years: anything more is a typo, and overflows dates).
MAX_AGE_DAYS = 365_000


@dataclass(frozen=True)
class PruneResult:
    cutoff: datetime
    rows: int
    bytes_freed: int
    dry_run: bool


def prune(engine: Engine, *, older_than_days: float, dry_run: bool = False) -> PruneResult:
    if not 0 <= older_than_days <= MAX_AGE_DAYS:  # also refuses NaN and infinity
        raise ValueError(f"the age must be between 0 and {MAX_AGE_DAYS} days")
    c, s = report_lineage.c, lineage_snapshots.c
    cutoff = datetime.now(UTC) - timedelta(days=older_than_days)
    old = c.started_at < cutoff
    condition = old & (
        c.inputs_snapshot.is_not(None)
        | c.span_tree.is_not(None)
        | c.inputs_snapshot_shared.is_(True)
    )
    size = func.coalesce(func.length(c.inputs_snapshot), 0) + func.coalesce(
        func.length(c.span_tree), 0
    )
    refers = (c.business_id == s.business_id) & (c.inputs_sha256 == s.inputs_sha256)
    refers = refers & c.inputs_snapshot_shared.is_(True)
    # Copies referred to by old rows only: freed with them.
    freed_copies = select(lineage_snapshots).where(
        select(c.id).where(refers, old).exists(), ~select(c.id).where(refers, ~old).exists()
    )
    with untraced(), engine.begin() as conn:
        rows, freed = conn.execute(
            select(func.count(), func.coalesce(func.sum(size), 0)).where(condition)
        ).one()
        copies = freed_copies.subquery()
        freed += conn.scalar(select(func.coalesce(func.sum(func.length(copies.c.data)), 0)))
        if not dry_run and rows:
            conn.execute(
                update(report_lineage)
                .where(condition)
                .values(
                    inputs_snapshot=None,
                    span_tree=None,
                    inputs_snapshot_shared=None,
                    pruned_at=datetime.now(UTC),
                )
            )
            conn.execute(delete(lineage_snapshots).where(~select(c.id).where(refers).exists()))
    return PruneResult(cutoff=cutoff, rows=int(rows), bytes_freed=int(freed), dry_run=dry_run)
