"""The report service's tables: businesses, their website assessments, and report generations.

``ReportGeneration`` is the service's own record of every call; its ``trace_id``/``span_id``
columns are left empty here and stamped by the lineage plugin's listener, which is what joins a
PDF to the trace (and lineage row) that produced it.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Business(Base):
    """A lead the audit is about."""

    __tablename__ = "business"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    website: Mapped[str] = mapped_column(String(500))
    phone: Mapped[str | None] = mapped_column(String(50))
    email: Mapped[str | None] = mapped_column(String(200))
    address: Mapped[str | None] = mapped_column(String(300))
    city: Mapped[str | None] = mapped_column(String(100))
    country: Mapped[str | None] = mapped_column(String(2))
    industry: Mapped[str | None] = mapped_column(String(100))
    rating: Mapped[float | None] = mapped_column(Float)
    review_count: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    assessments: Mapped[list[WebsiteAssessment]] = relationship(
        back_populates="business", order_by="WebsiteAssessment.assessed_at"
    )


class WebsiteAssessment(Base):
    """One audit of a business's website: category scores, core web vitals and findings."""

    __tablename__ = "website_assessment"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    business_id: Mapped[int] = mapped_column(ForeignKey("business.id"), index=True)
    assessed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    url: Mapped[str] = mapped_column(String(500))
    performance: Mapped[int] = mapped_column(Integer)
    accessibility: Mapped[int] = mapped_column(Integer)
    seo: Mapped[int] = mapped_column(Integer)
    best_practices: Mapped[int] = mapped_column(Integer)
    security: Mapped[int] = mapped_column(Integer)
    mobile: Mapped[int] = mapped_column(Integer)
    # Core web vitals (field data, 75th percentile).
    lcp_ms: Mapped[int | None] = mapped_column(Integer)
    inp_ms: Mapped[int | None] = mapped_column(Integer)
    cls: Mapped[float | None] = mapped_column(Float)
    fcp_ms: Mapped[int | None] = mapped_column(Integer)
    ttfb_ms: Mapped[int | None] = mapped_column(Integer)
    extra: Mapped[dict[str, object] | None] = mapped_column(JSON)

    business: Mapped[Business] = relationship(back_populates="assessments")
    findings: Mapped[list[Finding]] = relationship(
        back_populates="assessment", order_by="Finding.id", cascade="all, delete-orphan"
    )


class Finding(Base):
    """One problem found on the website, with what fixing it costs and brings."""

    __tablename__ = "finding"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    assessment_id: Mapped[int] = mapped_column(ForeignKey("website_assessment.id"), index=True)
    category: Mapped[str] = mapped_column(String(50))
    severity: Mapped[str] = mapped_column(String(20))
    title: Mapped[str] = mapped_column(String(300))
    description: Mapped[str] = mapped_column(Text)
    impact: Mapped[str] = mapped_column(String(20))
    effort: Mapped[str] = mapped_column(String(20))
    evidence: Mapped[str | None] = mapped_column(Text)

    assessment: Mapped[WebsiteAssessment] = relationship(back_populates="findings")


class GenerationStatus(enum.StrEnum):
    PENDING = "pending"
    GENERATING = "generating"
    COMPLETED = "completed"
    FAILED = "failed"


class ReportGeneration(Base):
    """One call of ``generate_report``: what was asked, what came out, or why it failed.

    ``business_id`` is deliberately not a foreign key: a request for an unknown business must
    still leave its (failed) row.
    """

    __tablename__ = "report_generation"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    business_id: Mapped[int] = mapped_column(Integer, index=True)
    template_name: Mapped[str] = mapped_column(String(100))
    template_version: Mapped[str | None] = mapped_column(String(50))
    template_sha256: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(20), default=GenerationStatus.PENDING.value)
    #: Attempts that claimed this generation: 0 while queued, 1 for a direct call, more when
    #: a queued task was redelivered (its worker died) or retried (the database was down).
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    requested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    duration_ms: Mapped[float | None] = mapped_column(Float)
    pdf_path: Mapped[str | None] = mapped_column(String(1000))
    pdf_sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    pdf_bytes: Mapped[int | None] = mapped_column(Integer)
    pdf_pages: Mapped[int | None] = mapped_column(Integer)
    error_type: Mapped[str | None] = mapped_column(String(100))
    error_message: Mapped[str | None] = mapped_column(Text)
    trace_id: Mapped[str | None] = mapped_column(String(32), index=True)
    span_id: Mapped[str | None] = mapped_column(String(16))
