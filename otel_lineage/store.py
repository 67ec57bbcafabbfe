"""Writing lineage rows: idempotent batch upserts into ``report_lineage``.

A record is keyed by its trace id (one report = one trace), so writing the same record twice,
or replaying a batch after a crash, leaves one row. All of the store's SQL runs with
OpenTelemetry instrumentation suppressed: the SQLAlchemy instrumentation may wrap every engine
(zero-code mode wraps ``create_engine`` globally), and lineage must never trace itself.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry.instrumentation.utils import suppress_instrumentation
from sqlalchemy import Engine, Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.dml import Insert

from otel_lineage.record import LineageRecord
from otel_lineage.schema import lineage_counters, report_lineage
from otel_lineage.stats import COUNTER_NAMES, Counts


@contextlib.contextmanager
def untraced() -> Iterator[None]:
    """Run a block with no current span and instrumentation suppressed.

    Detaching from the current span matters too: a store call made on a thread that is inside
    a report span must not parent anything to it.
    """
    token = otel_context.attach(otel_context.Context())
    try:
        with suppress_instrumentation():
            yield
    finally:
        otel_context.detach(token)


def _upsert(engine: Engine, table: Table, key: str) -> Insert:
    dialect = engine.dialect.name
    if dialect == "postgresql":
        stmt: Any = postgresql.insert(table)
    elif dialect == "sqlite":
        stmt = sqlite.insert(table)
    else:  # pragma: no cover - only the two supported dialects reach here
        raise NotImplementedError(f"no upsert for dialect {dialect}")
    updates = {c.name: stmt.excluded[c.name] for c in table.columns if c.name not in ("id", key)}
    result: Insert = stmt.on_conflict_do_update(index_elements=[key], set_=updates)
    return result


class LineageStore:
    """The lineage database, as the writer sees it."""

    def __init__(self, engine: Engine, *, service_name: str | None = None) -> None:
        self.engine = engine
        self._lineage_upsert = _upsert(engine, report_lineage, "trace_id")
        self._counters_upsert = _upsert(engine, lineage_counters, "instance_id")
        self.instance_id = str(uuid.uuid4())
        self._service_name = service_name
        self._started_at = datetime.now(UTC)

    def upsert(self, records: Sequence[LineageRecord]) -> None:
        """Insert or update ``records`` in one transaction."""
        if not records:
            return
        with untraced(), self.engine.begin() as conn:
            conn.execute(self._lineage_upsert, [r.as_row() for r in records])

    def save_counters(self, counts: Counts, pending: int) -> None:
        row = {name: getattr(counts, name) for name in COUNTER_NAMES}
        row.update(
            instance_id=self.instance_id,
            service_name=self._service_name,
            host=socket.gethostname()[:255],
            pid=os.getpid(),
            started_at=self._started_at,
            updated_at=datetime.now(UTC),
            pending=pending,
        )
        with untraced(), self.engine.begin() as conn:
            conn.execute(self._counters_upsert, [row])

    def reset_after_fork(self) -> None:
        """A forked child gets its own identity and never reuses the parent's connections."""
        self.engine.dispose(close=False)
        self.instance_id = str(uuid.uuid4())
        self._started_at = datetime.now(UTC)
