"""Deterministic demo data: businesses, website assessments and findings of varied sizes.

The same seed always produces the same rows, so demo reports (and their lineage hashes) are
reproducible across machines. Sizes range from a handful of findings to reports of six pages and
more.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from d6_reports.models import Business, Finding, WebsiteAssessment

_NAMES = (
    "Harbor",
    "Maple",
    "Summit",
    "Juniper",
    "Copper",
    "Lantern",
    "Willow",
    "Granite",
    "Cedar",
    "Bluebird",
    "Orchard",
    "Meridian",
    "Northwind",
    "Riverside",
    "Silverline",
    "Foxglove",
)
_KINDS = (
    ("Dental Care", "Dentist"),
    ("Bakery", "Food & Drink"),
    ("Plumbing", "Home Services"),
    ("Law Group", "Legal"),
    ("Fitness Studio", "Health & Fitness"),
    ("Auto Repair", "Automotive"),
    ("Veterinary Clinic", "Pets"),
    ("Roofing", "Home Services"),
    ("Coffee House", "Food & Drink"),
    ("Accounting", "Professional Services"),
)
_CITIES = (
    ("Portland", "US"),
    ("Leeds", "GB"),
    ("Lyon", "FR"),
    ("Austin", "US"),
    ("Dublin", "IE"),
    ("Toronto", "CA"),
    ("Brisbane", "AU"),
    ("Denver", "US"),
)
_CATEGORIES = ("performance", "accessibility", "seo", "best_practices", "security", "mobile")
_SEVERITIES = ("critical", "high", "medium", "low")
_LEVELS = ("high", "medium", "low")
_FINDINGS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "performance": (
        (
            "Render-blocking scripts in <head>",
            "Three synchronous scripts delay first paint.",
            "GET /js/jquery.min.js blocks for 420 ms; GET /js/slider.js blocks for 310 ms",
        ),
        (
            "Uncompressed hero image",
            "The hero image is a 3.4 MB PNG served at 4000 px wide.",
            "hero.png: 3,412 KB, displayed at 1280x600",
        ),
        (
            "No HTTP caching on static assets",
            "Stylesheets and scripts are sent with no-store.",
            "Cache-Control: no-store on 14 of 14 static responses",
        ),
    ),
    "accessibility": (
        (
            "Images without alternative text",
            "Screen readers announce file names instead.",
            "12 <img> elements without alt, e.g. IMG_2231.jpg",
        ),
        (
            "Low contrast body text",
            "Grey text on white fails WCAG AA.",
            "#9a9a9a on #ffffff: contrast ratio 2.8:1 (needs 4.5:1)",
        ),
        (
            "Form fields without labels",
            "The contact form relies on placeholders only.",
            "input[name=email], input[name=phone] have no <label>",
        ),
    ),
    "seo": (
        (
            "Missing meta description",
            "Search engines invent a snippet from page text.",
            "<meta name=description> absent on 9 of 11 pages",
        ),
        (
            "Duplicate page titles",
            "Every page is titled 'Home'.",
            "11 pages share <title>Home</title>",
        ),
        (
            "No sitemap.xml",
            "Crawlers must discover pages by links alone.",
            "GET /sitemap.xml -> 404",
        ),
    ),
    "best_practices": (
        (
            "Console errors on load",
            "A broken widget throws on every page.",
            "Uncaught TypeError: Cannot read properties of undefined (reading 'init')",
        ),
        (
            "Deprecated library version",
            "jQuery 1.8.3 has known vulnerabilities.",
            "jquery.min.js v1.8.3 (2012)",
        ),
    ),
    "security": (
        (
            "Mixed content",
            "The HTTPS page loads images over plain HTTP.",
            "http://cdn.example.net/img/logo.png loaded from https:// page",
        ),
        (
            "Missing security headers",
            "No CSP, HSTS or X-Content-Type-Options.",
            "Strict-Transport-Security absent; Content-Security-Policy absent",
        ),
        (
            "Outdated TLS configuration",
            "TLS 1.0 is still accepted.",
            "Handshake with TLS 1.0 succeeded",
        ),
    ),
    "mobile": (
        (
            "Tap targets too small",
            "Navigation links are 18 px tall on phones.",
            "nav a: 18x64 px, 4 px apart (needs 48x48 px)",
        ),
        (
            "Viewport not set",
            "The page renders at desktop width on phones.",
            "<meta name=viewport> absent",
        ),
    ),
}


def seed_demo(session: Session, *, count: int = 12, seed: int = 6) -> list[int]:
    """Insert ``count`` businesses with one assessment each; return their ids.

    Idempotent per database: when businesses already exist, nothing is added and the existing
    ids are returned, so ``make demo`` can run again without duplicating data.
    """
    existing = session.scalar(select(func.count(Business.id))) or 0
    if existing:
        return list(session.scalars(select(Business.id).order_by(Business.id)))
    rng = random.Random(seed)
    base_day = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
    ids: list[int] = []
    for index in range(count):
        business = _business(rng, index)
        session.add(business)
        session.flush()
        # Sizes cycle from small to large so every demo run covers 1-page to 6+-page reports.
        n_findings = (3, 6, 10, 18, 28, 40)[index % 6]
        business.assessments.append(
            _assessment(rng, business, base_day + timedelta(days=index), n_findings)
        )
        ids.append(business.id)
    session.commit()
    return ids


def _business(rng: random.Random, index: int) -> Business:
    stem = _NAMES[index % len(_NAMES)]
    kind, industry = _KINDS[index % len(_KINDS)]
    city, country = _CITIES[index % len(_CITIES)]
    slug = f"{stem}{kind.split()[0]}".lower()
    return Business(
        name=f"{stem} {kind}",
        website=f"https://www.{slug}.example",
        phone=f"+1 555 {rng.randint(100, 999)} {rng.randint(1000, 9999)}",
        email=f"hello@{slug}.example",
        address=f"{rng.randint(1, 990)} {rng.choice(['Main', 'Oak', 'High', 'Mill'])} Street",
        city=city,
        country=country,
        industry=industry,
        rating=round(rng.uniform(3.1, 4.9), 1),
        review_count=rng.randint(4, 640),
        created_at=datetime(2026, 10, 1, tzinfo=UTC),
    )


def _assessment(
    rng: random.Random, business: Business, when: datetime, n_findings: int
) -> WebsiteAssessment:
    scores = {c: rng.randint(18, 98) for c in _CATEGORIES}
    assessment = WebsiteAssessment(
        assessed_at=when,
        url=business.website,
        lcp_ms=rng.randint(1200, 7800),
        inp_ms=rng.randint(90, 650),
        cls=round(rng.uniform(0.01, 0.45), 3),
        fcp_ms=rng.randint(700, 4200),
        ttfb_ms=rng.randint(80, 1900),
        extra={"pages_crawled": rng.randint(5, 120), "tool": "d6-audit 3.2"},
        **scores,
    )
    for number in range(n_findings):
        category = rng.choice(_CATEGORIES)
        title, description, evidence = rng.choice(_FINDINGS[category])
        assessment.findings.append(
            Finding(
                category=category,
                severity=rng.choices(_SEVERITIES, weights=(1, 3, 4, 3))[0],
                title=title if number < len(_FINDINGS[category]) else f"{title} ({number + 1})",
                description=description,
                impact=rng.choice(_LEVELS),
                effort=rng.choice(_LEVELS),
                evidence=evidence,
            )
        )
    return assessment
