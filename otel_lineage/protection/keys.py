"""Snapshot encryption keys: master keys from a file, one data key per business.

Two levels, so that erasing one business and rotating the master key are both cheap:

- **Master keys** live outside the database, in the file named by
  ``OTEL_LINEAGE_SNAPSHOT_KEY_FILE``: one key a line, ``<key id>:<base64 of 32 bytes>``
  (``#`` comments and blank lines allowed); the **last** line is the current key, which wraps
  new data keys. Older lines stay so that keys they wrapped can still be unwrapped until
  ``otel-lineage keys rotate`` re-wraps them. The file must not be readable by group or others
  (like an ssh key): a key anyone can read protects nothing, so such a file is refused.
- **Data keys**: one random 32-byte key per business, in ``lineage_business_keys``, wrapped
  (AES-256-GCM, associated data = the key row id and business id, so a wrapped key cannot be
  moved to another business unnoticed) under a master key whose id is stored with it.
  Rotating the master key re-wraps 32 bytes per business, never the snapshots. Destroying a
  business's data key (``forget``) makes every snapshot encrypted with it unreadable, wherever
  copies of the ciphertext went.

No key material ever appears in a message, a log line or an exception.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import stat
import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Connection, Integer, Row, TextualSelect, bindparam, select, text, update

from otel_lineage.delivery.schema import lineage_business_keys
from otel_lineage.settings import LineageConfigError

KEY_FILE_VARIABLE = "OTEL_LINEAGE_SNAPSHOT_KEY_FILE"
KEY_BYTES = 32
NONCE_BYTES = 12
#: Largest key file read (thousands of keys; anything bigger is not a key file).
_MAX_FILE_BYTES = 1 << 20
_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_WRAP_CONTEXT = b"otel-lineage business data key\x00"


class KeyUnavailableError(LookupError):
    """A key needed to read or write a snapshot is not configured, or was destroyed."""


@dataclass(frozen=True)
class Keyring:
    """The master keys of the key file; ``current_id`` (its last line) wraps new data keys."""

    path: Path
    keys: Mapping[str, bytes]
    current_id: str

    def master(self, key_id: str) -> bytes | None:
        return self.keys.get(key_id)

    @property
    def current(self) -> bytes:
        return self.keys[self.current_id]


def parse_key_file(path: Path, variable: str = KEY_FILE_VARIABLE) -> Keyring:
    """Read and check a key file; ``LineageConfigError`` (one line naming ``variable``) if bad."""
    where = f"{variable}={str(path)!r}"
    try:
        info = path.stat()
    except OSError as exc:
        raise LineageConfigError(f"{where}: cannot read the key file: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise LineageConfigError(f"{where}: not a regular file")
    if info.st_mode & 0o077:
        raise LineageConfigError(
            f"{where}: the key file is accessible to group or others (mode "
            f"{stat.S_IMODE(info.st_mode):04o}): chmod 600 it"
        )
    if info.st_size > _MAX_FILE_BYTES:
        raise LineageConfigError(f"{where}: {info.st_size} bytes is too large for a key file")
    try:
        content = path.read_bytes().decode("ascii")
    except OSError as exc:
        raise LineageConfigError(f"{where}: cannot read the key file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise LineageConfigError(f"{where}: the key file is not ASCII text") from None
    keys: dict[str, bytes] = {}
    current = None
    for number, line in enumerate(content.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key_id, sep, encoded = line.partition(":")
        key_id = key_id.strip()
        if not sep or not _KEY_ID.fullmatch(key_id):
            raise LineageConfigError(
                f"{where}: line {number} is not '<key id>:<base64 of {KEY_BYTES} bytes>' (key "
                "ids: letters, digits, '.', '_', '-', at most 64)"
            )
        try:
            key = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if len(key) != KEY_BYTES:
            raise LineageConfigError(
                f"{where}: line {number} (key {key_id!r}) is not the base64 of {KEY_BYTES} bytes"
            )
        if key_id in keys:
            raise LineageConfigError(f"{where}: key id {key_id!r} appears twice")
        keys[key_id] = key
        current = key_id
    if current is None:
        raise LineageConfigError(f"{where}: the key file holds no key")
    return Keyring(path=path, keys=keys, current_id=current)


def keyring_from_env(environ: Mapping[str, str] | None = None) -> Keyring | None:
    """The key file named by ``OTEL_LINEAGE_SNAPSHOT_KEY_FILE``; None when it is unset."""
    env = os.environ if environ is None else environ
    raw = env.get(KEY_FILE_VARIABLE, "").strip()
    return parse_key_file(Path(raw)) if raw else None


_cache_lock = threading.Lock()
_cached: tuple[tuple[str, int, int], Keyring] | None = None


def current_keyring() -> Keyring | None:
    """``keyring_from_env`` for readers, parsed again only when the file changed.

    A long-running reader (the web service) must see a rotated key file without a restart and
    must not re-read and re-check it on every request.
    """
    global _cached
    raw = os.environ.get(KEY_FILE_VARIABLE, "").strip()
    if not raw:
        return None
    try:
        info = Path(raw).stat()
    except OSError:
        return parse_key_file(Path(raw))  # names the variable and the reason
    signature = (raw, info.st_mtime_ns, info.st_size)
    with _cache_lock:
        if _cached is not None and _cached[0] == signature:
            return _cached[1]
    keyring = parse_key_file(Path(raw))
    with _cache_lock:
        _cached = (signature, keyring)
    return keyring


# -- wrapping ------------------------------------------------------------------------------------


def _wrap_context(key_row_id: str, business_id: int) -> bytes:
    return _WRAP_CONTEXT + f"{key_row_id}\x00{business_id}".encode()


def wrap(master: bytes, data_key: bytes, *, key_row_id: str, business_id: int) -> bytes:
    """``data_key`` encrypted under ``master``: nonce followed by ciphertext and tag."""
    nonce = os.urandom(NONCE_BYTES)
    context = _wrap_context(key_row_id, business_id)
    return nonce + AESGCM(master).encrypt(nonce, data_key, context)


def unwrap(master: bytes, wrapped: bytes, *, key_row_id: str, business_id: int) -> bytes:
    """The data key; ``InvalidTag`` when ``master`` is not the key that wrapped it."""
    nonce, sealed = wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:]
    return AESGCM(master).decrypt(nonce, sealed, _wrap_context(key_row_id, business_id))


# -- business keys -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BusinessKey:
    """The live data key row of a business (still wrapped)."""

    id: str
    business_id: int
    master_key_id: str
    wrapped_key: bytes


@dataclass
class BusinessKeys:
    """What the key table says about some businesses: live keys, and when each was erased."""

    live: dict[int, BusinessKey]
    #: The latest ``forget`` of each business: rows written before it stay erased.
    erased_at: dict[int, datetime]


_KEY_COLUMNS = (
    lineage_business_keys.c.id,
    lineage_business_keys.c.business_id,
    lineage_business_keys.c.master_key_id,
    lineage_business_keys.c.wrapped_key,
    lineage_business_keys.c.destroyed_at,
)
_SELECT_KEYS = (
    "SELECT id, business_id, master_key_id, wrapped_key, destroyed_at "
    "FROM lineage_business_keys WHERE business_id IN :ids"
)
#: Whether any business has a live wrapped key: the database encrypts snapshots.
_ANY_LIVE = "SELECT id FROM lineage_business_keys WHERE wrapped_key IS NOT NULL LIMIT 1"


def _keys_statement(sql: str) -> TextualSelect:
    """Built once: a ``select()`` built per call cost the writer more CPU per batch (its
    construction and cache key) than the query itself."""
    ids = bindparam("ids", expanding=True, type_=Integer)
    return text(sql).bindparams(ids).columns(*_KEY_COLUMNS)


_KEYS = _keys_statement(_SELECT_KEYS)
_KEYS_FOR_SHARE = _keys_statement(f"{_SELECT_KEYS} FOR SHARE")  # PostgreSQL only
_KEYS_AND_ANY_LIVE = _keys_statement(f"{_SELECT_KEYS} OR id = ({_ANY_LIVE})")


def load_business_keys(
    conn: Connection, business_ids: Iterable[int], *, lock: bool = False
) -> BusinessKeys:
    """The key rows of ``business_ids``.

    ``lock`` takes a share lock on PostgreSQL (SQLite serialises writers anyway): a writer
    encrypting under a key holds ``forget`` off until its transaction ends, so nothing is
    written under a key destroyed in between.
    """
    ids = sorted(set(business_ids))
    if not ids:
        return BusinessKeys(live={}, erased_at={})
    locking = lock and conn.dialect.name == "postgresql"
    rows = conn.execute(_KEYS_FOR_SHARE if locking else _KEYS, {"ids": ids})
    return _business_keys(rows, set(ids))


def load_business_keys_and_any_live(
    conn: Connection, business_ids: Iterable[int]
) -> tuple[BusinessKeys, bool]:
    """The key rows of ``business_ids`` and whether any business has a live key, in one
    statement: what a writer without a key file asks of every batch it stores."""
    ids = sorted(set(business_ids))
    rows = list(conn.execute(_KEYS_AND_ANY_LIVE, {"ids": ids}))
    any_live = any(row.wrapped_key is not None for row in rows)
    return _business_keys(rows, set(ids)), any_live


def _business_keys(rows: Iterable[Row[Any]], ids: set[int]) -> BusinessKeys:
    keys = BusinessKeys(live={}, erased_at={})
    for row in rows:
        if row.business_id not in ids:
            continue  # the live key _KEYS_AND_ANY_LIVE found for another business
        if row.destroyed_at is None:
            keys.live[row.business_id] = BusinessKey(
                row.id, row.business_id, row.master_key_id, bytes(row.wrapped_key)
            )
        else:
            erased = _aware(row.destroyed_at)
            previous = keys.erased_at.get(row.business_id)
            keys.erased_at[row.business_id] = erased if previous is None else max(previous, erased)
    return keys


_CREATE = text(
    "INSERT INTO lineage_business_keys (id, business_id, master_key_id, wrapped_key, "
    "created_at) VALUES (:id, :business_id, :master_key_id, :wrapped_key, :created_at) "
    "ON CONFLICT (business_id) WHERE destroyed_at IS NULL DO NOTHING"
).bindparams(
    bindparam("id", type_=lineage_business_keys.c.id.type),
    bindparam("business_id", type_=lineage_business_keys.c.business_id.type),
    bindparam("master_key_id", type_=lineage_business_keys.c.master_key_id.type),
    bindparam("wrapped_key", type_=lineage_business_keys.c.wrapped_key.type),
    bindparam("created_at", type_=lineage_business_keys.c.created_at.type),
)


def create_business_keys(
    conn: Connection, keyring: Keyring, business_ids: Iterable[int]
) -> dict[int, BusinessKey]:
    """A live data key for each business that has none, under the current master key.

    Two writers may create a business's first key at once: the partial unique index keeps
    one, and both read back the winner (ON CONFLICT DO NOTHING, then select).
    """
    ids = sorted(set(business_ids))
    if not ids:
        return {}
    now = datetime.now(UTC)
    rows = []
    for business_id in ids:
        key_row_id = str(uuid.uuid4())
        wrapped = wrap(
            keyring.current, os.urandom(KEY_BYTES), key_row_id=key_row_id, business_id=business_id
        )
        rows.append(
            {
                "id": key_row_id,
                "business_id": business_id,
                "master_key_id": keyring.current_id,
                "wrapped_key": wrapped,
                "created_at": now,
            }
        )
    conn.execute(_CREATE, rows)
    return load_business_keys(conn, ids, lock=True).live


def open_data_key(keyring: Keyring | None, key: BusinessKey) -> bytes:
    """The plaintext data key; ``KeyUnavailableError`` saying which master key is missing."""
    master = keyring.master(key.master_key_id) if keyring is not None else None
    if master is None:
        where = (
            f"which is not configured ({KEY_FILE_VARIABLE})"
            if keyring is None
            else f"which is not in the key file {keyring.path} ({KEY_FILE_VARIABLE})"
        )
        raise KeyUnavailableError(f"master key {key.master_key_id}, {where}")
    try:
        return unwrap(master, key.wrapped_key, key_row_id=key.id, business_id=key.business_id)
    except InvalidTag:
        raise KeyUnavailableError(
            f"master key {key.master_key_id}, but the key file's key of that id does not "
            f"open business {key.business_id}'s data key (a different key under the same id?)"
        ) from None


# -- rotation and destruction --------------------------------------------------------------------


@dataclass(frozen=True)
class RotateResult:
    rewrapped: int
    already_current: int
    current_id: str
    #: Master key ids that wrap live data keys but are not in the key file: those keys could
    #: not be re-wrapped (their snapshots are unreadable until the key is back in the file).
    missing: Mapping[str, int]


def rotate(conn: Connection, keyring: Keyring) -> RotateResult:
    """Re-wrap every live business key under the current master key, in ``conn``'s transaction.

    This is what rotating the master key means here: 32 bytes per business, whatever the
    volume of snapshots. Afterwards the older master keys can leave the key file (and the
    backups they protect become unreadable with them).
    """
    k = lineage_business_keys.c
    rows = conn.execute(
        select(k.id, k.business_id, k.master_key_id, k.wrapped_key)
        .where(k.destroyed_at.is_(None))
        .with_for_update()
    ).all()
    rewrapped = current = 0
    missing: dict[str, int] = {}
    now = datetime.now(UTC)
    for row in rows:
        if row.master_key_id == keyring.current_id:
            current += 1
            continue
        key = BusinessKey(row.id, row.business_id, row.master_key_id, bytes(row.wrapped_key))
        try:
            data_key = open_data_key(keyring, key)
        except KeyUnavailableError:
            missing[key.master_key_id] = missing.get(key.master_key_id, 0) + 1
            continue
        conn.execute(
            update(lineage_business_keys)
            .where(k.id == key.id, k.destroyed_at.is_(None))
            .values(
                master_key_id=keyring.current_id,
                wrapped_key=wrap(
                    keyring.current, data_key, key_row_id=key.id, business_id=key.business_id
                ),
                rotated_at=now,
            )
        )
        rewrapped += 1
    return RotateResult(
        rewrapped=rewrapped, already_current=current, current_id=keyring.current_id, missing=missing
    )


def destroy_business_key(conn: Connection, business_id: int, now: datetime) -> bool:
    """Delete the business's wrapped data key, keep a tombstone; whether a live key existed.

    A business that never had a key (encryption was off) still gets a tombstone: it records
    the erasure, which readers and the writer honour for rows written before it.
    """
    k = lineage_business_keys.c
    destroyed = conn.execute(
        update(lineage_business_keys)
        .where(k.business_id == business_id, k.destroyed_at.is_(None))
        .values(wrapped_key=None, destroyed_at=now)
    ).rowcount
    if not destroyed:
        conn.execute(
            lineage_business_keys.insert().values(
                id=str(uuid.uuid4()), business_id=business_id, created_at=now, destroyed_at=now
            )
        )
    return bool(destroyed)


def _aware(value: datetime) -> datetime:
    """SQLite returns naive UTC times."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)
