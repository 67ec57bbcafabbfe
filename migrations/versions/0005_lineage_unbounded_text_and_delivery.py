"""Lineage delivery hardening: unbounded text, the caller's trace, export flag, quarantine.

- ``report_lineage.caller_trace_id`` (indexed: "which report did this request make?") and
  ``report_lineage.exported`` (the trace was sampled and a span exporter was configured).
- Every bounded text column that receives values from the environment, the resource or span
  data becomes ``Text``: on PostgreSQL a 201-character service name failed every record and
  the counters row (``varchar(200)``).
- ``lineage_counters.quarantined``: outbox records and files moved to quarantine.

Downgrade drops the new columns (their values are lost) and bounds the text columns again,
which fails on PostgreSQL if a stored value is longer than the old bound (nothing is cut).

Revision ID: 0005_lineage_delivery
Revises: 0004_lineage_query_indexes
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_lineage_delivery"
down_revision = "0004_lineage_query_indexes"
branch_labels = None
depends_on = None

#: table -> (column, bound before this revision, nullable)
_BOUNDED = {
    "report_lineage": [
        ("template_name", 100, True),
        ("template_version", 50, True),
        ("error_type", 100, True),
        ("service_name", 200, True),
        ("service_version", 100, True),
        ("status", 20, False),
        ("inputs_codec", 16, True),
        ("span_tree_codec", 16, True),
    ],
    "lineage_counters": [("service_name", 200, True), ("host", 255, True)],
}


def upgrade() -> None:
    for table, columns in _BOUNDED.items():
        with op.batch_alter_table(table) as batch:
            for name, bound, nullable in columns:
                batch.alter_column(
                    name,
                    existing_type=sa.String(bound),
                    type_=sa.Text(),
                    existing_nullable=nullable,
                )
            if table == "report_lineage":
                batch.add_column(sa.Column("caller_trace_id", sa.String(32)))
                batch.add_column(sa.Column("exported", sa.Boolean()))
                batch.create_index("ix_report_lineage_caller_trace_id", ["caller_trace_id"])
            else:
                batch.add_column(
                    sa.Column("quarantined", sa.BigInteger(), nullable=False, server_default="0")
                )


def downgrade() -> None:
    for table, columns in _BOUNDED.items():
        with op.batch_alter_table(table) as batch:
            if table == "report_lineage":
                batch.drop_index("ix_report_lineage_caller_trace_id")
                batch.drop_column("exported")
                batch.drop_column("caller_trace_id")
            else:
                batch.drop_column("quarantined")
            for name, bound, nullable in columns:
                batch.alter_column(
                    name,
                    existing_type=sa.Text(),
                    type_=sa.String(bound),
                    existing_nullable=nullable,
                )
