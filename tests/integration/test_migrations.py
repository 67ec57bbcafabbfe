from __future__ import annotations

from sqlalchemy import create_engine, inspect

from d6_reports import db

SERVICE_TABLES = {"business", "website_assessment", "finding", "report_generation"}
LINEAGE_TABLES = {"report_lineage", "lineage_counters", "lineage_api_keys", "lineage_access_log"}


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
    assert _tables(empty_db_url) == (SERVICE_TABLES | LINEAGE_TABLES) - access
    db.upgrade(empty_db_url)
    assert _tables(empty_db_url) == SERVICE_TABLES | LINEAGE_TABLES
    engine = create_engine(empty_db_url)
    try:
        names = {i["name"]: i for i in inspect(engine).get_indexes("lineage_api_keys")}
        assert names["ux_lineage_api_keys_active_name"]["unique"]
    finally:
        engine.dispose()
