"""What the command lines print for batches and for the outbox's quarantine."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from d6_reports.cli import app as d6_app
from otel_lineage.cli import app as lineage_app
from otel_lineage.delivery.recovery import quarantine_record

runner = CliRunner()


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'd6.db'}"
    monkeypatch.setenv("D6_DATABASE_URL", url)
    monkeypatch.setenv("D6_REPORTS_DIR", str(tmp_path / "reports"))
    monkeypatch.delenv("OTEL_LINEAGE_DATABASE_URL", raising=False)
    assert runner.invoke(d6_app, ["db", "upgrade"]).exit_code == 0
    assert runner.invoke(d6_app, ["seed-demo", "--count", "2"]).exit_code == 0
    return url


def test_generate_all_summary_when_piped_and_json(env: str) -> None:
    piped = runner.invoke(d6_app, ["generate-all", "--template", "summary"])
    assert piped.exit_code == 0, piped.output
    assert "Reports" in piped.stdout and "2/2 reports, 0 failed" in piped.stdout
    as_json = runner.invoke(d6_app, ["generate-all", "--template", "summary", "--json"])
    document = orjson.loads(as_json.stdout)
    assert (document["reports"], document["failed"]) == (2, 0)
    assert [r["business_id"] for r in document["results"]] == [1, 2]
    assert all(r["success"] and r["pdf_path"].endswith(".pdf") for r in document["results"])


def test_outbox_status_and_audit_show_the_quarantine(env: str, outbox_dir: Path) -> None:
    quarantine_record(outbox_dir, b"\x00garbage", source="outbox-dead", reason="undecodable")
    status = runner.invoke(lineage_app, ["outbox", "status"])
    assert status.exit_code == 0, status.output
    assert "quarantined: 1 records, 0 outbox files" in status.stdout
    assert "undecodable" in status.stdout
    listed = orjson.loads(runner.invoke(lineage_app, ["outbox", "status", "--json"]).stdout)
    (item,) = listed["quarantine"]
    assert (item["kind"], item["reason"], item["bytes"]) == ("record", "undecodable", 8)
    audit = runner.invoke(lineage_app, ["audit"])
    assert "quarantined: 1 records" in audit.stdout
    report = orjson.loads(runner.invoke(lineage_app, ["audit", "--json"]).stdout)
    assert len(report["quarantine"]) == 1
