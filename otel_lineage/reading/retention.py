"""Retention: drop the bulky parts of old lineage rows, keep the record.

Snapshots and span trees are most of a row's size; the hashes, steps, status and links are what
audits need for years. ``prune`` nulls the two blobs of rows started before the cutoff and
stamps ``pruned_at``, so a later ``inputs`` or ``trace`` says why the data is gone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, func, select, update

from otel_lineage.delivery.schema import report_lineage
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
    c = report_lineage.c
    cutoff = datetime.now(UTC) - timedelta(days=older_than_days)
    condition = (c.started_at < cutoff) & (
        c.inputs_snapshot.is_not(None) | c.span_tree.is_not(None)
    )
    size = func.coalesce(func.length(c.inputs_snapshot), 0) + func.coalesce(
        func.length(c.span_tree), 0
    )
    with untraced(), engine.begin() as conn:
        rows, freed = conn.execute(
            select(func.count(), func.coalesce(func.sum(size), 0)).where(condition)
        ).one()
        if not dry_run and rows:
            conn.execute(
                update(report_lineage)
                .where(condition)
                .values(inputs_snapshot=None, span_tree=None, pruned_at=datetime.now(UTC))
            )
    return PruneResult(cutoff=cutoff, rows=int(rows), bytes_freed=int(freed), dry_run=dry_run)
