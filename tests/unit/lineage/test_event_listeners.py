"""The plugin's SQLAlchemy listeners: exactly one while configured, none after, none leaked.

A long-running service (or a test suite) configures and shuts lineage down many times; a
listener left behind would stamp rows twice, keep a dead pipeline alive through the event
registry, or slow every flush down a little more each cycle. These tests count what SQLAlchemy
itself holds (the mapper's and engine's dispatch collections and the global event registry)
around the real ``otel_lineage.configure()``.
"""

from __future__ import annotations

import gc
import uuid
import weakref
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from sqlalchemy import Engine, event, inspect
from sqlalchemy.event import registry
from sqlalchemy.orm import Mapper, Session, sessionmaker

import otel_lineage
from d6_reports import db
from d6_reports.models import ReportGeneration
from otel_lineage import LineageSampler

CYCLES = 100


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'listeners.db'}"
    db.upgrade(url)
    return url


@pytest.fixture
def app_engine(sqlite_url: str) -> Iterator[Engine]:
    engine = db.make_engine(sqlite_url)
    yield engine
    engine.dispose()


def _provider() -> TracerProvider:
    # shutdown_on_exit=False: the SDK's atexit hook would otherwise keep every provider (and
    # the pipeline attached to it) alive, hiding whether lineage itself lets go.
    return TracerProvider(sampler=LineageSampler(ALWAYS_ON), shutdown_on_exit=False)


def _configure(
    url: str, engine: Engine, provider: TracerProvider, *, enabled: bool = True
) -> otel_lineage.Lineage:
    return otel_lineage.configure(
        tracer_provider=provider,
        database_url=url,
        engines=[engine],
        enabled=enabled,
        set_global=False,
    )


def _insert_listeners() -> int:
    """Listeners that fire when a ``ReportGeneration`` row is inserted."""
    return len(list(inspect(ReportGeneration).dispatch.before_insert))


def _cursor_listeners(engine: Engine) -> int:
    return len(list(engine.dispatch.before_cursor_execute))


def _registry_size() -> int:
    gc.collect()
    return len(registry._key_to_collection)


def _insert_in_span(sessions: sessionmaker[Session], provider: TracerProvider) -> ReportGeneration:
    now = datetime.now(UTC)
    row = ReportGeneration(
        id=str(uuid.uuid4()),
        business_id=1,
        template_name="summary",
        status="generating",
        requested_at=now,
    )
    span = provider.get_tracer("test").start_as_current_span("report.generate")
    with span, sessions() as session, session.begin():
        session.add(row)
    return row


def test_one_listener_after_configure(sqlite_url: str, app_engine: Engine) -> None:
    inserts, cursors = _insert_listeners(), _cursor_listeners(app_engine)
    provider = _provider()
    lineage = _configure(sqlite_url, app_engine, provider)
    try:
        assert lineage.stamper is not None
        assert event.contains(Mapper, "before_insert", lineage.stamper._before_insert)
        assert _insert_listeners() == inserts + 1
        assert _cursor_listeners(app_engine) == cursors + 1
        row = _insert_in_span(db.make_session_factory(app_engine), provider)
        assert row.trace_id is not None and len(row.trace_id) == 32  # the one listener works
    finally:
        lineage.shutdown()
        provider.shutdown()


def test_no_listener_after_shutdown(sqlite_url: str, app_engine: Engine) -> None:
    inserts, cursors = _insert_listeners(), _cursor_listeners(app_engine)
    provider = _provider()
    lineage = _configure(sqlite_url, app_engine, provider)
    stamper = lineage.stamper
    lineage.shutdown()
    provider.shutdown()
    assert stamper is not None
    assert not event.contains(Mapper, "before_insert", stamper._before_insert)
    assert (_insert_listeners(), _cursor_listeners(app_engine)) == (inserts, cursors)
    row = _insert_in_span(db.make_session_factory(app_engine), _provider())
    assert row.trace_id is None  # nothing stamps any more


def test_no_listener_with_the_flag_off(
    sqlite_url: str, app_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENABLE_REPORT_LINEAGE", "false")
    inserts = _insert_listeners()
    provider = TracerProvider(sampler=ALWAYS_ON, shutdown_on_exit=False)
    lineage = otel_lineage.configure(
        tracer_provider=provider, database_url=sqlite_url, set_global=False
    )
    try:
        assert not lineage.enabled and lineage.stamper is None
        assert _insert_listeners() == inserts
        row = _insert_in_span(db.make_session_factory(app_engine), provider)
        assert row.trace_id is None
    finally:
        lineage.shutdown()
        provider.shutdown()


def test_no_growth_over_many_configure_shutdown_cycles(sqlite_url: str, app_engine: Engine) -> None:
    # One cycle first: imports and first-use caches register their own listeners once.
    provider = _provider()
    _configure(sqlite_url, app_engine, provider).shutdown()
    provider.shutdown()
    del provider
    baseline = (_insert_listeners(), _cursor_listeners(app_engine), _registry_size())
    pipelines: list[weakref.ref[object]] = []
    for _ in range(CYCLES):
        provider = _provider()
        lineage = _configure(sqlite_url, app_engine, provider)
        assert _insert_listeners() == baseline[0] + 1
        assert lineage.store is not None
        pipelines.append(weakref.ref(lineage.store.engine))
        lineage.shutdown()
        provider.shutdown()
        del lineage, provider
    after = (_insert_listeners(), _cursor_listeners(app_engine), _registry_size())
    assert after == baseline
    alive = sum(ref() is not None for ref in pipelines)
    assert alive == 0, f"{alive} of {CYCLES} shut-down lineage pipelines are still referenced"
