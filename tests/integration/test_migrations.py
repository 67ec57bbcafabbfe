from __future__ import annotations

from sqlalchemy import create_engine, inspect

from d6_reports import db

SERVICE_TABLES = {"business", "website_assessment", "finding", "report_generation"}


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_then_downgrade_on_each_backend(empty_db_url: str) -> None:
    db.upgrade(empty_db_url)
    assert _tables(empty_db_url) >= SERVICE_TABLES
    db.downgrade(empty_db_url, "base")
    assert _tables(empty_db_url) == set()
    db.upgrade(empty_db_url)  # and back up again: downgrade left nothing behind
    assert _tables(empty_db_url) >= SERVICE_TABLES


def test_schema_matches_the_models(db_url: str) -> None:
    """The migration and the ORM models describe the same columns."""
    from d6_reports.models import Base

    engine = create_engine(db_url)
    try:
        inspector = inspect(engine)
        for table in Base.metadata.sorted_tables:
            migrated = {c["name"] for c in inspector.get_columns(table.name)}
            assert migrated == {c.name for c in table.columns}, table.name
    finally:
        engine.dispose()
