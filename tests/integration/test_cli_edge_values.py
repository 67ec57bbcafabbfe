"""Edge values a hostile run found after the first hardening pass: each is one precise line.

Extreme but valid ISO times, a status that does not exist, a format in another case, an emit
URL with spaces or credentials (never echoed), and the report service's own error output,
which prints the error type's fixed description, never the message (it may quote customer
data; the full message is in the lineage database).
"""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, text
from typer.testing import CliRunner

from d6_reports.cli import app as d6_app
from otel_lineage.cli import app as lineage_app
from tests.integration.test_cli_bad_input import sqlite_env  # noqa: F401 - fixture

runner = CliRunner()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["list", "--since", "9999-12-31T23:59:59-05:00"], "--since: out of range"),
        (["audit", "--until", "0001-01-01T00:00:00+14:00"], "--until: out of range"),
        (["stats", "--since", "0001-01-01T00:00:00+01:00"], "--since: out of range"),
        (["list", "--status", "bogus"], "--status must be one of completed, failed, unfinished"),
        (
            ["openlineage", "--since", "2026-01-01", "--emit", "http://u:pa ss@127.0.0.1:9/"],
            "spaces or control characters",
        ),
    ],
)
def test_edge_values_are_one_line_and_exit_2(
    sqlite_env: Engine,  # noqa: F811
    args: list[str],
    says: str,
) -> None:
    result = runner.invoke(lineage_app, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and says in lines[0], result.stderr
    assert "pa ss" not in result.stderr  # credentials are never echoed


def test_status_and_format_take_any_case(sqlite_env: Engine) -> None:  # noqa: F811
    assert runner.invoke(lineage_app, ["list", "--status", "COMPLETED"]).exit_code == 0
    report_id = runner.invoke(lineage_app, ["list", "--json"]).stdout
    assert report_id  # the fixture's row is listed
    with sqlite_env.connect() as conn:
        (first,) = conn.execute(text("SELECT report_generation_id FROM report_lineage")).one()
    result = runner.invoke(lineage_app, ["trace", first, "--format", "JAEGER"])
    assert result.exit_code == 0, result.output


def test_emit_failures_never_echo_credentials(sqlite_env: Engine) -> None:  # noqa: F811
    result = runner.invoke(
        lineage_app,
        ["openlineage", "--since", "2000-01-01", "--emit", "http://u:secret@127.0.0.1:9/"],
    )
    assert result.exit_code != 0
    assert "secret" not in result.output + result.stderr
    assert "***@127.0.0.1:9" in result.stderr


def test_a_failed_report_prints_its_description_not_its_message(
    sqlite_env: Engine,  # noqa: F811
) -> None:
    marker = "ZQX-customer-marker"
    with sqlite_env.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO business (id, name, website, created_at) "
                "VALUES (77, 'x', 'https://x.test', :bad)"
            ),
            {"bad": marker},
        )
        conn.execute(
            text(
                "INSERT INTO website_assessment (business_id, assessed_at, url, "
                "performance, accessibility, seo, best_practices, security, mobile) "
                "VALUES (77, '2026-01-01', 'https://x.test', 1, 1, 1, 1, 1, 1)"
            )
        )
    for args in (
        ["generate", "--business-id", "77"],
        ["generate", "--business-id", "77", "--json"],
    ):
        result = runner.invoke(d6_app, args, env={"D6_ALLOW_NO_LINEAGE": "true"})
        assert result.exit_code == 1, result.output
        assert marker not in result.output + result.stderr, args
        assert "InputsError" in result.output + result.stderr
