"""Queued generations: attempts per generation, one lineage row per attempt.

A report queued on a task queue can run more than once: a worker that dies mid-report has its
task redelivered, and a report that failed because the database was unreachable is retried.
Every attempt is its own trace, so its own lineage row.

- ``report_generation.attempts``: how many attempts claimed the generation (0 while queued;
  existing rows, all direct calls, get 1).
- ``report_lineage.attempt``: which attempt a row is (NULL on rows written before this).
- ``report_lineage.report_generation_id`` is no longer unique (an index instead): a killed
  attempt's "abandoned" row and the completed row of its retry share the generation id.

Downgrade refuses while any generation has more than one lineage row (restoring the unique
constraint would have to delete lineage); otherwise it restores the constraint and drops both
columns.

Revision ID: 0007_generation_attempts
Revises: 0006_lineage_access
Create Date: 2026-12-20
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_generation_attempts"
down_revision = "0006_lineage_access"
branch_labels = None
depends_on = None

#: SQLite's inline UNIQUE constraints have no name: batch mode names them by this convention
#: so that one can be dropped (``trace_id``'s is recreated under its conventional name).
_SQLITE_NAMES = {"uq": "uq_%(table_name)s_%(column_0_name)s"}
_PG_UNIQUE = "report_lineage_report_generation_id_key"
_SQLITE_UNIQUE = "uq_report_lineage_report_generation_id"
_INDEX = "ix_report_lineage_report_generation_id"


def upgrade() -> None:
    op.add_column(
        "report_generation",
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
    )
    op.execute("UPDATE report_generation SET attempts = 1 WHERE status <> 'pending'")
    if op.get_context().dialect.name == "sqlite":
        with op.batch_alter_table(
            "report_lineage", recreate="always", naming_convention=_SQLITE_NAMES
        ) as batch:
            batch.drop_constraint(_SQLITE_UNIQUE, type_="unique")
            batch.add_column(sa.Column("attempt", sa.Integer()))
    else:
        op.drop_constraint(_PG_UNIQUE, "report_lineage", type_="unique")
        op.add_column("report_lineage", sa.Column("attempt", sa.Integer()))
    op.create_index(_INDEX, "report_lineage", ["report_generation_id"])


def downgrade() -> None:
    shared = op.get_bind().scalar(
        sa.text(
            "SELECT count(*) FROM (SELECT report_generation_id FROM report_lineage "
            "WHERE report_generation_id IS NOT NULL GROUP BY report_generation_id "
            "HAVING count(*) > 1) AS shared"
        )
    )
    if shared:
        raise RuntimeError(
            f"{shared} report generations have lineage rows of several attempts; revision "
            "0006 allows one per generation: downgrading would have to delete lineage"
        )
    op.drop_index(_INDEX, "report_lineage")
    if op.get_context().dialect.name == "sqlite":
        with op.batch_alter_table(
            "report_lineage", recreate="always", naming_convention=_SQLITE_NAMES
        ) as batch:
            batch.drop_column("attempt")
            batch.create_unique_constraint(_SQLITE_UNIQUE, ["report_generation_id"])
    else:
        op.drop_column("report_lineage", "attempt")
        op.create_unique_constraint(_PG_UNIQUE, "report_lineage", ["report_generation_id"])
    with op.batch_alter_table("report_generation") as batch:
        batch.drop_column("attempts")
