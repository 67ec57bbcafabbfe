"""Tamper-evident seals over lineage rows: canonical row digests, sealing, and the audit.

A seal covers the rows no earlier seal covers, in row id order. It stores each row's digest
(``lineage_seal_rows``) and a hash over them chained to the previous seal's hash
(``lineage_seals``), optionally signed with Ed25519. ``audit_seals`` recomputes everything and
names each row that was modified, deleted or inserted after sealing.

Design choices, and why:

- **Which rows a seal covers** is recorded per row (``lineage_seal_rows``, primary key
  ``row_id``) rather than as "ids up to N": with several writers on PostgreSQL ids commit out of
  order, so a high-water mark would skip rows. The primary key makes "each row sealed at most
  once" a database guarantee, and no lineage row is ever updated by sealing (no write
  amplification on a million rows, no conflict with the writer's upserts).
- **One sealer at a time**: ``pg_advisory_xact_lock`` in the sealing transaction on
  PostgreSQL, ``BEGIN IMMEDIATE`` (the write lock) on SQLite. Should a sealer bypass the lock,
  ``seal_no`` (primary key) and ``prev_hash`` (unique) still refuse a fork.
- **The digest** is sha256 over a versioned, fixed encoding (orjson of the values of a fixed
  column tuple, keys sorted, datetimes as UTC ISO strings with microseconds), of every column
  that says what the report was, but not the blobs (snapshot, span tree, their codecs, where
  the snapshot is kept) nor ``pruned_at``: retention and snapshot storage rewrite those
  legitimately. The snapshot is sealed through ``inputs_sha256`` and ``inputs_bytes``.
- **Inserted after sealing**: a row that is not in a seal made after it was created (by more
  than ``LATE_GRACE``, which covers normal delivery and clock skew) and that the seal would
  have taken (the seal took every row, or the row's id is below the seal's highest). A record
  that waited longer than the grace in an outbox is listed too: the database alone cannot tell
  it from a back-dated insert. So is a row not sealed whose id is below those of a seal made
  more than the grace ago (see ``seal``: no writer's row can be that late, and no seal takes it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import (
    JSON,
    Connection,
    DateTime,
    Engine,
    Text,
    cast,
    exists,
    func,
    select,
    text,
)

from otel_lineage.delivery.schema import lineage_seal_rows, lineage_seals, report_lineage
from otel_lineage.delivery.store import untraced
from otel_lineage.settings import LineageConfigError, parse_number

#: The encoding of a row digest. A new sealed column means a new version (old seals keep
#: theirs: each seal records the version its digests were made with).
DIGEST_VERSION = 1
DIGEST_COLUMNS: dict[int, tuple[str, ...]] = {
    1: (
        "id",
        "report_generation_id",
        "trace_id",
        "root_span_id",
        "business_id",
        "template_name",
        "template_version",
        "template_sha256",
        "inputs_sha256",
        "inputs_bytes",
        "html_sha256",
        "output_sha256",
        "output_bytes",
        "output_pages",
        "output_uri",
        "status",
        "error_type",
        "error_message",
        "started_at",
        "ended_at",
        "duration_ms",
        "steps",
        "input_tables",
        "span_count",
        "sampled",
        "complete",
        "incomplete_reasons",
        "service_name",
        "service_version",
        "created_at",
        "caller_trace_id",
        "exported",
        "attempt",
        "renderer",
    )
}
#: ``report_lineage`` columns deliberately left out of the digest (see the module docstring).
UNSEALED_COLUMNS = frozenset(
    {
        "inputs_snapshot",
        "inputs_codec",
        "inputs_snapshot_shared",
        "span_tree",
        "span_tree_codec",
        "pruned_at",
        "span_recording",  # how much of the trace the (unsealed) span tree holds
    }
)
#: The predecessor of seal #1.
GENESIS = "0" * 64
#: Rows per seal: a larger backlog is sealed in several seals (each its own transaction).
DEFAULT_MAX_ROWS = 50_000
#: A row created this long before a seal that did not take it is "inserted after sealing".
LATE_GRACE = timedelta(minutes=15)
#: The advisory lock every sealer takes on PostgreSQL (any constant shared by all sealers).
_LOCK_KEY = int.from_bytes(hashlib.sha256(b"otel_lineage.seals").digest()[:8], "big", signed=True)
_SIGNED_PREFIX = b"otel-lineage seal v1 "
_U64 = struct.Struct(">Q")

SEAL_EVERY_VAR = "OTEL_LINEAGE_SEAL_EVERY_S"
KEY_FILE_VAR = "OTEL_LINEAGE_SEAL_KEY_FILE"
PUBLIC_KEY_FILE_VAR = "OTEL_LINEAGE_SEAL_PUBLIC_KEY_FILE"

# -- canonical digests ---------------------------------------------------------------------------


def to_utc(value: datetime) -> datetime:
    """SQLite returns naive datetimes (the writer stores UTC); PostgreSQL aware ones."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _utc_text(value: datetime) -> str:
    """A datetime as UTC ISO 8601 with microseconds and ``Z`` (naive means UTC)."""
    if value.tzinfo is None:
        return value.isoformat(timespec="microseconds") + "Z"
    shown = value.isoformat(timespec="microseconds")
    if shown.endswith("+00:00"):
        return shown[:-6] + "Z"
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _canonical(value: object) -> object:
    return _utc_text(value) if isinstance(value, datetime) else value


#: Where the datetime columns are in each version's tuple (the only values re-encoded).
_DATETIMES = {
    version: tuple(
        i for i, name in enumerate(names) if isinstance(report_lineage.c[name].type, DateTime)
    )
    for version, names in DIGEST_COLUMNS.items()
}
_JSONS = tuple(
    i
    for i, name in enumerate(DIGEST_COLUMNS[DIGEST_VERSION])
    if isinstance(report_lineage.c[name].type, JSON)
)


def _selected(dialect: str, prefix: str = "") -> list[Any]:
    """The current digest columns as the sealer and the audit read them.

    JSON columns (and SQLite's datetimes, which are text there) are read raw and decoded with
    ``_decoded``: SQLAlchemy's per-value result processing (``json.loads``, a regex per SQLite
    datetime) was two thirds of the cost of sealing a row. The values are the same.
    """
    out: list[Any] = []
    for name in DIGEST_COLUMNS[DIGEST_VERSION]:
        column = report_lineage.c[name]
        raw = isinstance(column.type, JSON) or (
            dialect == "sqlite" and isinstance(column.type, DateTime)
        )
        out.append((cast(column, Text) if raw else column).label(prefix + name))
    return out


def _json(value: Any) -> Any:
    if not isinstance(value, str):
        return value  # a driver that decodes JSON itself (psycopg), or NULL
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:  # what orjson refuses (integers over 64 bits): the stdlib
        return json.loads(value)


def _decoded(row: Sequence[Any]) -> list[Any]:
    """Values read by ``_selected``, as SQLAlchemy's column types would have returned them."""
    values = list(row)
    for i in _JSONS:
        values[i] = _json(values[i])
    for i in _DATETIMES[DIGEST_VERSION]:
        if isinstance(values[i], str):
            values[i] = datetime.fromisoformat(values[i])
    return values


def _digest_of(row: Sequence[Any], version: int) -> str:
    """The digest of a row's values, given in the order of ``DIGEST_COLUMNS[version]``."""
    values = list(row)
    for i in _DATETIMES[version]:
        if values[i] is not None:
            values[i] = _utc_text(values[i])
    encoded = orjson.dumps(values, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(b"v%d\n" % version + encoded).hexdigest()


def row_digest(row: Mapping[Any, Any], version: int = DIGEST_VERSION) -> str:
    """The canonical digest of one ``report_lineage`` row (hex sha256).

    JSON columns come back as Python values on both databases and floats are IEEE doubles on
    both, so orjson (shortest round-trip floats, sorted keys) encodes a row read from SQLite
    and the same row read from PostgreSQL to the same bytes.
    """
    return _digest_of([row[name] for name in DIGEST_COLUMNS[version]], version)


class _SealHasher:
    """sha256(header || each row's id, labels and digest), in row id order."""

    def __init__(self, meta: Mapping[str, Any]) -> None:
        header = [
            "otel-lineage seal",
            meta["digest_version"],
            meta["seal_no"],
            meta["prev_hash"],
            _canonical(meta["sealed_at"]),
            meta["row_count"],
            meta["max_row_id"],
            bool(meta["exhaustive"]),
        ]
        self._hash = hashlib.sha256(orjson.dumps(header))

    def add(self, row_id: int, trace_id: str, report_id: str | None, digest: str) -> None:
        labels = f"{trace_id}\x00{report_id or ''}".encode()
        self._hash.update(_U64.pack(row_id) + bytes.fromhex(digest) + _U64.pack(len(labels)))
        self._hash.update(labels)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


# -- keys ----------------------------------------------------------------------------------------


def key_id(public_key: Ed25519PublicKey) -> str:
    """A key's id: sha256 of its raw 32 bytes (stored with each seal it signed)."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True)
class SealSigner:
    private_key: Ed25519PrivateKey
    key_id: str

    def sign(self, seal_hash: str) -> bytes:
        return self.private_key.sign(_SIGNED_PREFIX + bytes.fromhex(seal_hash))


def signature_holds(public_key: Ed25519PublicKey, seal_hash: str, signature: bytes) -> bool:
    try:
        public_key.verify(signature, _SIGNED_PREFIX + bytes.fromhex(seal_hash))
    except (InvalidSignature, ValueError):
        return False
    return True


def _read_key_file(variable: str, raw: str) -> bytes:
    path = Path(raw.strip()).expanduser()
    try:
        return path.read_bytes()
    except OSError as exc:
        raise LineageConfigError(
            f"{variable}={str(path)!r} cannot be read: {exc.strerror or type(exc).__name__}"
        ) from None


def load_signer(variable: str, raw: str) -> SealSigner:
    """The Ed25519 private key (PEM, unencrypted) of the file ``raw`` names."""
    data = _read_key_file(variable, raw)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        key = None
    if not isinstance(key, Ed25519PrivateKey):
        raise LineageConfigError(
            f"{variable}={raw.strip()!r} is not an unencrypted Ed25519 private key in PEM"
        )
    return SealSigner(key, key_id(key.public_key()))


def load_public_key(variable: str, raw: str) -> Ed25519PublicKey:
    """The Ed25519 public key (PEM) of the file ``raw`` names."""
    data = _read_key_file(variable, raw)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        key = None
    if not isinstance(key, Ed25519PublicKey):
        raise LineageConfigError(f"{variable}={raw.strip()!r} is not an Ed25519 public key in PEM")
    return key


@dataclass(frozen=True)
class SealSettings:
    """``OTEL_LINEAGE_SEAL_EVERY_S`` (0, the default: the writer does not seal) and the
    signing key of ``OTEL_LINEAGE_SEAL_KEY_FILE`` (unset: seals are unsigned)."""

    every_s: float
    signer: SealSigner | None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SealSettings:
        env = os.environ if environ is None else environ
        every = parse_number(env, SEAL_EVERY_VAR, float, 0.0, 0.0, 86_400.0)
        raw = env.get(KEY_FILE_VAR)
        signer = load_signer(KEY_FILE_VAR, raw) if raw and raw.strip() else None
        return cls(every_s=every, signer=signer)


def verifying_key(environ: Mapping[str, str] | None = None) -> Ed25519PublicKey | None:
    """The key ``audit --seals`` checks signatures with: the public key file, else the
    public half of the signing key, else none (signatures are then "not checked")."""
    env = os.environ if environ is None else environ
    raw = env.get(PUBLIC_KEY_FILE_VAR)
    if raw and raw.strip():
        return load_public_key(PUBLIC_KEY_FILE_VAR, raw)
    raw = env.get(KEY_FILE_VAR)
    if raw and raw.strip():
        return load_signer(KEY_FILE_VAR, raw).private_key.public_key()
    return None


# -- sealing -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SealResult:
    seal_no: int
    rows: int
    seal_hash: str
    key_id: str | None
    #: The seal took every row not yet sealed (False: cut at ``max_rows``, more are waiting).
    exhaustive: bool

    def as_dict(self) -> dict[str, object]:
        return {
            "seal": self.seal_no,
            "rows": self.rows,
            "seal_hash": self.seal_hash,
            "signed": self.key_id is not None,
            "key_id": self.key_id,
        }


@contextlib.contextmanager
def _sealing_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction no other sealer runs alongside (see the module docstring)."""
    with untraced(), engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        elif conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
        try:
            yield conn
        except BaseException:
            conn.rollback()
            raise
        conn.commit()


def _sealed_by() -> str:
    return f"{socket.gethostname()} pid {os.getpid()}"


def _unsealed(floor: int = 0) -> Any:
    """Rows above ``floor`` that no seal covers. The floor is on both sides of the anti-join
    so that PostgreSQL plans index range scans even before a table has statistics."""
    sr = lineage_seal_rows.c
    return (report_lineage.c.id > floor) & ~exists().where(
        sr.row_id == report_lineage.c.id, sr.row_id > floor
    )


def _floor(conn: Connection, cutoff: datetime) -> int:
    """Rows at or below this id are past sealing: the highest id of the seals made before
    ``cutoff`` (see ``seal``)."""
    s = lineage_seals.c
    last_old = select(func.max(s.seal_no)).where(s.sealed_at < cutoff).scalar_subquery()
    return int(conn.scalar(select(func.max(s.max_row_id)).where(s.seal_no <= last_old)) or 0)


def seal(
    engine: Engine,
    *,
    signer: SealSigner | None = None,
    max_rows: int = DEFAULT_MAX_ROWS,
    grace: timedelta = LATE_GRACE,
) -> SealResult | None:
    """Seal up to ``max_rows`` rows not sealed yet, in one seal; None when there are none.

    Only rows above the *floor* are looked at: the highest row id of the seals made more than
    ``grace`` ago. Ids are allocated at insert (SQLite: the next rowid; PostgreSQL: the
    sequence, with its default ``CACHE 1``), so a row with a lower id was being inserted
    before that seal, in a transaction that would have had to stay open for longer than the
    grace (the writer's deadlines are a minute); such a row is not sealed, and the audit names
    it as inserted after sealing. The floor keeps a periodic seal from re-reading every row
    sealed before (an anti-join over the whole table, a second per million rows).
    """
    now = datetime.now(UTC)
    with _sealing_transaction(engine) as conn:
        head = conn.execute(
            select(lineage_seals.c.seal_no, lineage_seals.c.seal_hash, lineage_seals.c.sealed_at)
            .order_by(lineage_seals.c.seal_no.desc())
            .limit(1)
        ).first()
        rows = conn.execute(
            select(*_selected(conn.dialect.name))
            .where(_unsealed(_floor(conn, now - grace)))
            .order_by(report_lineage.c.id)
            .limit(max_rows + 1)
        ).all()
        if not rows:
            return None
        exhaustive = len(rows) <= max_rows
        rows = rows[:max_rows]
        meta: dict[str, Any] = {
            "seal_no": 1 if head is None else head.seal_no + 1,
            "prev_hash": GENESIS if head is None else head.seal_hash,
            # Never before its predecessor, whatever the clocks of the sealing hosts say.
            "sealed_at": now if head is None else max(now, to_utc(head.sealed_at)),
            "digest_version": DIGEST_VERSION,
            "row_count": len(rows),
            "max_row_id": rows[-1].id,
            "exhaustive": exhaustive,
        }
        hasher = _SealHasher(meta)
        entries = []
        for row in rows:  # the values in the order of DIGEST_COLUMNS[DIGEST_VERSION]
            digest = _digest_of(_decoded(row), DIGEST_VERSION)
            hasher.add(row.id, row.trace_id, row.report_generation_id, digest)
            entries.append(
                {
                    "row_id": row.id,
                    "seal_no": meta["seal_no"],
                    "trace_id": row.trace_id,
                    "report_generation_id": row.report_generation_id,
                    "digest": digest,
                }
            )
        seal_hash = hasher.hexdigest()
        conn.execute(
            lineage_seals.insert(),
            {
                **meta,
                "seal_hash": seal_hash,
                "sealed_by": _sealed_by(),
                "key_id": signer.key_id if signer else None,
                "signature": signer.sign(seal_hash) if signer else None,
            },
        )
        conn.execute(lineage_seal_rows.insert(), entries)
    return SealResult(
        meta["seal_no"], len(rows), seal_hash, signer.key_id if signer else None, exhaustive
    )


def seal_all(
    engine: Engine, *, signer: SealSigner | None = None, max_rows: int = DEFAULT_MAX_ROWS
) -> list[SealResult]:
    """Seal every row not sealed yet, ``max_rows`` per seal."""
    results = []
    while (result := seal(engine, signer=signer, max_rows=max_rows)) is not None:
        results.append(result)
        if result.exhaustive:
            break
    return results


def writer_sealer(engine: Engine, signer: SealSigner | None) -> Callable[[], bool]:
    """What the background writer calls every ``OTEL_LINEAGE_SEAL_EVERY_S``: one seal; True
    when it was cut at its size and more rows are waiting (the writer then seals again)."""

    def run() -> bool:
        result = seal(engine, signer=signer)
        return result is not None and not result.exhaustive

    return run


# -- the audit -----------------------------------------------------------------------------------

VALID = "signature valid"
INVALID = "signature INVALID"
UNSIGNED = "unsigned"
NOT_CHECKED = "signature not checked (no public key)"


@dataclass
class SealAudit:
    """What ``audit --seals`` found. Rows are named by report id, trace id and row id."""

    seals: int = 0
    rows_covered: int = 0
    not_yet_sealed: int = 0
    chain_head: str | None = None
    modified: list[dict[str, Any]] = field(default_factory=list)
    deleted: list[dict[str, Any]] = field(default_factory=list)
    inserted: list[dict[str, Any]] = field(default_factory=list)
    broken: list[dict[str, Any]] = field(default_factory=list)
    signatures: list[dict[str, Any]] = field(default_factory=list)

    @property
    def signature_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for item in self.signatures:
            counts[item["result"]] = counts.get(item["result"], 0) + 1
        return counts

    @property
    def invalid_signatures(self) -> list[dict[str, Any]]:
        return [s for s in self.signatures if s["result"] == INVALID]

    @property
    def ok(self) -> bool:
        return not (
            self.modified or self.deleted or self.inserted or self.broken or self.invalid_signatures
        )

    def as_dict(self, limit: int | None = None) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "seals": self.seals,
            "rows_covered": self.rows_covered,
            "not_yet_sealed": self.not_yet_sealed,
            "chain_head": self.chain_head,
            "modified": self.modified[:limit],
            "deleted": self.deleted[:limit],
            "inserted_after_sealing": self.inserted[:limit],
            "broken_links": self.broken[:limit],
            "signature_counts": self.signature_counts,
            "signatures": self.signatures[:limit],
        }


def _ref(row_id: int, trace_id: str, report_id: str | None, seal_no: int | None) -> dict[str, Any]:
    return {
        "report_generation_id": report_id,
        "trace_id": trace_id,
        "row_id": row_id,
        "seal": seal_no,
    }


class _Lateness:
    """Whether a row is missing from a seal that should have taken it (module docstring)."""

    def __init__(self, seals: Sequence[Mapping[str, Any]], grace: timedelta) -> None:
        self._grace = grace
        #: For seal index i: (the seal before it, the latest exhaustive seal before it).
        self._before: list[tuple[Mapping[str, Any] | None, Mapping[str, Any] | None]] = []
        previous: Mapping[str, Any] | None = None
        exhaustive: Mapping[str, Any] | None = None
        for meta in [*seals, None]:
            self._before.append((previous, exhaustive))
            if meta is not None:
                previous = meta
                if meta["exhaustive"]:
                    exhaustive = meta

    def why(self, index: int, row_id: int, created_at: datetime | None) -> str | None:
        """For a row first sealed by seal ``index`` (``len(seals)``: not sealed)."""
        if created_at is None:
            return None
        created = to_utc(created_at)
        previous, exhaustive = self._before[index]
        for meta in (previous, exhaustive):
            if meta is None:
                continue
            would_take = meta["exhaustive"] or row_id < (meta["max_row_id"] or 0)
            if would_take and created < to_utc(meta["sealed_at"]) - self._grace:
                return (
                    f"created {_canonical(created)}, before seal #{meta['seal_no']} "
                    f"({_canonical(meta['sealed_at'])}), which does not cover it"
                )
        return None


def audit_seals(
    engine: Engine,
    *,
    public_key: Ed25519PublicKey | None = None,
    grace: timedelta = LATE_GRACE,
    batch: int = 20_000,
) -> SealAudit:
    """Recompute the chain and every sealed row's digest; see ``SealAudit``."""
    result = SealAudit()
    with untraced(), engine.connect() as conn:
        seals = [
            dict(m)
            for m in conn.execute(select(lineage_seals).order_by(lineage_seals.c.seal_no))
            .mappings()
            .all()
        ]
        result.seals = len(seals)
        result.chain_head = seals[-1]["seal_hash"] if seals else None
        _check_links(seals, result)
        _check_signatures(seals, public_key, result)
        lateness = _Lateness(seals, grace)
        cutoff = datetime.now(UTC) - grace
        past = [m for m in seals if to_utc(m["sealed_at"]) < cutoff and m["max_row_id"]]
        floor = max(past, key=lambda m: int(m["max_row_id"])) if past else None
        index = {meta["seal_no"]: i for i, meta in enumerate(seals)}
        recomputed = _check_rows(conn, seals, index, lateness, result, batch)
        _check_hashes(seals, recomputed, result)
        result.broken.sort(key=lambda item: int(item["seal"]))
        for row in conn.execute(
            select(
                report_lineage.c.id,
                report_lineage.c.trace_id,
                report_lineage.c.report_generation_id,
                report_lineage.c.created_at,
            )
            .where(_unsealed())
            .order_by(report_lineage.c.id)
        ):
            result.not_yet_sealed += 1
            why = lateness.why(len(seals), row.id, row.created_at)
            if why is None and floor is not None and row.id < floor["max_row_id"]:
                why = (
                    f"its row id is below those of seal #{floor['seal_no']} "
                    f"({_canonical(floor['sealed_at'])}): no seal will take it"
                )
            if why:
                ref = _ref(row.id, row.trace_id, row.report_generation_id, None)
                result.inserted.append({**ref, "why": f"not sealed; {why}"})
    return result


def _check_links(seals: Sequence[Mapping[str, Any]], result: SealAudit) -> None:
    previous_hash, expected = GENESIS, 1
    for meta in seals:
        number = meta["seal_no"]
        if number != expected:
            missing = f"#{expected}" if number == expected + 1 else f"#{expected} to #{number - 1}"
            result.broken.append({"seal": number, "problem": f"seal {missing} is missing"})
        elif meta["prev_hash"] != previous_hash:
            result.broken.append(
                {"seal": number, "problem": f"does not link to seal #{number - 1}'s hash"}
            )
        previous_hash, expected = meta["seal_hash"], number + 1


def _check_signatures(
    seals: Sequence[Mapping[str, Any]], public_key: Ed25519PublicKey | None, result: SealAudit
) -> None:
    expected_id = key_id(public_key) if public_key is not None else None
    for meta in seals:
        signature, signer_id = meta["signature"], meta["key_id"]
        if signature is None:
            outcome, detail = UNSIGNED, None
        elif public_key is None:
            outcome, detail = NOT_CHECKED, None
        elif signer_id != expected_id:
            outcome, detail = INVALID, f"signed by key {signer_id}, not by {expected_id}"
        elif not signature_holds(public_key, meta["seal_hash"], bytes(signature)):
            outcome, detail = INVALID, "the signature does not match the seal hash"
        else:
            outcome, detail = VALID, None
        item = {"seal": meta["seal_no"], "key_id": signer_id, "result": outcome}
        result.signatures.append({**item, "detail": detail} if detail else item)


#: Columns of the seal rows before the current values in the audit's query.
_LABELS = 5


def _check_rows(
    conn: Connection,
    seals: Sequence[Mapping[str, Any]],
    index: Mapping[int, int],
    lateness: _Lateness,
    result: SealAudit,
    batch: int,
) -> dict[int, tuple[str, int]]:
    """Stream every sealed row with its current values; returns each seal's recomputed hash
    and row count."""
    sr = lineage_seal_rows.c
    names = DIGEST_COLUMNS[DIGEST_VERSION]
    current = _selected(conn.dialect.name, "r_")
    created = names.index("created_at")
    query = (
        select(sr.seal_no, sr.row_id, sr.trace_id, sr.report_generation_id, sr.digest, *current)
        .select_from(lineage_seal_rows.outerjoin(report_lineage, report_lineage.c.id == sr.row_id))
        .order_by(sr.seal_no, sr.row_id)
    )
    hashes: dict[int, tuple[str, int]] = {}
    hasher: _SealHasher | None = None
    group: int | None = None
    count = 0
    orphans: dict[int, int] = {}

    def close() -> None:
        if group is not None and hasher is not None:
            hashes[group] = (hasher.hexdigest(), count)

    rows = conn.execution_options(yield_per=batch).execute(query)
    for row in rows:
        number = row.seal_no
        if number != group:
            close()
            group, count = number, 0
            position = index.get(number)
            hasher = _SealHasher(seals[position]) if position is not None else None
        if hasher is None:
            orphans[number] = orphans.get(number, 0) + 1
            continue
        count += 1
        result.rows_covered += 1
        hasher.add(row.row_id, row.trace_id, row.report_generation_id, row.digest)
        if row.r_id is None:
            result.deleted.append(_ref(row.row_id, row.trace_id, row.report_generation_id, number))
            continue
        version = seals[index[number]]["digest_version"]
        values = _decoded(row[_LABELS:])
        if version == DIGEST_VERSION:
            digest = _digest_of(values, version)
        elif version in DIGEST_COLUMNS:  # an older version seals a subset of today's columns
            digest = row_digest(dict(zip(names, values, strict=True)), version)
        else:
            continue  # reported once per seal by _check_hashes
        if digest != row.digest:
            result.modified.append(_ref(row.row_id, row.trace_id, row.report_generation_id, number))
        why = lateness.why(index[number], row.row_id, values[created])
        if why:
            ref = _ref(row.row_id, row.trace_id, row.report_generation_id, number)
            result.inserted.append({**ref, "why": f"sealed by seal #{number}; {why}"})
    close()
    for number, orphaned in sorted(orphans.items()):
        result.broken.append(
            {"seal": number, "problem": f"{orphaned} sealed rows name a seal that does not exist"}
        )
    return hashes


def _check_hashes(
    seals: Sequence[Mapping[str, Any]], recomputed: Mapping[int, tuple[str, int]], result: SealAudit
) -> None:
    for position, meta in enumerate(seals):
        number = meta["seal_no"]
        if meta["digest_version"] not in DIGEST_COLUMNS:
            result.broken.append(
                {"seal": number, "problem": f"unknown digest version {meta['digest_version']}"}
            )
            continue
        actual, count = recomputed.get(number, (_SealHasher(meta).hexdigest(), 0))
        if actual == meta["seal_hash"]:
            continue
        following = seals[position + 1] if position + 1 < len(seals) else None
        if count != meta["row_count"]:
            problem = f"covers {count} rows, its record says {meta['row_count']}"
        elif following is not None and following["prev_hash"] == actual:
            problem = "its stored hash was altered (its rows and successor agree)"
        else:
            problem = "its hash does not match its rows and record"
        result.broken.append({"seal": number, "problem": problem})
