"""Report service tables: business, website_assessment, finding, report_generation.

Revision ID: 0001_report_service
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_report_service"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "business",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("website", sa.String(500), nullable=False),
        sa.Column("phone", sa.String(50)),
        sa.Column("email", sa.String(200)),
        sa.Column("address", sa.String(300)),
        sa.Column("city", sa.String(100)),
        sa.Column("country", sa.String(2)),
        sa.Column("industry", sa.String(100)),
        sa.Column("rating", sa.Float),
        sa.Column("review_count", sa.Integer),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "website_assessment",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("business_id", sa.Integer, sa.ForeignKey("business.id"), nullable=False),
        sa.Column("assessed_at", TS, nullable=False),
        sa.Column("url", sa.String(500), nullable=False),
        *(
            sa.Column(name, sa.Integer, nullable=False)
            for name in (
                "performance",
                "accessibility",
                "seo",
                "best_practices",
                "security",
                "mobile",
            )
        ),
        sa.Column("lcp_ms", sa.Integer),
        sa.Column("inp_ms", sa.Integer),
        sa.Column("cls", sa.Float),
        sa.Column("fcp_ms", sa.Integer),
        sa.Column("ttfb_ms", sa.Integer),
        sa.Column("extra", sa.JSON),
    )
    op.create_index("ix_website_assessment_business_id", "website_assessment", ["business_id"])
    op.create_table(
        "finding",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "assessment_id", sa.Integer, sa.ForeignKey("website_assessment.id"), nullable=False
        ),
        sa.Column("category", sa.String(50), nullable=False),
        sa.Column("severity", sa.String(20), nullable=False),
        sa.Column("title", sa.String(300), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("impact", sa.String(20), nullable=False),
        sa.Column("effort", sa.String(20), nullable=False),
        sa.Column("evidence", sa.Text),
    )
    op.create_index("ix_finding_assessment_id", "finding", ["assessment_id"])
    op.create_table(
        "report_generation",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("business_id", sa.Integer, nullable=False),
        sa.Column("template_name", sa.String(100), nullable=False),
        sa.Column("template_version", sa.String(50)),
        sa.Column("template_sha256", sa.String(64)),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("requested_at", TS, nullable=False),
        sa.Column("started_at", TS),
        sa.Column("completed_at", TS),
        sa.Column("duration_ms", sa.Float),
        sa.Column("pdf_path", sa.String(1000)),
        sa.Column("pdf_sha256", sa.String(64)),
        sa.Column("pdf_bytes", sa.Integer),
        sa.Column("pdf_pages", sa.Integer),
        sa.Column("error_type", sa.String(100)),
        sa.Column("error_message", sa.Text),
        sa.Column("trace_id", sa.String(32)),
        sa.Column("span_id", sa.String(16)),
    )
    op.create_index("ix_report_generation_business_id", "report_generation", ["business_id"])
    op.create_index("ix_report_generation_requested_at", "report_generation", ["requested_at"])
    op.create_index("ix_report_generation_pdf_sha256", "report_generation", ["pdf_sha256"])
    op.create_index("ix_report_generation_trace_id", "report_generation", ["trace_id"])


def downgrade() -> None:
    op.drop_table("report_generation")
    op.drop_table("finding")
    op.drop_table("website_assessment")
    op.drop_table("business")
