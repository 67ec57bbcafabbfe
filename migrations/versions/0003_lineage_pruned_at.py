"""report_lineage.pruned_at: when retention dropped the snapshot and span tree of a row.

Revision ID: 0003_lineage_pruned_at
Revises: 0002_report_lineage
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_lineage_pruned_at"
down_revision = "0002_report_lineage"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("report_lineage") as batch:
        batch.add_column(sa.Column("pruned_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    with op.batch_alter_table("report_lineage") as batch:
        batch.drop_column("pruned_at")
