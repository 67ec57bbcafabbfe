"""The plugin's configuration, from ``configure()`` arguments or the environment.

``ENABLE_REPORT_LINEAGE`` is the feature flag (default on). The lineage database defaults to
the report database (``D6_DATABASE_URL``, then the service's embedded SQLite default), and
``OTEL_LINEAGE_DATABASE_URL`` points it elsewhere.

Every value is checked here, once, at start: a compliance feature must refuse a configuration
it cannot honour (``BATCH_SIZE=0`` would spin without writing, ``MAX_TRACES=0`` would store every
report as unfinished) with one line naming the variable and what it accepts, instead of
starting and silently losing lineage.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from otel_lineage import semconv

FALSE_VALUES = frozenset({"0", "false", "no", "off"})
TRUE_VALUES = frozenset({"1", "true", "yes", "on"})
DEFAULT_DATABASE_URL = f"sqlite:///{Path('var').resolve() / 'd6_reports.db'}"
DEFAULT_OUTBOX = Path("var") / "lineage-outbox"
#: ``OTEL_LINEAGE_OUTBOX=memory`` keeps records in memory only (survives outages, not crashes).
MEMORY_OUTBOX = "memory"
_N = TypeVar("_N", int, float)


class LineageConfigError(ValueError):
    """A configuration value the plugin cannot honour; the message is one line for the user."""


def lineage_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """The feature flag. An unrecognised value is an error, not silently "on"."""
    env = os.environ if environ is None else environ
    return parse_bool(env, "ENABLE_REPORT_LINEAGE", default=True)


#: ``OTEL_LINEAGE_RECORD_SPANS``: which spans of an *unsampled* report trace are recorded.
RECORD_SPANS_VAR = "OTEL_LINEAGE_RECORD_SPANS"
SPAN_RECORDING_CHOICES = (semconv.SPAN_RECORDING_REPORT, semconv.SPAN_RECORDING_ALL)


def span_recording(environ: Mapping[str, str] | None = None) -> str:
    """The span-recording policy: ``report`` (default) or ``all``; anything else is an error.

    ``report``: a report trace that is not sampled records only its own ``report.*`` spans,
    the ones lineage folds (library spans such as SQL would cost recording time for nothing).
    ``all``: every span of the report trace is recorded, so the row keeps the full trace
    offline. A sampled trace (whether or not an exporter is configured) is recorded whole.
    """
    env = os.environ if environ is None else environ
    raw = env.get(RECORD_SPANS_VAR)
    if raw is None or not raw.strip():
        return SPAN_RECORDING_CHOICES[0]
    value = raw.strip().lower()
    if value not in SPAN_RECORDING_CHOICES:
        raise LineageConfigError(
            f"{RECORD_SPANS_VAR}={_shown(raw)} is not valid: expected report or all"
        )
    return value


def parse_bool(env: Mapping[str, str], name: str, *, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    value = raw.strip().lower()
    if value in TRUE_VALUES:
        return True
    if value in FALSE_VALUES:
        return False
    raise LineageConfigError(f"{name}={_shown(raw)} is not valid: expected true or false")


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
    stamp_classes: tuple[str, ...] = ("ReportGeneration",)
    span_recording: str = SPAN_RECORDING_CHOICES[0]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LineageSettings:
        """Read and check every variable; raises ``LineageConfigError`` on the first bad one."""
        env = os.environ if environ is None else environ
        reports_url = _database_url(env, "D6_DATABASE_URL") or DEFAULT_DATABASE_URL
        return cls(
            enabled=lineage_enabled(env),
            database_url=_database_url(env, "OTEL_LINEAGE_DATABASE_URL") or reports_url,
            reports_database_url=reports_url,
            max_traces=parse_number(env, "OTEL_LINEAGE_MAX_TRACES", int, 10_000, 1, 10_000_000),
            max_spans_per_trace=parse_number(
                env, "OTEL_LINEAGE_MAX_SPANS_PER_TRACE", int, 2_000, 1, 1_000_000
            ),
            trace_ttl_s=parse_number(
                env, "OTEL_LINEAGE_TRACE_TTL", float, 600.0, 1.0, 7 * 86_400.0
            ),
            max_pending=parse_number(env, "OTEL_LINEAGE_MAX_PENDING", int, 100_000, 1, 100_000_000),
            batch_size=parse_number(env, "OTEL_LINEAGE_BATCH_SIZE", int, 500, 1, 10_000),
            outbox=_outbox(env),
            outbox_max_bytes=parse_number(
                env, "OTEL_LINEAGE_OUTBOX_MAX_BYTES", int, 1 << 30, 1 << 20, 1 << 40
            ),
            jaeger_url=_http_url(env, "OTEL_LINEAGE_JAEGER_URL"),
            stamp_classes=_identifiers(env, "OTEL_LINEAGE_STAMP_CLASSES", ("ReportGeneration",)),
            span_recording=span_recording(env),
        )


#: What a number setting may look like: ASCII digits, an optional sign, point and exponent.
_PLAIN_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def parse_number(
    env: Mapping[str, str],
    name: str,
    kind: Callable[[str], _N],
    default: _N,
    low: _N,
    high: _N,
) -> _N:
    """``env[name]`` as ``kind`` within ``[low, high]``, ``default`` when unset or empty; else a
    ``LineageConfigError`` naming the variable. Plain ASCII numbers only: ``int()`` would also
    take ``1_000`` and other scripts' digits, which no one means in a setting."""
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    noun = "an integer" if kind is int else "a number"
    expected = f"expected {noun} from {low!s} to {high!s}"
    try:
        if not _PLAIN_NUMBER.fullmatch(raw.strip()):  # int() takes '1_0', other digits
            raise ValueError(raw)
        value = kind(raw.strip())
    except ValueError:
        raise LineageConfigError(f"{name}={_shown(raw)} is not valid: {expected}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise LineageConfigError(f"{name}={_shown(raw)} is not valid: {expected}")
    if not low <= value <= high:
        raise LineageConfigError(f"{name}={_shown(raw)} is out of range: {expected}")
    return value


def _database_url(env: Mapping[str, str], name: str) -> str | None:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return None
    try:
        url = make_url(raw.strip())
        url.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        reason = "no such database driver" if isinstance(exc, NoSuchModuleError) else "unparsable"
        raise LineageConfigError(
            f"{name} is not a usable SQLAlchemy URL ({reason}): expected e.g. "
            "sqlite:///var/d6_reports.db or postgresql+psycopg://user@host/db"
        ) from None
    if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
        raise LineageConfigError(
            f"{name} names an in-memory SQLite database, which every connection sees empty: "
            "give a file (sqlite:///path/to/file.db)"
        )
    return raw.strip()


def _outbox(env: Mapping[str, str]) -> str:
    raw = env.get("OTEL_LINEAGE_OUTBOX")
    if raw is None or not raw.strip():
        return str(DEFAULT_OUTBOX.resolve())
    value = raw.strip()
    if value.lower() == MEMORY_OUTBOX:
        return MEMORY_OUTBOX
    if "\x00" in value or not _encodable(value):
        raise LineageConfigError(
            f"OTEL_LINEAGE_OUTBOX={_shown(raw)} is not valid: expected a directory or 'memory'"
        )
    return str(Path(value).expanduser().resolve())


def _http_url(env: Mapping[str, str], name: str) -> str | None:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return None
    value = raw.strip()
    if not value.lower().startswith(("http://", "https://")) or not _encodable(value):
        raise LineageConfigError(f"{name}={_shown(raw)} is not valid: expected an http(s) URL")
    return value.rstrip("/")


def _identifiers(env: Mapping[str, str], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    names = tuple(n.strip() for n in raw.split(",") if n.strip())
    if not names or not all(n.isidentifier() for n in names):
        raise LineageConfigError(
            f"{name}={_shown(raw)} is not valid: expected comma-separated class names"
        )
    return names


def _encodable(value: str) -> bool:
    """False for text holding undecodable bytes (os.environ keeps them as surrogates)."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _shown(raw: str) -> str:
    """A bad value as it may be printed: shortened, invalid bytes escaped."""
    text = repr(raw)
    return text if len(text) <= 40 else f"{text[:37]}..."
