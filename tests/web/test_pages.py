"""The pages (contract E of the web brief) as a browser without JavaScript gets them, on
SQLite and PostgreSQL: ids, roles, forms that work as plain HTML, hostile data as text."""

from __future__ import annotations

import io
import re

import pypdf
from fastapi.testclient import TestClient
from sqlalchemy import update

from d6_reports.templates import TemplateRegistry
from otel_lineage.delivery.schema import report_lineage
from otel_lineage.web.security import CSRF_COOKIE
from tests.web.api_support import HOSTILE_NAME, Site, client, site

LATEST_SUMMARY = TemplateRegistry().resolve("summary").version

__all__ = ["client", "site"]  # fixtures


def signed_in(site: Site, role: str) -> TestClient:
    browser = site.client()
    browser.get("/login")
    token = browser.cookies.get(CSRF_COOKIE)
    answer = browser.post(
        "/login", data={"api_key": site.keys[role], "csrf_token": token}, follow_redirects=False
    )
    assert answer.status_code == 303
    return browser


def _token(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found
    return found.group(1)


def test_login_page_and_anonymous_redirects(client: TestClient) -> None:
    page = client.get("/login").text
    for fragment in (
        '<form id="login-form" method="post" action="/login">',
        '<input id="api-key" name="api_key" type="password"',
        '<button id="sign-in"',
    ):
        assert fragment in page
    for path in ("/", "/stats", "/audit", "/access-log", "/reports/abc"):
        answer = client.get(path, follow_redirects=False)
        assert answer.status_code == 303 and answer.headers["location"] == "/login", path


def test_search_page_filters_without_javascript(site: Site) -> None:
    with signed_in(site, "support") as browser:
        page = browser.get("/").text
        assert '<form id="search-form" method="get"' in page
        for name in ("business_id", "template", "version", "status", "since", "until"):
            assert f'name="{name}"' in page
        assert page.count('<tr class="report-row">') == 4
        for fragment in (
            '<form id="identify-form" method="post" action="/identify" '
            'enctype="multipart/form-data">',
            '<input id="identify-file" name="file" type="file"',
            'id="identify-submit"',
        ):
            assert fragment in page
        business = site.row(site.hostile_id)["business_id"]
        empty_fields = {
            "business_id": business,
            "template": "",
            "version": "",
            "status": "",
            "since": "",
            "until": "",
        }
        filtered = browser.get("/", params=empty_fields).text
        assert re.findall(r'class="report-link" href="/reports/([^"]+)"', filtered) == [
            site.hostile_id
        ]
        bad = browser.get("/", params={"business_id": "twelve"})
        assert bad.status_code == 422 and "business_id" in bad.text


def test_report_page_for_support_and_auditor(site: Site) -> None:
    rid = site.hostile_id
    with signed_in(site, "support") as support:
        page = support.get(f"/reports/{rid}").text
        assert '<span id="business-name">&lt;img src=x onerror=alert(1)&gt;</span>' in page
        assert HOSTILE_NAME not in page
        assert '<svg id="waterfall"' in page and page.count('class="step step-') >= 4
        assert f'id="template-version">{LATEST_SUMMARY}<' in page
        assert 'id="download-pdf"' in page and 'id="download-trace"' in page
        assert 'id="download-inputs"' not in page and 'id="verify-form"' not in page
        assert 'id="open-jaeger"' not in page  # not exported, no Jaeger URL
        assert support.get(f"/api/v1/reports/{rid}/inputs").status_code == 403
        assert support.get(f"/api/v1/reports/{rid}/pdf").status_code == 200
        assert support.get("/access-log").status_code == 403
    with signed_in(site, "auditor") as auditor:
        page = auditor.get(f"/reports/{rid}").text
        assert 'id="download-inputs"' in page and '<form id="verify-form"' in page
        assert 'id="verify-button"' in page
        result = auditor.post(f"/reports/{rid}/verify", data={"csrf_token": _token(page)})
        assert result.status_code == 200
        checks = re.findall(r'<li class="digest-check digest-(\w+)">', result.text)
        assert checks == ["matched", "matched", "matched", "differed"]
        assert 'id="verify-result"' in result.text
        assert auditor.get(f"/api/v1/reports/{rid}/inputs").status_code == 200
        log = auditor.get("/access-log").text
        assert '<table id="access-log">' in log
        actions = re.findall(
            r'<tr class="access-row" data-action="(\w+)" data-outcome="(\w+)"', log
        )
        assert actions[:3] == [
            ("read_access_log", "allowed"),
            ("read_inputs", "allowed"),
            ("verify", "allowed"),
        ]
        assert ("read_inputs", "denied") in actions


def test_identify_page_answers_in_identify_result(site: Site) -> None:
    with signed_in(site, "support") as browser:
        token = _token(browser.get("/").text)
        pdf = browser.get(f"/api/v1/reports/{site.report_ids[0]}/pdf").content
        found = browser.post(
            "/identify",
            data={"csrf_token": token},
            files={"file": ("sent.pdf", pdf, "application/pdf")},
        )
        assert 'id="identify-result"' in found.text
        assert f'href="/reports/{site.report_ids[0]}"' in found.text
        wrong = browser.post(
            "/identify",
            data={"csrf_token": token},
            files={"file": ("sent.pdf", b"GIF89a", "image/gif")},
        )
        assert wrong.status_code == 415 and 'id="identify-result"' in wrong.text
        writer = pypdf.PdfWriter()  # a modified copy that kept the report's Info entry
        writer.add_blank_page(width=595, height=842)
        writer.add_metadata({"/D6ReportId": site.report_ids[0]})
        copy = io.BytesIO()
        writer.write(copy)
        modified = browser.post(
            "/identify",
            data={"csrf_token": token},
            files={"file": ("copy.pdf", copy.getvalue(), "application/pdf")},
        )
        assert 'class="identify-modified"' in modified.text
        assert f'href="/reports/{site.report_ids[0]}"' in modified.text
        assert "document information" in modified.text


def test_stats_audit_docs_and_the_jaeger_link(site: Site) -> None:
    with site.engine.begin() as conn:
        conn.execute(update(report_lineage).values(exported=True))
    with site.client(jaeger_url="http://jaeger.example:16686") as browser:
        admin = {"Authorization": f"Bearer {site.keys['admin']}"}
        page = browser.get(f"/reports/{site.report_ids[0]}", headers=admin).text
        trace_id = site.row(site.report_ids[0])["trace_id"]
        assert (
            f'id="open-jaeger" class="button" href="http://jaeger.example:16686/trace/{trace_id}"'
            in page
        )
        stats = browser.get("/stats", headers=admin)
        assert stats.status_code == 200 and '<svg id="stats-chart"' in stats.text
        audit = browser.get("/audit", params={"period": "all"}, headers=admin)
        assert "Capture rate 100.00%" in audit.text
        assert browser.get("/audit", params={"period": "1y"}, headers=admin).status_code == 422
        docs = browser.get("/docs").text
        assert "/api/v1/reports/{report_id}/inputs" in docs


def test_control_characters_are_shown_not_obeyed(site: Site, client: TestClient) -> None:
    with site.engine.begin() as conn:
        conn.execute(
            update(report_lineage)
            .where(report_lineage.c.report_generation_id == site.failed_id)
            .values(error_message="evil\u202egnp.exe {{ 7*7 }} <script>alert(1)</script>")
        )
    page = client.get(f"/reports/{site.failed_id}", headers=site.auth("support")).text
    assert "evil<U+202E>gnp.exe" not in page  # escaped as text
    assert "evil&lt;U+202E&gt;gnp.exe {{ 7*7 }} &lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "\u202e" not in page and "<script>alert" not in page
    assert "<script" not in page.replace('<script src="/static/app.js" defer></script>', "")


def test_an_abandoned_report_offers_no_trace_download(site: Site) -> None:
    """Its process died before any span ended: the page does not offer a trace it lacks."""
    import uuid

    from otel_lineage.delivery.recovery import abandoned_record
    from otel_lineage.delivery.store import LineageStore

    report_id = str(uuid.uuid4())
    LineageStore(site.engine).upsert([abandoned_record("6" * 32, report_id, 1_700_000_000.0)])
    with signed_in(site, "support") as support:
        abandoned = support.get(f"/reports/{report_id}")
        assert abandoned.status_code == 200, abandoned.text
        assert 'id="download-trace"' not in abandoned.text
        assert 'id="download-trace"' in support.get(f"/reports/{site.hostile_id}").text
