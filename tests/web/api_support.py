"""Fixtures of the web API and page tests: real lineage rows, real keys, a real app.

``site`` builds, on each backend (the ``db_url`` fixtures: SQLite and PostgreSQL), a migrated
database with demo businesses (the second renamed to a hostile name), lineage rows made by the
real pipeline (fast PDF converter: verify then re-renders with WeasyPrint, so the PDF digest
*differs* and the others *match*, which shows both answers), one failed report, API keys of
every role plus a revoked and an expired one, and the FastAPI app behind a ``TestClient``
(real HTTP semantics through the ASGI stack) coming from 127.0.0.1.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session, sessionmaker

from d6_reports.generator import GenerationOptions, ReportGenerator
from d6_reports.models import Business
from otel_lineage.access.keys import create_key, revoke_key
from otel_lineage.access.log import list_access
from otel_lineage.access.roles import Role
from otel_lineage.delivery.schema import lineage_api_keys, report_lineage
from otel_lineage.web import WebSettings, create_app
from otel_lineage.web.app import dispose
from tests.fast_pdf import FastPDFConverter
from tests.lineage_support import lineage_pipeline

HOSTILE_NAME = "<img src=x onerror=alert(1)>"
SECRET = "test-secret-" + "x" * 40
CLIENT = ("127.0.0.1", 50123)


@dataclass
class Site:
    engine: Engine
    db_url: str
    reports_dir: Path
    tmp: Path
    report_ids: list[str]
    hostile_id: str
    failed_id: str
    keys: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    def settings(self, **changes: Any) -> WebSettings:
        env = {**self.env, **changes.pop("env", {})}
        settings = WebSettings.from_env(env, secret_file=self.tmp / "secret")
        return dataclasses.replace(settings, **changes)

    def client(self, **changes: Any) -> TestClient:
        # A loopback peer that names a loopback host, as a local browser does.
        app = create_app(self.settings(**changes))
        return TestClient(app, base_url="http://127.0.0.1", client=CLIENT)

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[role]}"}

    def access_rows(self, **filters: Any) -> list[dict[str, Any]]:
        rows, _ = list_access(self.engine, limit=1000, **filters)
        return rows

    def row(self, report_id: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            found = conn.execute(
                select(report_lineage).where(report_lineage.c.report_generation_id == report_id)
            )
            return dict(found.mappings().one())


def build_site(
    db_url: str,
    engine: Engine,
    sessions: sessionmaker[Session],
    business_ids: list[int],
    tmp_path: Path,
) -> Site:
    with sessions() as session:
        session.execute(
            update(Business).where(Business.id == business_ids[1]).values(name=HOSTILE_NAME)
        )
        session.commit()
    reports_dir = tmp_path / "reports"
    with lineage_pipeline(db_url, engine) as (lineage, _):
        generator = ReportGenerator(
            sessions, reports_dir, tracer_provider=lineage.provider, converter=FastPDFConverter()
        )
        try:
            results = [
                generator.generate_report_sync(b, GenerationOptions("summary"))
                for b in business_ids[:3]
            ]
            failed = generator.generate_report_sync(777777, GenerationOptions("summary"))
        finally:
            generator.close()
        assert lineage.flush(30)
    assert all(r.success for r in results)
    site = Site(
        engine=engine,
        db_url=db_url,
        reports_dir=reports_dir,
        tmp=tmp_path,
        report_ids=[str(r.generation_id) for r in results],
        hostile_id=str(results[1].generation_id),
        failed_id=str(failed.generation_id),
        env={
            "D6_DATABASE_URL": db_url,
            "D6_REPORTS_DIR": str(reports_dir),
            "OTEL_LINEAGE_WEB_SECRET": SECRET,
            "OTEL_LINEAGE_OUTBOX": str(tmp_path / "outbox"),
        },
    )
    for role in Role:
        _, site.keys[role.value] = create_key(engine, name=role.value, role=role, created_by="t")
    revoked, site.keys["revoked"] = create_key(engine, name="gone", role=Role.ADMIN, created_by="t")
    revoke_key(engine, revoked.id)
    expired, site.keys["expired"] = create_key(
        engine,
        name="old",
        role=Role.ADMIN,
        created_by="t",
        expires_at=datetime.now(UTC) + timedelta(hours=1),
    )
    with engine.begin() as conn:  # expire it now (create_key refuses a past expiry)
        conn.execute(
            update(lineage_api_keys)
            .where(lineage_api_keys.c.id == expired.id)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    return site


@pytest.fixture
def site(
    db_url: str,
    engine: Engine,
    sessions: sessionmaker[Session],
    business_ids: list[int],
    tmp_path: Path,
) -> Site:
    return build_site(db_url, engine, sessions, business_ids, tmp_path)


@pytest.fixture
def client(site: Site) -> Iterator[TestClient]:
    with site.client() as test_client:
        yield test_client
    dispose(test_client.app)  # type: ignore[arg-type]
