"""``--since``/``--until`` name an instant, whatever offset it is written with (issue 9 item 9):
SQLite stores times as ISO strings without their offset, so a bound time must be UTC too."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine
from typer.testing import CliRunner

from otel_lineage.cli import app
from tests.integration.test_cli_bad_input import insert_generation, insert_lineage

runner = CliRunner()
TIMES = {  # report id -> when it started (UTC)
    "00000000-0000-4000-8000-000000001000": datetime(2025, 12, 1, 10, 0, tzinfo=UTC),
    "00000000-0000-4000-8000-000000001130": datetime(2025, 12, 1, 11, 30, tzinfo=UTC),
    "00000000-0000-4000-8000-000000001300": datetime(2025, 12, 1, 13, 0, tzinfo=UTC),
}
#: 11:00 UTC and 12:45 UTC, each written three ways.
SINCE = ["2025-12-01T11:00:00+00:00", "2025-12-01T12:00:00+01:00", "2025-12-01T06:00:00-05:00"]
UNTIL = ["2025-12-01T12:45:00Z", "2025-12-01T13:45:00+01:00", "2025-12-01T07:45:00-05:00"]


@pytest.fixture
def timed(db_url: str, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("D6_DATABASE_URL", db_url)
    monkeypatch.delenv("OTEL_LINEAGE_DATABASE_URL", raising=False)
    for report_id, at in TIMES.items():
        insert_lineage(engine, report_id, started_at=at, created_at=at)
        insert_generation(engine, report_id, requested_at=at)
    yield


def _json(args: list[str]) -> Any:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    value = orjson.loads(result.stdout)
    return value if isinstance(value, dict) else {"groups": value}


@pytest.mark.parametrize("since", SINCE)
def test_list_since_is_an_instant(timed: None, since: str) -> None:
    rows = _json(["list", "--since", since, "--json"])["rows"]
    assert [r["report_generation_id"] for r in rows] == [
        "00000000-0000-4000-8000-000000001300",
        "00000000-0000-4000-8000-000000001130",
    ]


@pytest.mark.parametrize(("since", "until"), list(zip(SINCE, UNTIL, strict=True)))
def test_list_audit_and_stats_windows(timed: None, since: str, until: str) -> None:
    window = ["--since", since, "--until", until, "--json"]
    rows = _json(["list", *window])["rows"]
    assert [r["report_generation_id"] for r in rows] == ["00000000-0000-4000-8000-000000001130"]
    report = _json(["audit", *window])
    assert (report["generations"], report["with_lineage"]) == (1, 1)
    (group,) = _json(["stats", *window])["groups"]
    assert group["count"] == 1
    assert _json(["audit", "--since", since, "--json"])["generations"] == 2
    (everything,) = _json(["stats", "--until", until, "--json"])["groups"]
    assert everything["count"] == 2
