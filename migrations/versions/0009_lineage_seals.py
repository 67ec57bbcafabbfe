"""Tamper-evident seals over lineage rows.

- ``lineage_seals``: one row per seal, chained by hash (``prev_hash`` unique: no two seals can
  share a predecessor), optionally signed (Ed25519).
- ``lineage_seal_rows``: which rows each seal covers, with their canonical digests (primary
  key ``row_id``: a row is sealed at most once).

``report_lineage`` is not touched: rows written before this revision are simply not sealed yet
(the next seal takes them). Downgrade drops both tables, and with them the evidence: export
them first if the seals matter.

Revision ID: 0009_lineage_seals
Revises: 0008_renderer_fingerprint
Create Date: 2026-12-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_lineage_seals"
down_revision = "0008_renderer_fingerprint"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "lineage_seals",
        sa.Column("seal_no", _ID, primary_key=True, autoincrement=False),
        sa.Column("prev_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("seal_hash", sa.String(64), nullable=False),
        sa.Column("digest_version", sa.Integer(), nullable=False),
        sa.Column("row_count", sa.Integer(), nullable=False),
        sa.Column("max_row_id", sa.BigInteger()),
        sa.Column("exhaustive", sa.Boolean(), nullable=False),
        sa.Column("sealed_at", _TS, nullable=False),
        sa.Column("sealed_by", sa.Text()),
        sa.Column("key_id", sa.String(64)),
        sa.Column("signature", sa.LargeBinary()),
    )
    op.create_table(
        "lineage_seal_rows",
        sa.Column("row_id", _ID, primary_key=True, autoincrement=False),
        sa.Column("seal_no", sa.BigInteger(), nullable=False),
        sa.Column("trace_id", sa.String(32), nullable=False),
        sa.Column("report_generation_id", sa.String(36)),
        sa.Column("digest", sa.String(64), nullable=False),
    )
    op.create_index(
        "ix_lineage_seal_rows_seal_no_row_id", "lineage_seal_rows", ["seal_no", "row_id"]
    )


def downgrade() -> None:
    op.drop_index("ix_lineage_seal_rows_seal_no_row_id", "lineage_seal_rows")
    op.drop_table("lineage_seal_rows")
    op.drop_table("lineage_seals")
