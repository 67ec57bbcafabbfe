"""Lineage plugin tables: report_lineage and lineage_counters.

Revision ID: 0002_report_lineage
Revises: 0001_report_service
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_report_lineage"
down_revision = "0001_report_service"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
BIGID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "report_lineage",
        sa.Column("id", BIGID, primary_key=True),
        sa.Column("report_generation_id", sa.String(36), unique=True),
        sa.Column("trace_id", sa.String(32), nullable=False, unique=True),
        sa.Column("root_span_id", sa.String(16), nullable=False),
        sa.Column("business_id", sa.Integer),
        sa.Column("template_name", sa.String(100)),
        sa.Column("template_version", sa.String(50)),
        sa.Column("template_sha256", sa.String(64)),
        sa.Column("inputs_sha256", sa.String(64)),
        sa.Column("inputs_bytes", sa.Integer),
        sa.Column("inputs_snapshot", sa.LargeBinary),
        sa.Column("inputs_codec", sa.String(16)),
        sa.Column("html_sha256", sa.String(64)),
        sa.Column("output_sha256", sa.String(64)),
        sa.Column("output_bytes", sa.Integer),
        sa.Column("output_pages", sa.Integer),
        sa.Column("output_uri", sa.Text),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("error_type", sa.String(100)),
        sa.Column("error_message", sa.Text),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("ended_at", TS),
        sa.Column("duration_ms", sa.Float),
        sa.Column("steps", sa.JSON, nullable=False),
        sa.Column("input_tables", sa.JSON, nullable=False),
        sa.Column("span_count", sa.Integer, nullable=False),
        sa.Column("span_tree", sa.LargeBinary),
        sa.Column("span_tree_codec", sa.String(16)),
        sa.Column("sampled", sa.Boolean, nullable=False),
        sa.Column("complete", sa.Boolean, nullable=False),
        sa.Column("incomplete_reasons", sa.JSON, nullable=False),
        sa.Column("service_name", sa.String(200)),
        sa.Column("service_version", sa.String(100)),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index("ix_report_lineage_business_id", "report_lineage", ["business_id"])
    op.create_index(
        "ix_report_lineage_template", "report_lineage", ["template_name", "template_version"]
    )
    op.create_index("ix_report_lineage_inputs_sha256", "report_lineage", ["inputs_sha256"])
    op.create_index("ix_report_lineage_output_sha256", "report_lineage", ["output_sha256"])
    op.create_index("ix_report_lineage_started_at", "report_lineage", ["started_at"])
    op.create_table(
        "lineage_counters",
        sa.Column("instance_id", sa.String(36), primary_key=True),
        sa.Column("service_name", sa.String(200)),
        sa.Column("host", sa.String(255)),
        sa.Column("pid", sa.Integer),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        *(
            sa.Column(name, sa.BigInteger, nullable=False)
            for name in (
                "folded",
                "written",
                "dropped",
                "evicted",
                "late",
                "incomplete",
                "errors",
                "pending",
            )
        ),
    )


def downgrade() -> None:
    op.drop_table("lineage_counters")
    op.drop_table("report_lineage")
