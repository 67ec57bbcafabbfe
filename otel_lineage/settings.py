"""The plugin's configuration, from ``configure()`` arguments or the environment.

``ENABLE_REPORT_LINEAGE`` is the feature flag (default on). The lineage database defaults to
the report database (``D6_DATABASE_URL``, then the service's embedded SQLite default), and
``OTEL_LINEAGE_DATABASE_URL`` points it elsewhere.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

FALSE_VALUES = frozenset({"0", "false", "no", "off"})
DEFAULT_DATABASE_URL = f"sqlite:///{Path('var').resolve() / 'd6_reports.db'}"
DEFAULT_OUTBOX = Path("var") / "lineage-outbox"
#: ``OTEL_LINEAGE_OUTBOX=memory`` keeps records in memory only (survives outages, not crashes).
MEMORY_OUTBOX = "memory"


def lineage_enabled(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return env.get("ENABLE_REPORT_LINEAGE", "true").strip().lower() not in FALSE_VALUES


@dataclass(frozen=True, slots=True)
class LineageSettings:
    enabled: bool
    database_url: str
    reports_database_url: str
    max_traces: int
    max_spans_per_trace: int
    trace_ttl_s: float
    max_pending: int
    batch_size: int
    outbox: str
    outbox_max_bytes: int
    jaeger_url: str | None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LineageSettings:
        env = os.environ if environ is None else environ
        reports_url = env.get("D6_DATABASE_URL") or DEFAULT_DATABASE_URL
        return cls(
            enabled=lineage_enabled(env),
            database_url=env.get("OTEL_LINEAGE_DATABASE_URL") or reports_url,
            reports_database_url=reports_url,
            max_traces=int(env.get("OTEL_LINEAGE_MAX_TRACES", "10000")),
            max_spans_per_trace=int(env.get("OTEL_LINEAGE_MAX_SPANS_PER_TRACE", "2000")),
            trace_ttl_s=float(env.get("OTEL_LINEAGE_TRACE_TTL", "600")),
            max_pending=int(env.get("OTEL_LINEAGE_MAX_PENDING", "100000")),
            batch_size=int(env.get("OTEL_LINEAGE_BATCH_SIZE", "500")),
            outbox=env.get("OTEL_LINEAGE_OUTBOX") or str(DEFAULT_OUTBOX.resolve()),
            outbox_max_bytes=int(env.get("OTEL_LINEAGE_OUTBOX_MAX_BYTES", str(1 << 30))),
            jaeger_url=env.get("OTEL_LINEAGE_JAEGER_URL") or None,
        )
