"""The JSON API on SQLite and PostgreSQL: every endpoint, role and error, and the access log
rows each logged action writes (denied attempts included)."""

from __future__ import annotations

import hashlib
import io

import orjson
import pypdf
import pytest
from fastapi.testclient import TestClient

from tests.web.api_support import HOSTILE_NAME, Site, client, site

__all__ = ["client", "site"]  # fixtures


def test_search_filters_paginate_and_name_bad_fields(site: Site, client: TestClient) -> None:
    support = site.auth("support")
    everything = client.get("/api/v1/reports", headers=support).json()
    assert everything["total"] == 4 and len(everything["items"]) == 4
    first = site.row(site.report_ids[0])
    by_business = client.get(
        "/api/v1/reports", params={"business_id": first["business_id"]}, headers=support
    ).json()
    assert [r["report_generation_id"] for r in by_business["items"]] == [site.report_ids[0]]
    for name in ("inputs_sha256", "output_sha256"):
        found = client.get(
            "/api/v1/reports", params={name: first[name].upper()}, headers=support
        ).json()
        assert [r["report_generation_id"] for r in found["items"]] == [site.report_ids[0]]
    failed = client.get("/api/v1/reports", params={"status": "failed"}, headers=support).json()
    assert [r["report_generation_id"] for r in failed["items"]] == [site.failed_id]
    page = client.get("/api/v1/reports", params={"limit": 2, "offset": 2}, headers=support).json()
    assert page["total"] == 4 and len(page["items"]) == 2
    for params, field in (
        ({"business_id": "abc"}, "business_id"),
        ({"since": "yesterday"}, "since"),
        ({"inputs_sha256": "12"}, "inputs_sha256"),
        ({"caller_trace": "zz"}, "caller_trace"),
        ({"limit": 0}, "limit"),
    ):
        answer = client.get("/api/v1/reports", params=params, headers=support)
        assert answer.status_code == 422, params
        error = answer.json()["error"]
        assert error["code"] == "invalid_parameter" and error["field"] == field
        assert field in error["message"]


def test_one_report_trace_openlineage_stats_audit(site: Site, client: TestClient) -> None:
    support = site.auth("support")
    report = client.get(f"/api/v1/reports/{site.hostile_id}", headers=support).json()
    assert report["inputs"]["business_name"] == HOSTILE_NAME
    assert [s["name"] for s in report["steps"]][:2] == ["report.load_inputs", "report.render_html"]
    assert "inputs_snapshot" not in report and "span_tree" not in report
    for fmt, key in (("jaeger", "data"), ("otlp", "resourceSpans")):
        trace = client.get(
            f"/api/v1/reports/{site.hostile_id}/trace", params={"format": fmt}, headers=support
        )
        assert trace.status_code == 200 and key in trace.json()
        assert "attachment" in trace.headers["content-disposition"]
    bad = client.get(f"/api/v1/reports/{site.hostile_id}/trace?format=zipkin", headers=support)
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "format"
    events = client.get(f"/api/v1/reports/{site.hostile_id}/openlineage", headers=support).json()
    assert [e["eventType"] for e in events] == ["START", "COMPLETE"]
    stats = client.get("/api/v1/stats", headers=support).json()
    assert stats[0]["count"] == 4 and "report.render_html" in stats[0]["steps"]
    audit = client.get("/api/v1/audit", headers=support).json()
    assert audit["generations"] == 4 and audit["capture_rate"] == 1.0
    me = client.get("/api/v1/me", headers=support).json()
    assert me["role"] == "support" and "read_inputs" not in me["can"]


@pytest.mark.parametrize(
    "path",
    ["", "/inputs", "/pdf", "/trace", "/openlineage"],
)
def test_unknown_ids_are_404_and_malformed_ones_422(
    site: Site, client: TestClient, path: str
) -> None:
    admin = site.auth("admin")
    missing = client.get(
        f"/api/v1/reports/00000000-0000-0000-0000-000000000000{path}", headers=admin
    )
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "report_not_found"
    malformed = client.get(f"/api/v1/reports/{'x' * 40}{path}", headers=admin)
    assert malformed.status_code == 422 and malformed.json()["error"]["field"] == "report_id"


def test_every_endpoint_needs_a_key(site: Site, client: TestClient) -> None:
    rid = site.report_ids[0]
    for method, path in (
        ("GET", "/api/v1/reports"),
        ("GET", f"/api/v1/reports/{rid}"),
        ("GET", f"/api/v1/reports/{rid}/inputs"),
        ("GET", f"/api/v1/reports/{rid}/pdf"),
        ("GET", f"/api/v1/reports/{rid}/trace"),
        ("GET", f"/api/v1/reports/{rid}/openlineage"),
        ("POST", f"/api/v1/reports/{rid}/verify"),
        ("GET", "/api/v1/stats"),
        ("GET", "/api/v1/audit"),
        ("GET", "/api/v1/access-log"),
        ("GET", "/api/v1/keys"),
    ):
        answer = client.request(method, path)
        assert answer.status_code == 401, path
        assert answer.json()["error"]["code"] == "unauthenticated"
        assert answer.headers["www-authenticate"] == "Bearer"
    # Nothing was read; the refused reads of personal data are logged, anonymous as they were.
    logged = {(r["action"], r["user"], r["outcome"]) for r in site.access_rows()}
    assert logged <= {
        ("read_inputs", "(no key)", "denied"),
        ("download_pdf", "(no key)", "denied"),
        ("verify", "(no key)", "denied"),
        ("read_access_log", "(no key)", "denied"),
    }
    assert ("read_inputs", "(no key)", "denied") in logged


def test_roles_and_the_access_log_of_every_action(site: Site, client: TestClient) -> None:
    rid = site.report_ids[0]
    row = site.row(rid)
    support, auditor = site.auth("support"), site.auth("auditor")
    for path, action in (
        (f"/api/v1/reports/{rid}/inputs", "read_inputs"),
        ("/api/v1/access-log", "read_access_log"),
    ):
        refused = client.get(path, headers=support)
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
        assert site.access_rows(user="support")[0]["action"] == action
    refused = client.post(f"/api/v1/reports/{rid}/verify", headers=support)
    assert refused.status_code == 403
    assert client.get("/api/v1/keys", headers=auditor).status_code == 403

    inputs = client.get(f"/api/v1/reports/{rid}/inputs", headers=auditor)
    assert inputs.status_code == 200
    assert hashlib.sha256(inputs.content).hexdigest() == row["inputs_sha256"]
    assert inputs.headers["x-content-sha256"] == row["inputs_sha256"]
    assert orjson.loads(inputs.content)["business"]["id"] == row["business_id"]
    pdf = client.get(f"/api/v1/reports/{rid}/pdf", headers=support)
    assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
    assert hashlib.sha256(pdf.content).hexdigest() == row["output_sha256"]
    verified = client.post(f"/api/v1/reports/{rid}/verify", headers=auditor).json()
    results = {c["what"]: c["result"] for c in verified["checks"]}
    assert results["inputs snapshot sha256"] == results["html sha256"] == "matched"
    assert results["pdf sha256"] == "differed"  # made by the fast converter, replayed by WeasyPrint
    identified = client.post(
        "/api/v1/identify",
        files={"file": ("x.pdf", pdf.content, "application/pdf")},
        headers=support,
    ).json()
    assert [m["report_generation_id"] for m in identified["matches"]] == [rid]
    log = client.get("/api/v1/access-log", headers=auditor).json()
    seen = [(r["user"], r["action"], r["outcome"], r["report_id"]) for r in reversed(log["items"])]
    assert seen == [
        ("support", "read_inputs", "denied", rid),
        ("support", "read_access_log", "denied", None),
        ("support", "verify", "denied", rid),
        ("auditor", "read_inputs", "allowed", rid),
        ("support", "download_pdf", "allowed", rid),
        ("auditor", "verify", "allowed", rid),
        ("support", "identify", "allowed", rid),
        ("auditor", "read_access_log", "allowed", None),
    ]
    assert all(r["client"] == "127.0.0.1" and r["user_agent"] for r in log["items"])
    filtered = client.get(
        "/api/v1/access-log", params={"report_id": rid, "user": "auditor"}, headers=auditor
    ).json()
    assert {r["action"] for r in filtered["items"]} == {"read_inputs", "verify", "read_access_log"}


def test_missing_reads_are_logged_as_not_found(site: Site, client: TestClient) -> None:
    unknown = "00000000-0000-0000-0000-000000000000"
    client.get(f"/api/v1/reports/{unknown}/inputs", headers=site.auth("auditor"))
    failed = client.get(f"/api/v1/reports/{site.failed_id}/pdf", headers=site.auth("support"))
    assert failed.status_code == 404 and failed.json()["error"]["code"] == "pdf_not_recorded"
    rows = site.access_rows()
    assert [(r["action"], r["outcome"], r["detail"]) for r in reversed(rows)] == [
        ("read_inputs", "not_found", "report_not_found"),
        ("download_pdf", "not_found", "pdf_not_recorded"),
    ]


def test_uploads_are_checked_for_size_and_type(site: Site, client: TestClient) -> None:
    support = site.auth("support")

    def upload(data: bytes) -> tuple[int, str]:
        answer = client.post(
            "/api/v1/identify", files={"file": ("f.pdf", data, "application/pdf")}, headers=support
        )
        return answer.status_code, answer.json()["error"][
            "code"
        ] if answer.status_code != 200 else ""

    assert upload(b"<html>not a pdf</html>") == (415, "not_a_pdf")
    assert upload(b"") == (415, "not_a_pdf")
    assert upload(b"%PDF-1.7 unknown") == (200, "")
    with site.client(max_upload_bytes=2048) as small:
        too_big = small.post(
            "/api/v1/identify",
            files={"file": ("f.pdf", b"%PDF-" + b"0" * 4000, "application/pdf")},
            headers=support,
        )
        assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "too_large"
        huge = small.post(
            "/api/v1/identify",
            content=b"x" * 200_000,
            headers={**support, "Content-Type": "multipart/form-data; boundary=b"},
        )
        assert huge.status_code == 413 and huge.json()["error"]["code"] == "too_large"

        def chunks() -> object:
            yield b"--b\r\n"
            for _ in range(100):
                yield b"y" * 4096

        streamed = small.post(
            "/api/v1/identify",
            content=chunks(),  # type: ignore[arg-type]
            headers={**support, "Content-Type": "multipart/form-data; boundary=b"},
        )
        assert streamed.status_code == 413 and streamed.json()["error"]["code"] == "too_large"
    unknown = client.post(
        "/api/v1/identify",
        files={"file": ("f.pdf", b"%PDF-1.7 other", "application/pdf")},
        headers=support,
    ).json()
    assert unknown["matches"] == [] and unknown["generations_without_lineage"] == []
    assert site.access_rows()[0]["outcome"] == "not_found"


def test_admin_manages_keys_and_prunes_with_log_rows(site: Site, client: TestClient) -> None:
    admin = site.auth("admin")
    created = client.post(
        "/api/v1/keys", params={"name": "carol", "role": "support"}, headers=admin
    )
    assert created.status_code == 200
    secret = created.json()["secret"]
    assert (
        client.get("/api/v1/me", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    )
    assert "secret" not in str(client.get("/api/v1/keys", headers=admin).json())
    bad_role = client.post("/api/v1/keys", params={"name": "x", "role": "root"}, headers=admin)
    assert bad_role.status_code == 422 and bad_role.json()["error"]["field"] == "role"
    assert client.post("/api/v1/keys/carol/revoke", headers=admin).status_code == 200
    assert (
        client.get("/api/v1/me", headers={"Authorization": f"Bearer {secret}"}).status_code == 401
    )
    assert client.post("/api/v1/keys/nobody/revoke", headers=admin).status_code == 404
    pruned = client.post(
        "/api/v1/prune", params={"snapshots_older_than_days": 0, "dry_run": "true"}, headers=admin
    ).json()
    assert pruned["dry_run"] and pruned["rows"] == 4
    actions = [r["action"] for r in reversed(site.access_rows(user="admin"))]
    assert actions == ["key_create", "key_revoke", "prune"]


def test_a_report_run_twice_answers_with_its_completed_attempt(
    site: Site, client: TestClient
) -> None:
    """A queued report whose first worker died: two lineage rows, one generation."""
    from sqlalchemy import update

    from otel_lineage.delivery.recovery import abandoned_record
    from otel_lineage.delivery.schema import report_lineage
    from otel_lineage.delivery.store import LineageStore

    report_id = site.report_ids[0]
    completed = site.row(report_id)
    with site.engine.begin() as conn:
        conn.execute(
            update(report_lineage)
            .where(report_lineage.c.trace_id == completed["trace_id"])
            .values(attempt=2)
        )
    dead = abandoned_record("9" * 32, report_id, completed["started_at"].timestamp() - 60)
    LineageStore(site.engine).upsert([dead])
    answer = client.get(f"/api/v1/reports/{report_id}", headers=site.auth("support")).json()
    assert (answer["trace_id"], answer["attempt"]) == (completed["trace_id"], 2)
    (other,) = answer["other_attempts"]
    assert (other["trace_id"], other["status"], other["error_type"]) == (
        "9" * 32,
        "failed",
        "abandoned",
    )


def test_a_modified_copy_is_identified_by_the_report_it_names(
    site: Site, client: TestClient
) -> None:
    rid = site.report_ids[0]
    writer = pypdf.PdfWriter()  # another program's PDF that kept the report's Info entry
    writer.add_blank_page(width=595, height=842)
    writer.add_metadata({"/D6ReportId": rid, "/Producer": "an editor"})
    copy = io.BytesIO()
    writer.write(copy)
    answer = client.post(
        "/api/v1/identify",
        files={"file": ("copy.pdf", copy.getvalue(), "application/pdf")},
        headers=site.auth("support"),
    ).json()
    assert answer["matches"] == []
    assert answer["modified_copy_of"]["report_generation_id"] == rid
    assert "inputs_snapshot" not in answer["modified_copy_of"]
    assert answer["embedded"]["where"] == "document information"
    entry = site.access_rows()[0]
    assert (entry["action"], entry["outcome"], entry["report_id"]) == ("identify", "allowed", rid)
    assert entry["detail"].endswith(f"modified copy of {rid}")


def test_an_abandoned_report_has_no_trace_to_download(site: Site, client: TestClient) -> None:
    """Its process died before any span ended: 404 with the reason, not an empty trace."""
    import uuid

    from otel_lineage.delivery.recovery import abandoned_record
    from otel_lineage.delivery.store import LineageStore

    report_id = str(uuid.uuid4())
    LineageStore(site.engine).upsert([abandoned_record("7" * 32, report_id, 1_700_000_000.0)])
    for fmt in ("jaeger", "otlp"):
        answer = client.get(
            f"/api/v1/reports/{report_id}/trace",
            params={"format": fmt},
            headers=site.auth("support"),
        )
        assert answer.status_code == 404, answer.text
        error = answer.json()["error"]
        assert error["code"] == "trace_not_stored" and "abandoned" in error["message"]
