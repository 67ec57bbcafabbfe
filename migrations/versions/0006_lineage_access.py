"""Lineage service access control: API keys and the access log.

- ``lineage_api_keys``: one row per key, the secret stored only as its sha256 (``key_hash``,
  unique); a name is unique among the keys not revoked (partial unique index, on SQLite and
  PostgreSQL), so a revoked name can be given again.
- ``lineage_access_log``: append-only record of who read what (input snapshots, PDFs, verify,
  identify, key changes, prune), indexed for "newest first", "by report" and "by user".

New tables only, so no batch mode is needed on SQLite. Downgrade drops both tables: the keys
stop working and the access log is lost (export it first if it must be kept).

Revision ID: 0006_lineage_access
Revises: 0005_lineage_delivery
Create Date: 2026-12-15
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_lineage_access"
down_revision = "0005_lineage_delivery"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
BIGID = sa.BigInteger().with_variant(sa.Integer, "sqlite")
NOT_REVOKED = sa.text("revoked_at IS NULL")


def upgrade() -> None:
    op.create_table(
        "lineage_api_keys",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_by", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS),
        sa.Column("revoked_at", TS),
        sa.Column("last_used_at", TS),
        sa.Column("sessions_valid_after", TS),
    )
    op.create_index(
        "ux_lineage_api_keys_active_name",
        "lineage_api_keys",
        ["name"],
        unique=True,
        sqlite_where=NOT_REVOKED,
        postgresql_where=NOT_REVOKED,
    )
    op.create_table(
        "lineage_access_log",
        sa.Column("id", BIGID, primary_key=True, autoincrement=True),
        sa.Column("at", TS, nullable=False),
        sa.Column("user", sa.Text, nullable=False),
        sa.Column("role", sa.String(16)),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("report_id", sa.String(36)),
        sa.Column("client", sa.Text),
        sa.Column("user_agent", sa.Text),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text),
    )
    op.create_index("ix_lineage_access_log_at", "lineage_access_log", ["at"])
    op.create_index("ix_lineage_access_log_report_at", "lineage_access_log", ["report_id", "at"])
    op.create_index("ix_lineage_access_log_user_at", "lineage_access_log", ["user", "at"])


def downgrade() -> None:
    op.drop_index("ix_lineage_access_log_user_at", table_name="lineage_access_log")
    op.drop_index("ix_lineage_access_log_report_at", table_name="lineage_access_log")
    op.drop_index("ix_lineage_access_log_at", table_name="lineage_access_log")
    op.drop_table("lineage_access_log")
    op.drop_index("ux_lineage_api_keys_active_name", table_name="lineage_api_keys")
    op.drop_table("lineage_api_keys")
