"""Indexes shaped for the lineage questions: "this business's reports, newest first" and "which
reports used template version X before date D" (equality columns first, then time, so both are
index range scans read in order, whatever the version's share of the table).

Revision ID: 0004_lineage_query_indexes
Revises: 0003_lineage_pruned_at
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0004_lineage_query_indexes"
down_revision = "0003_lineage_pruned_at"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_report_lineage_business_id", table_name="report_lineage")
    op.drop_index("ix_report_lineage_template", table_name="report_lineage")
    op.create_index(
        "ix_report_lineage_business_started", "report_lineage", ["business_id", "started_at"]
    )
    op.create_index(
        "ix_report_lineage_template_started",
        "report_lineage",
        ["template_name", "template_version", "started_at"],
    )


def downgrade() -> None:
    op.drop_index("ix_report_lineage_template_started", table_name="report_lineage")
    op.drop_index("ix_report_lineage_business_started", table_name="report_lineage")
    op.create_index(
        "ix_report_lineage_template", "report_lineage", ["template_name", "template_version"]
    )
    op.create_index("ix_report_lineage_business_id", "report_lineage", ["business_id"])
