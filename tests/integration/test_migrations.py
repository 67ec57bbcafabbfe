from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import IntegrityError

from d6_reports import db

SERVICE_TABLES = {"business", "website_assessment", "finding", "report_generation"}
LINEAGE_TABLES = {"report_lineage", "lineage_counters", "lineage_api_keys", "lineage_access_log"}
SEAL_TABLES = {"lineage_seals", "lineage_seal_rows"}  # revision 0009
SNAPSHOT_TABLES = {"lineage_snapshots", "lineage_business_keys"}  # revision 0010
LINEAGE_TABLES |= SEAL_TABLES | SNAPSHOT_TABLES


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_then_downgrade_on_each_backend(empty_db_url: str) -> None:
    db.upgrade(empty_db_url)
    assert _tables(empty_db_url) == SERVICE_TABLES | LINEAGE_TABLES
    db.downgrade(empty_db_url, "0001_report_service")  # the plugin's tables go alone
    assert _tables(empty_db_url) == SERVICE_TABLES
    db.downgrade(empty_db_url, "base")
    assert _tables(empty_db_url) == set()
    db.upgrade(empty_db_url)  # and back up again: downgrade left nothing behind
    assert _tables(empty_db_url) >= SERVICE_TABLES


def test_schema_matches_the_models(db_url: str) -> None:
    """The migrations and the code's table definitions describe the same columns and indexes."""
    from d6_reports.models import Base
    from otel_lineage.delivery.schema import metadata as lineage_metadata

    engine = create_engine(db_url)
    try:
        inspector = inspect(engine)
        for table in [*Base.metadata.sorted_tables, *lineage_metadata.sorted_tables]:
            migrated = {c["name"] for c in inspector.get_columns(table.name)}
            assert migrated == {c.name for c in table.columns}, table.name
            indexes = {i["name"] for i in inspector.get_indexes(table.name)}
            assert {i.name for i in table.indexes} <= indexes, table.name
    finally:
        engine.dispose()


def test_access_tables_go_down_and_up_alone(empty_db_url: str) -> None:
    """Revision 0006 adds the key and access-log tables and its downgrade removes only them."""
    db.upgrade(empty_db_url)
    db.downgrade(empty_db_url, "0005_lineage_delivery")
    access = {"lineage_api_keys", "lineage_access_log"}
    later = SEAL_TABLES | SNAPSHOT_TABLES
    assert _tables(empty_db_url) == (SERVICE_TABLES | LINEAGE_TABLES) - access - later
    db.upgrade(empty_db_url)
    assert _tables(empty_db_url) == SERVICE_TABLES | LINEAGE_TABLES
    engine = create_engine(empty_db_url)
    try:
        names = {i["name"]: i for i in inspect(engine).get_indexes("lineage_api_keys")}
        assert names["ux_lineage_api_keys_active_name"]["unique"]
    finally:
        engine.dispose()


def _lineage_row(trace_id: str, generation_id: str) -> dict[str, object]:
    return {
        "trace_id": trace_id,
        "root_span_id": "0" * 16,
        "report_generation_id": generation_id,
        "status": "failed",
        "started_at": datetime.now(UTC),
        "steps": [],
        "input_tables": [],
        "span_count": 0,
        "sampled": False,
        "complete": False,
        "incomplete_reasons": [],
        "created_at": datetime.now(UTC),
    }


def test_attempts_revision_keeps_rows_and_refuses_to_drop_lineage(empty_db_url: str) -> None:
    """0007: existing generations count one attempt; a generation's lineage rows of several
    attempts cannot be folded back into one, so downgrading past 0007 refuses while they exist;
    without them it restores the one-row-per-generation constraint."""
    from otel_lineage.delivery.schema import report_lineage

    db.upgrade(empty_db_url, "0006_lineage_access")
    engine = create_engine(empty_db_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO report_generation (id, business_id, template_name, status, "
                    "requested_at) VALUES ('g1', 1, 'summary', 'completed', :t), "
                    "('g2', 1, 'summary', 'pending', :t)"
                ),
                {"t": datetime.now(UTC)},
            )
        db.upgrade(empty_db_url)
        with engine.connect() as conn:
            attempts = dict(conn.execute(text("SELECT id, attempts FROM report_generation")).all())
        assert attempts == {"g1": 1, "g2": 0}
        with engine.begin() as conn:
            conn.execute(report_lineage.insert(), [_lineage_row("a" * 32, "g1")])
            conn.execute(report_lineage.insert(), [_lineage_row("b" * 32, "g1")])
        with pytest.raises(RuntimeError, match="1 report generations have lineage rows of sev"):
            db.downgrade(empty_db_url, "0006_lineage_access")
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM report_lineage WHERE trace_id = :t"), {"t": "b" * 32})
        db.downgrade(empty_db_url, "0006_lineage_access")
        with engine.begin() as conn, pytest.raises(IntegrityError):
            conn.execute(report_lineage.insert(), [_lineage_row("c" * 32, "g1")])
        db.upgrade(empty_db_url)
    finally:
        engine.dispose()
