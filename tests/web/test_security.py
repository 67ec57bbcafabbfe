"""Keys, sessions, CSRF, rate limiting, trusted proxies, no-auth, headers, and the PDF path
checks, through the real app on SQLite and PostgreSQL."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from otel_lineage.delivery.schema import report_lineage
from otel_lineage.settings import LineageConfigError
from otel_lineage.web import WebSettings
from otel_lineage.web.security import CONTENT_SECURITY_POLICY, CSRF_COOKIE
from tests.web.api_support import SECRET, Site, client, site

__all__ = ["client", "site"]  # fixtures


def _csrf(client: TestClient) -> str:
    client.get("/login")
    token = client.cookies.get(CSRF_COOKIE)
    assert token
    return token


def sign_in(client: TestClient, key: str) -> int:
    answer = client.post(
        "/login", data={"api_key": key, "csrf_token": _csrf(client)}, follow_redirects=False
    )
    return answer.status_code


@pytest.mark.parametrize("which", ["revoked", "expired"])
def test_revoked_and_expired_keys_are_refused(site: Site, client: TestClient, which: str) -> None:
    answer = client.get("/api/v1/reports", headers=site.auth(which))
    assert answer.status_code == 401 and answer.json()["error"]["code"] == "invalid_key"
    assert sign_in(client, site.keys[which]) == 401
    garbage = client.get("/api/v1/reports", headers={"Authorization": "Bearer nonsense"})
    assert garbage.status_code == 401
    basic = client.get("/api/v1/reports", headers={"Authorization": "Basic dXNlcjpwdw=="})
    assert basic.status_code == 401


def test_sign_in_sets_a_strict_cookie_and_revocation_ends_the_session(site: Site) -> None:
    with site.client() as browser:
        response = browser.post(
            "/login",
            data={"api_key": site.keys["support"], "csrf_token": _csrf(browser)},
            follow_redirects=False,
        )
        assert response.status_code == 303 and response.headers["location"] == "/"
        cookie = response.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie
        assert browser.get("/api/v1/me").json()["via"] == "session"
        assert site.access_rows()[0]["action"] == "sign_in"
        from otel_lineage.access.keys import revoke_key

        # Sign-out voids the cookie on the server: a copy kept elsewhere stops working.
        copied = browser.cookies.get("lineage_session")
        browser.post("/logout", data={"csrf_token": _csrf(browser)}, follow_redirects=False)
        with site.client() as thief:
            thief.cookies.set("lineage_session", str(copied))
            assert thief.get("/api/v1/me").status_code == 401
        browser.post(
            "/login",
            data={"api_key": site.keys["support"], "csrf_token": _csrf(browser)},
            follow_redirects=False,
        )
        assert browser.get("/api/v1/me").status_code == 200  # a new session works
        revoke_key(site.engine, "support")
        assert browser.get("/api/v1/me").status_code == 401
        assert browser.get("/", follow_redirects=False).headers["location"] == "/login"


def test_the_session_cookie_is_secure_behind_an_https_proxy(site: Site) -> None:
    proxy = (ipaddress.ip_network("127.0.0.1/32"),)
    with site.client(trusted_proxies=proxy) as browser:
        token = _csrf(browser)
        response = browser.post(
            "/login",
            data={"api_key": site.keys["support"], "csrf_token": token},
            headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"},
            follow_redirects=False,
        )
        assert "Secure" in response.headers["set-cookie"]
    assert site.access_rows()[0]["client"] == "203.0.113.9"


def test_forwarded_headers_from_untrusted_peers_are_ignored(site: Site, client: TestClient) -> None:
    response = client.post(
        "/login",
        data={"api_key": site.keys["support"], "csrf_token": _csrf(client)},
        headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"},
        follow_redirects=False,
    )
    assert "Secure" not in response.headers["set-cookie"]
    assert site.access_rows()[0]["client"] == "127.0.0.1"


def test_csrf_is_refused_on_cookie_posts_without_a_token(site: Site, client: TestClient) -> None:
    no_token = client.post("/login", data={"api_key": site.keys["auditor"]})
    assert no_token.status_code == 403 and "CSRF" in no_token.text
    assert sign_in(client, site.keys["auditor"]) == 303
    rid = site.report_ids[0]
    for path in (f"/reports/{rid}/verify", f"/api/v1/reports/{rid}/verify", "/logout"):
        refused = client.post(path, data={"csrf_token": "forged.value"})
        assert refused.status_code == 403, path
    api = client.post(f"/api/v1/reports/{rid}/verify")
    assert api.json()["error"]["code"] == "csrf_failed"
    upload = client.post(
        "/api/v1/identify", files={"file": ("f.pdf", b"%PDF-1", "application/pdf")}
    )
    assert upload.status_code == 403
    token = client.cookies.get(CSRF_COOKIE)
    ok = client.post(
        "/api/v1/identify",
        files={"file": ("f.pdf", b"%PDF-1", "application/pdf")},
        headers={"X-CSRF-Token": token or ""},
    )
    assert ok.status_code == 200
    # A bearer call is not a browser's: no token needed.
    assert (
        client.post(f"/api/v1/reports/{rid}/verify", headers=site.auth("auditor")).status_code
        == 200
    )


def test_failed_sign_ins_are_rate_limited(site: Site, client: TestClient) -> None:
    codes = [sign_in(client, "d6l_" + "x" * 43) for _ in range(10)]
    assert codes == [401] * 10
    limited = client.get("/api/v1/reports", headers={"Authorization": "Bearer d6l_nope"})
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) > 0
    # Only failures are limited: a valid key from the same (shared) address still gets in.
    assert client.get("/api/v1/me", headers=site.auth("support")).status_code == 200
    denied = [r for r in site.access_rows() if r["action"] == "sign_in"]
    assert len(denied) == 10 and {r["outcome"] for r in denied} == {"denied"}
    assert sign_in(client, site.keys["support"]) in (303, 200)


def test_security_headers_on_every_response(site: Site, client: TestClient) -> None:
    for path in (
        "/login",
        "/api/v1/reports",
        "/nowhere",
        "/static/app.css",
        "/docs",
        "/api/v1/openapi.json",
    ):
        headers = client.get(path).headers
        assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY, path
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in CONTENT_SECURITY_POLICY
    assert client.get("/nowhere").status_code == 404


def _point_pdf_at(site: Site, report_id: str, uri: str) -> None:
    with site.engine.begin() as conn:
        conn.execute(
            update(report_lineage)
            .where(report_lineage.c.report_generation_id == report_id)
            .values(output_uri=uri)
        )


def test_the_pdf_is_only_ever_the_recorded_file_inside_the_reports_dir(
    site: Site, client: TestClient, tmp_path: Path
) -> None:
    rid = site.report_ids[0]
    recorded = Path(site.row(rid)["output_uri"].removeprefix("file://"))
    outside = tmp_path / "secret.pdf"
    outside.write_bytes(recorded.read_bytes())
    link = site.reports_dir / "link.pdf"
    link.symlink_to(outside)
    support = site.auth("support")
    for uri, code in (
        (outside.as_uri(), "pdf_outside_reports_dir"),
        (f"file://{site.reports_dir}/../secret.pdf", "pdf_outside_reports_dir"),
        (link.as_uri(), "pdf_outside_reports_dir"),
        ("file:///etc/passwd", "pdf_outside_reports_dir"),
        ("https://example.com/x.pdf", "pdf_outside_reports_dir"),
        ((site.reports_dir / "gone.pdf").as_uri(), "pdf_missing"),
    ):
        _point_pdf_at(site, rid, uri)
        answer = client.get(f"/api/v1/reports/{rid}/pdf", headers=support)
        assert answer.status_code == 404, uri
        assert answer.json()["error"]["code"] == code, uri
    _point_pdf_at(site, rid, recorded.as_uri())
    recorded.write_bytes(recorded.read_bytes() + b"tampered")
    tampered = client.get(f"/api/v1/reports/{rid}/pdf", headers=support)
    assert (
        tampered.status_code == 409 and tampered.json()["error"]["code"] == "integrity_check_failed"
    )
    outcomes = [r["outcome"] for r in site.access_rows() if r["action"] == "download_pdf"]
    assert outcomes == ["error"] + ["not_found"] * 6


def test_trusted_proxy_mode(site: Site) -> None:
    env = {
        "OTEL_LINEAGE_TRUSTED_PROXIES": "127.0.0.1",
        "OTEL_LINEAGE_PROXY_USER_HEADER": "X-Forwarded-User",
        "OTEL_LINEAGE_PROXY_ROLE_HEADER": "X-Forwarded-Groups",
        "OTEL_LINEAGE_PROXY_ROLE_MAP": "compliance=auditor,helpdesk=support",
    }
    with site.client(env=env) as proxied:
        me = proxied.get(
            "/api/v1/me",
            headers={
                "X-Forwarded-User": "dana@example.com",
                "X-Forwarded-Groups": "staff,compliance",
            },
        ).json()
        assert me == {**me, "name": "dana@example.com", "role": "auditor", "via": "proxy"}
        no_role = proxied.get(
            "/api/v1/me", headers={"X-Forwarded-User": "eve", "X-Forwarded-Groups": "staff"}
        )
        assert no_role.status_code == 403 and no_role.json()["error"]["code"] == "no_role"
        # With a role map, only mapped groups count: a group named "admin" grants nothing.
        unmapped = proxied.get(
            "/api/v1/me", headers={"X-Forwarded-User": "eve", "X-Forwarded-Groups": "admin"}
        )
        assert unmapped.status_code == 403
    untrusted = {**env, "OTEL_LINEAGE_TRUSTED_PROXIES": "10.0.0.0/8"}
    with site.client(env=untrusted) as direct:
        spoofed = direct.get(
            "/api/v1/me", headers={"X-Forwarded-User": "mallory", "X-Forwarded-Groups": "admin"}
        )
        assert spoofed.status_code == 401


def test_no_auth_is_loopback_only_and_shows_a_banner(site: Site, tmp_path: Path) -> None:
    env = {**site.env, "OTEL_LINEAGE_WEB_HOST": "0.0.0.0"}
    with pytest.raises(LineageConfigError, match="--no-auth is refused"):
        WebSettings.from_env(env, no_auth=True, secret_file=tmp_path / "s")
    with site.client(no_auth=True) as anyone:
        assert anyone.get("/api/v1/me").json()["role"] == "admin"
        # DNS rebinding: a page on another name that resolves to 127.0.0.1 is refused.
        rebound = anyone.get("/api/v1/me", headers={"Host": "rebind.example:8080"})
        assert rebound.status_code == 403 and rebound.json()["error"]["code"] == "not_loopback"
        # Nothing made in a keyless demo may outlive it: no keys, no prune.
        token = _csrf(anyone)
        minted = anyone.post("/api/v1/keys?name=x&role=admin", headers={"X-CSRF-Token": token})
        assert minted.status_code == 403
        page = anyone.get("/")
        assert 'id="no-auth-banner"' in page.text
        assert anyone.get(f"/api/v1/reports/{site.report_ids[0]}/inputs").status_code == 200
    assert site.access_rows()[0]["user"] == "anonymous (no-auth)"


def test_settings_are_checked_with_one_line_errors(site: Site, tmp_path: Path) -> None:
    for changes, fragment in (
        ({"OTEL_LINEAGE_MAX_UPLOAD_BYTES": "lots"}, "OTEL_LINEAGE_MAX_UPLOAD_BYTES"),
        ({"OTEL_LINEAGE_TRUSTED_PROXIES": "not-an-ip"}, "OTEL_LINEAGE_TRUSTED_PROXIES"),
        ({"OTEL_LINEAGE_PROXY_USER_HEADER": "X-User"}, "OTEL_LINEAGE_TRUSTED_PROXIES"),
        ({"OTEL_LINEAGE_WEB_SECRET": "short"}, "OTEL_LINEAGE_WEB_SECRET"),
        ({"OTEL_LINEAGE_PROXY_ROLE_MAP": "a=root"}, "OTEL_LINEAGE_PROXY_ROLE_MAP"),
    ):
        with pytest.raises(LineageConfigError, match=fragment):
            WebSettings.from_env({**site.env, **changes}, secret_file=tmp_path / "s")
    without = {k: v for k, v in site.env.items() if k != "OTEL_LINEAGE_WEB_SECRET"}
    first = WebSettings.from_env(without, secret_file=tmp_path / "var" / "secret")
    again = WebSettings.from_env(without, secret_file=tmp_path / "var" / "secret")
    assert first.secret == again.secret != SECRET.encode()
    assert (tmp_path / "var" / "secret").stat().st_mode & 0o777 == 0o600


def test_odd_recorded_paths_are_404_and_leak_nothing(
    site: Site, client: TestClient, tmp_path: Path
) -> None:
    rid = site.report_ids[0]
    fifo = site.reports_dir / "fifo.pdf"
    os.mkfifo(fifo)
    fds_before = len(os.listdir("/proc/self/fd"))
    for uri in (site.reports_dir.as_uri(), fifo.as_uri(), f"{site.reports_dir.as_uri()}/x%00.pdf"):
        _point_pdf_at(site, rid, uri)
        for _ in range(5):
            answer = client.get(f"/api/v1/reports/{rid}/pdf", headers=site.auth("support"))
            assert answer.status_code == 404, uri  # a FIFO never blocks: no writer is awaited
    assert len(os.listdir("/proc/self/fd")) <= fds_before + 2  # no descriptor left open


def test_nobody_uploads_and_api_answers_are_never_cached(site: Site, client: TestClient) -> None:
    upload = client.post("/api/v1/identify", files={"file": ("x.pdf", b"%PDF-1.7 " * 1000)})
    assert upload.status_code == 401
    assert not [r for r in site.access_rows() if r["action"] == "identify"]
    answer = client.get("/api/v1/reports", headers=site.auth("support"))
    assert answer.headers["cache-control"] == "no-store"
    anonymous = client.get(f"/api/v1/reports/{site.report_ids[0]}/inputs")
    assert anonymous.status_code == 401
    (logged,) = [r for r in site.access_rows() if r["action"] == "read_inputs"]
    assert (logged["user"], logged["outcome"]) == ("(no key)", "denied")
