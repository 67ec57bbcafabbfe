"""Protected snapshots: stored once per business and content, optionally encrypted.

- ``lineage_snapshots``: one input snapshot per (business_id, inputs_sha256), zstd, encrypted
  with AES-256-GCM under the business's data key when a key file is configured.
- ``lineage_business_keys``: one data key per business, wrapped by a master key; ``forget``
  leaves a tombstone. At most one live key per business (a partial unique index, so two
  writers creating a business's first key cannot both win).
- ``report_lineage.inputs_snapshot_shared``: the row's snapshot is in ``lineage_snapshots``.

Rows written before this revision keep their snapshot inline and are read as before: nothing
is moved. Downgrade copies plaintext shared snapshots back inline (so every row readable now is
readable after, except rows erased by ``forget``), and refuses while any snapshot is
encrypted: revision 0009 cannot hold one, and decrypting belongs to no migration.

Revision ID: 0010_protected_snapshots
Revises: 0009_lineage_seals
Create Date: 2026-12-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_protected_snapshots"
down_revision = "0009_lineage_seals"
branch_labels = None
depends_on = None

_LIVE = sa.text("destroyed_at IS NULL")
_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "lineage_snapshots",
        sa.Column("business_id", sa.Integer(), primary_key=True),
        sa.Column("inputs_sha256", sa.String(64), primary_key=True),
        sa.Column("codec", sa.Text(), nullable=False),
        sa.Column("key_id", sa.String(36)),
        sa.Column("nonce", sa.LargeBinary()),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
    )
    op.create_table(
        "lineage_business_keys",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("business_id", sa.Integer(), nullable=False),
        sa.Column("master_key_id", sa.Text()),
        sa.Column("wrapped_key", sa.LargeBinary()),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("rotated_at", _TS),
        sa.Column("destroyed_at", _TS),
    )
    op.create_index(
        "ux_lineage_business_keys_live",
        "lineage_business_keys",
        ["business_id"],
        unique=True,
        sqlite_where=_LIVE,
        postgresql_where=_LIVE,
    )
    op.add_column("report_lineage", sa.Column("inputs_snapshot_shared", sa.Boolean()))


def downgrade() -> None:
    encrypted = op.get_bind().scalar(
        sa.text("SELECT count(*) FROM lineage_snapshots WHERE key_id IS NOT NULL")
    )
    if encrypted:
        raise RuntimeError(
            f"{encrypted} input snapshots are encrypted; revision 0009 stores snapshots in "
            "clear only: downgrading would lose them"
        )
    # A row written before its business was erased stays erased, even when a later report
    # stored the same content again.
    op.execute(
        "UPDATE report_lineage SET inputs_snapshot = (SELECT s.data FROM lineage_snapshots s "
        "WHERE s.business_id = report_lineage.business_id "
        "AND s.inputs_sha256 = report_lineage.inputs_sha256) "
        "WHERE inputs_snapshot_shared = true AND inputs_snapshot IS NULL AND NOT EXISTS ("
        "SELECT 1 FROM lineage_business_keys k WHERE k.business_id = report_lineage.business_id "
        "AND k.destroyed_at > report_lineage.created_at)"
    )
    with op.batch_alter_table("report_lineage") as batch:
        batch.drop_column("inputs_snapshot_shared")
    op.drop_index("ux_lineage_business_keys_live", "lineage_business_keys")
    op.drop_table("lineage_business_keys")
    op.drop_table("lineage_snapshots")
