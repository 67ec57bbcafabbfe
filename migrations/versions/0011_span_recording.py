"""Span-recording policy: which spans of each report trace were recorded.

- ``report_lineage.span_recording`` (text): ``report`` when only the report's own ``report.*``
  spans were recorded (an unsampled trace under the default ``OTEL_LINEAGE_RECORD_SPANS``),
  ``all`` when every span was (a sampled trace, or the ``all`` policy). NULL on rows written
  before this revision, and on traces started by another sampler.

Revision ID: 0011_span_recording
Revises: 0010_protected_snapshots
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_span_recording"
down_revision = "0010_protected_snapshots"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("report_lineage", sa.Column("span_recording", sa.Text()))


def downgrade() -> None:
    with op.batch_alter_table("report_lineage") as batch:
        batch.drop_column("span_recording")
