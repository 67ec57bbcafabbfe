"""Renderer fingerprint: what rendered each PDF.

- ``report_lineage.renderer`` (JSON): versions of WeasyPrint, pydyf, fontTools, Jinja2 and
  Python, the font subsetter, and the fonts embedded (family and sha256 of each font file).
  NULL on rows written before this revision and on reports whose converter records none:
  shown as "not recorded", never as an error.

Revision ID: 0008_renderer_fingerprint
Revises: 0007_generation_attempts
Create Date: 2026-12-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_renderer_fingerprint"
down_revision = "0007_generation_attempts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("report_lineage", sa.Column("renderer", sa.JSON()))


def downgrade() -> None:
    with op.batch_alter_table("report_lineage") as batch:
        batch.drop_column("renderer")
