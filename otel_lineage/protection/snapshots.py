"""Input snapshots stored once per business and content, encrypted at rest, erasable.

**Writing** (``SnapshotStore.prepare``, on the writer thread inside the upsert's transaction):
a record's snapshot (already zstd-compressed by the fold) moves from the ``report_lineage``
row to ``lineage_snapshots`` under (business_id, inputs_sha256); the row keeps the digest and
says ``inputs_snapshot_shared``. A hundred reports of an unchanged business store one snapshot.
With a key file configured the stored bytes are AES-256-GCM of the compressed snapshot (compress
then encrypt: ciphertext does not compress) under the business's data key, with a random
96-bit nonce and associated data = business id and inputs sha256, so a ciphertext copied to
another business or digest fails to decrypt instead of being served as that report's inputs.
The insert is ``ON CONFLICT DO NOTHING``, except that an encrypted copy replaces a plaintext one
stored before encryption was turned on.

**Reading** (``attach`` from ``reading.query.read_row``, then ``snapshot_blob``): the row is
given its stored snapshot and key row; ``snapshot_blob`` returns the compressed plaintext or
raises ``SnapshotUnreadableError`` with one line saying which key is absent or destroyed.

**Erasing** (``forget``): the business's data key is destroyed (a tombstone remains), its
stored snapshots deleted and its inline (pre-0010) snapshots cleared. Lineage rows, their
digests and seals stay. A row written before the erasure stays erased even if a later report
stores the same content again, and a record folded before it and delivered after (it waited in
an outbox) is stored without its snapshot.

The snapshot never appears in a message; only ids, digests and dates do.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Connection, Engine, bindparam, delete, func, select, text, update

from otel_lineage.delivery.schema import lineage_business_keys, lineage_snapshots, report_lineage
from otel_lineage.protection.keys import (
    KEY_FILE_VARIABLE,
    NONCE_BYTES,
    BusinessKey,
    Keyring,
    KeyUnavailableError,
    create_business_keys,
    current_keyring,
    destroy_business_key,
    load_business_keys,
    load_business_keys_and_any_live,
    open_data_key,
)
from otel_lineage.ratelimit import RateLimitedLogger
from otel_lineage.settings import LineageConfigError

_log = RateLimitedLogger(logging.getLogger(__name__))
PLAIN_CODEC = "zstd"
ENCRYPTED_CODEC = "zstd+aes-256-gcm"
#: The key ``attach`` adds to a row read by ``read_row`` (never shown: ``public_row`` drops it).
SNAPSHOT_FIELD = "protected_snapshot"
SHARED_COLUMN = "inputs_snapshot_shared"
#: The fold's reason for a snapshot whose bytes do not hash to the recorded digest.
DIGEST_MISMATCH = "inputs_snapshot_sha256_mismatch"


class SnapshotUnreadableError(Exception):
    """The stored snapshot exists (or existed) but cannot be read; the message says why."""


def associated_data(business_id: int, inputs_sha256: str) -> bytes:
    """What binds a ciphertext to its place: the business and the digest of its plaintext."""
    return f"otel-lineage snapshot\x00{business_id}\x00{inputs_sha256}".encode()


_INSERT = text(
    "INSERT INTO lineage_snapshots (business_id, inputs_sha256, codec, key_id, nonce, data, "
    "created_at) VALUES (:business_id, :inputs_sha256, :codec, :key_id, :nonce, :data, "
    ":created_at) ON CONFLICT (business_id, inputs_sha256) DO UPDATE SET "
    "codec = excluded.codec, key_id = excluded.key_id, nonce = excluded.nonce, "
    "data = excluded.data WHERE lineage_snapshots.key_id IS NULL AND excluded.key_id IS NOT NULL"
).bindparams(*(bindparam(c.name, type_=c.type) for c in lineage_snapshots.columns))


class SnapshotStore:
    """The writer's side: moves snapshots out of rows into ``lineage_snapshots``.

    Unwrapped data keys are cached by key id (a key id's data key never changes; rotation only
    re-wraps it), so a batch costs one key-table read plus one AES-GCM pass per snapshot.
    """

    def __init__(self, keyring: Keyring | None) -> None:
        self.keyring = keyring
        self._ciphers: dict[str, AESGCM] = {}
        self._encrypting_db = False  # seen a live business key while this store had no keyring

    def _encryption_on(self, any_live_key: bool) -> bool:
        """Whether this database encrypts snapshots (a live business key exists), for a writer
        without a key file: it must then not store any snapshot in clear. Once seen, it stays
        on (keys are only ever destroyed one business at a time)."""
        if any_live_key and not self._encrypting_db:
            self._encrypting_db = True
            _log.warning(
                "the lineage database encrypts input snapshots but %s is not set here: "
                "snapshots are stored without their content until it is",
                KEY_FILE_VARIABLE,
            )
        return self._encrypting_db

    def prepare(self, conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
        """Store the snapshots of ``rows`` (``report_lineage`` values) and clear them there."""
        owned = []
        for row in rows:
            if row.get("inputs_snapshot") is None:
                continue
            if _shareable(row):
                owned.append(row)
            elif self.keyring is not None:
                _drop(row, "snapshot_not_stored:not_shareable")  # never kept in clear
        if not owned:
            return
        businesses = {int(r["business_id"]) for r in owned}
        if self.keyring is None:
            keys, any_live_key = load_business_keys_and_any_live(conn, businesses)
            if self._encryption_on(any_live_key):
                for row in owned:  # never in clear where the others are encrypted
                    _drop(row, "snapshot_not_stored:key_file_not_configured")
                return
        else:
            keys = load_business_keys(conn, businesses, lock=True)
            keys.live.update(create_business_keys(conn, self.keyring, businesses - set(keys.live)))
        stored: dict[tuple[int, str], dict[str, Any]] = {}
        for row in owned:
            business_id, digest = int(row["business_id"]), str(row["inputs_sha256"])
            erased = keys.erased_at.get(business_id)
            if erased is not None and _aware(row["created_at"]) < erased:
                row["inputs_snapshot"] = None  # folded before its business was erased
                row[SHARED_COLUMN] = True
                continue
            blob = bytes(row["inputs_snapshot"])
            snapshot: dict[str, Any] = {
                "business_id": business_id,
                "inputs_sha256": digest,
                "codec": PLAIN_CODEC,
                "key_id": None,
                "nonce": None,
                "data": blob,
                "created_at": datetime.now(UTC),
            }
            if self.keyring is not None:
                key = keys.live[business_id]
                try:
                    cipher = self._cipher(key)
                except KeyUnavailableError:
                    _drop(row, f"snapshot_not_stored:master_key_absent:{key.master_key_id}")
                    continue
                nonce = os.urandom(NONCE_BYTES)
                snapshot.update(
                    codec=ENCRYPTED_CODEC,
                    key_id=key.id,
                    nonce=nonce,
                    data=cipher.encrypt(nonce, blob, associated_data(business_id, digest)),
                )
            stored[(business_id, digest)] = snapshot
            row["inputs_snapshot"] = None
            row[SHARED_COLUMN] = True
        if stored:
            conn.execute(_INSERT, list(stored.values()))

    def _cipher(self, key: BusinessKey) -> AESGCM:
        cipher = self._ciphers.get(key.id)
        if cipher is None:
            cipher = self._ciphers[key.id] = AESGCM(open_data_key(self.keyring, key))
        return cipher


def _shareable(row: Mapping[str, Any]) -> bool:
    """Whether the snapshot may be stored under (business_id, inputs_sha256).

    A snapshot the fold found not to match its digest stays with its own row (inline, or not
    at all when encryption is on): filed under the digest it does not have, it would be served
    as the inputs of every other report with that digest.
    """
    return (
        row.get("business_id") is not None
        and bool(row.get("inputs_sha256"))
        and DIGEST_MISMATCH not in (row.get("incomplete_reasons") or ())
    )


def _drop(row: dict[str, Any], reason: str) -> None:
    """Store the row without its snapshot, and say so (the digest is kept)."""
    row["inputs_snapshot"] = None
    row["complete"] = False
    row["incomplete_reasons"] = [*row.get("incomplete_reasons", []), reason]


# -- reading -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredSnapshot:
    """A row's entry in ``lineage_snapshots`` (None when it is gone) and its key state."""

    codec: str | None
    key_id: str | None
    nonce: bytes | None
    data: bytes | None
    key: BusinessKey | None
    key_destroyed_at: datetime | None
    erased_at: datetime | None


def attach(conn: Connection, row: dict[str, Any]) -> None:
    """Give a row read from ``report_lineage`` its shared snapshot (two small reads)."""
    if not row.get(SHARED_COLUMN) or row.get("inputs_snapshot") is not None:
        return
    business_id, digest = row.get("business_id"), row.get("inputs_sha256")
    if business_id is None or digest is None:
        return
    s = lineage_snapshots.c
    found = conn.execute(
        select(s.codec, s.key_id, s.nonce, s.data).where(
            s.business_id == business_id, s.inputs_sha256 == digest
        )
    ).first()
    erased = load_business_keys(conn, [int(business_id)]).erased_at.get(int(business_id))
    key, destroyed = None, None
    if found is not None and found.key_id is not None:
        k = lineage_business_keys.c
        key_row = conn.execute(
            select(k.id, k.business_id, k.master_key_id, k.wrapped_key, k.destroyed_at).where(
                k.id == found.key_id
            )
        ).first()
        if key_row is not None and key_row.wrapped_key is not None:
            key = BusinessKey(
                key_row.id, key_row.business_id, key_row.master_key_id, bytes(key_row.wrapped_key)
            )
        elif key_row is not None:
            destroyed = _aware(key_row.destroyed_at)
    row[SNAPSHOT_FIELD] = StoredSnapshot(
        codec=None if found is None else found.codec,
        key_id=None if found is None else found.key_id,
        nonce=None if found is None or found.nonce is None else bytes(found.nonce),
        data=None if found is None else bytes(found.data),
        key=key,
        key_destroyed_at=destroyed,
        erased_at=erased,
    )


def has_snapshot(row: Mapping[str, Any]) -> bool:
    """Whether the row has (or had, before an erasure) a stored snapshot."""
    return row.get("inputs_snapshot") is not None or bool(row.get(SHARED_COLUMN))


def is_encrypted(row: Mapping[str, Any]) -> bool:
    stored = row.get(SNAPSHOT_FIELD)
    return isinstance(stored, StoredSnapshot) and stored.codec == ENCRYPTED_CODEC


def snapshot_blob(row: Mapping[str, Any]) -> tuple[bytes, str]:
    """The row's compressed snapshot and its compression codec, decrypted if need be.

    Inline snapshots (rows written before revision 0010) are returned as stored. Raises
    ``SnapshotUnreadableError`` (one line, no snapshot content) when the key is absent or was
    destroyed, or the ciphertext does not decrypt.
    """
    inline = row.get("inputs_snapshot")
    if inline is not None:
        return bytes(inline), row.get("inputs_codec") or PLAIN_CODEC
    report = row.get("report_generation_id")
    business = row.get("business_id")
    stored = row.get(SNAPSHOT_FIELD)
    if not isinstance(stored, StoredSnapshot):
        raise SnapshotUnreadableError(f"report {report} has no stored input snapshot")
    erased = stored.erased_at
    if erased is not None and _aware(row["created_at"]) < erased:
        raise _destroyed(report, business, erased)
    if stored.data is None:
        raise SnapshotUnreadableError(
            f"the input snapshot of report {report} is missing from lineage_snapshots"
        )
    if stored.codec == PLAIN_CODEC:
        return stored.data, PLAIN_CODEC
    if stored.codec != ENCRYPTED_CODEC:
        raise SnapshotUnreadableError(
            f"the input snapshot of report {report} has an unknown codec {stored.codec!r}"
        )
    if stored.key is None:
        raise _destroyed(report, business, stored.key_destroyed_at)
    try:
        cipher = AESGCM(open_data_key(current_keyring(), stored.key))
    except KeyUnavailableError as exc:
        raise SnapshotUnreadableError(
            f"the input snapshot of report {report} is encrypted with {exc}"
        ) from None
    except LineageConfigError as exc:
        raise SnapshotUnreadableError(
            f"the input snapshot of report {report} is encrypted and the key file is "
            f"unusable: {exc}"
        ) from None
    try:
        plain = cipher.decrypt(
            stored.nonce or b"",
            stored.data,
            associated_data(int(row["business_id"]), row["inputs_sha256"]),
        )
    except InvalidTag:
        raise SnapshotUnreadableError(
            f"the stored input snapshot of report {report} does not decrypt: it was altered "
            "or does not belong to this business and digest"
        ) from None
    return plain, PLAIN_CODEC


def _destroyed(report: object, business: object, when: datetime | None) -> SnapshotUnreadableError:
    on = f" on {when.isoformat(timespec='seconds')}" if when is not None else ""
    return SnapshotUnreadableError(
        f"the input snapshot of report {report} is erased: business {business}'s key was "
        f"destroyed{on} (forget): the snapshot cannot be read"
    )


# -- encrypting what was stored in clear ---------------------------------------------------------


@dataclass(frozen=True)
class EncryptResult:
    #: Shared snapshots stored in clear (before the key file was configured), now encrypted.
    shared: int
    #: Rows from before revision 0010 whose inline snapshot moved, encrypted, to the shared store.
    inline: int
    #: Inline snapshots left as they are: no business id or digest, or not matching the digest.
    left_inline: int


#: Snapshots encrypted per transaction (each commits, so a long run can be interrupted).
ENCRYPT_CHUNK = 500


def encrypt_existing(engine: Engine, keyring: Keyring) -> EncryptResult:
    """Encrypt every snapshot still stored in clear, in transactions of ``ENCRYPT_CHUNK``.

    Run by ``keys rotate``: turning encryption on must not leave the snapshots written before
    it readable by anyone with a backup. The writer's own path (``SnapshotStore.prepare``) does
    the work, so the result is exactly what a new report would store. Only unsealed columns of
    ``report_lineage`` change (the inline blob and ``inputs_snapshot_shared``); a snapshot that
    cannot be shared stays inline, in clear, and is counted. On SQLite the clear copies are
    overwritten in the file too (as by ``forget``). Call it inside ``untraced()``.
    """
    store = SnapshotStore(keyring)
    s, c = lineage_snapshots.c, report_lineage.c
    shared = inline = 0
    while True:
        with engine.begin() as conn:
            _secure_delete(conn)
            clear = conn.execute(
                select(s.business_id, s.inputs_sha256, s.data)
                .where(s.key_id.is_(None))
                .limit(ENCRYPT_CHUNK)
            ).all()
            if not clear:
                break
            now = datetime.now(UTC)
            rows = [
                {
                    "business_id": r.business_id,
                    "inputs_sha256": r.inputs_sha256,
                    "inputs_snapshot": bytes(r.data),
                    "incomplete_reasons": [],
                    "created_at": now,
                }
                for r in clear
            ]
            store.prepare(conn, rows)
            if any(SHARED_COLUMN not in row for row in rows):
                raise KeyUnavailableError(
                    "a business key is wrapped by a master key not in the file"
                )
            shared += len(rows)
    last_id = 0
    while True:
        with engine.begin() as conn:
            _secure_delete(conn)
            found = conn.execute(
                select(
                    c.id,
                    c.business_id,
                    c.inputs_sha256,
                    c.inputs_snapshot,
                    c.incomplete_reasons,
                    c.created_at,
                )
                .where(c.inputs_snapshot.is_not(None), c.id > last_id)
                .order_by(c.id)
                .limit(ENCRYPT_CHUNK)
            ).all()
            if not found:
                break
            last_id = found[-1].id
            rows = [
                {**r._asdict(), "inputs_snapshot": bytes(r.inputs_snapshot)}
                for r in found
                if _shareable(r._asdict())
            ]
            store.prepare(conn, rows)
            moved = [{"row_id": r["id"]} for r in rows if r.get(SHARED_COLUMN)]
            if moved:
                conn.execute(
                    update(report_lineage)
                    .where(c.id == bindparam("row_id"))
                    .values(inputs_snapshot=None, inputs_snapshot_shared=True),
                    moved,
                )
            inline += len(moved)
    _checkpoint(engine)
    with engine.connect() as conn:
        left = conn.scalar(
            select(func.count()).select_from(report_lineage).where(c.inputs_snapshot.is_not(None))
        )
    return EncryptResult(shared=shared, inline=inline, left_inline=int(left or 0))


# -- erasure -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ForgetResult:
    business_id: int
    destroyed_at: datetime
    #: A live data key existed and was destroyed (False: encryption was never on for it).
    key_destroyed: bool
    snapshots_deleted: int
    inline_cleared: int
    rows: int


def forget(
    engine: Engine,
    business_id: int,
    audit: Callable[[Connection, ForgetResult], None] | None = None,
) -> ForgetResult:
    """Erase a business's input snapshots (one transaction); rows and digests stay.

    Run it inside ``delivery.store.untraced()`` like every lineage statement (not imported
    here: the store imports this module).

    The data key goes first: on PostgreSQL its row lock waits for any writer still encrypting
    under it. The ciphertext is deleted too (useless without the key, and without it a later
    report of the same content can be stored afresh). Inline snapshots of rows older than
    revision 0010 are cleared and the rows marked shared, so readers say "destroyed" for them
    as well. On SQLite ``secure_delete`` zeroes the freed space and a truncating checkpoint
    then empties the WAL, so the file keeps no copy of a clear-text snapshot either; on
    PostgreSQL the old tuples stay in the table files until ``VACUUM FULL`` rewrites them.
    """
    with engine.begin() as conn:
        result = _forget(conn, business_id)
        if audit is not None:  # the erasure and its access-log entry cannot part
            audit(conn, result)
    _checkpoint(engine)
    return result


def _secure_delete(conn: Connection) -> None:
    """SQLite: overwrite freed and replaced content with zeros (for this connection)."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("PRAGMA secure_delete = ON")


def _checkpoint(engine: Engine) -> None:
    """SQLite: move the WAL into the file and truncate it, so its old page images go too."""
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


def _forget(conn: Connection, business_id: int) -> ForgetResult:
    _secure_delete(conn)
    now = datetime.now(UTC)
    destroyed = destroy_business_key(conn, business_id, now)
    deleted = conn.execute(
        delete(lineage_snapshots).where(lineage_snapshots.c.business_id == business_id)
    ).rowcount
    c = report_lineage.c
    cleared = conn.execute(
        update(report_lineage)
        .where(c.business_id == business_id, c.inputs_snapshot.is_not(None))
        .values(inputs_snapshot=None, inputs_snapshot_shared=True)
    ).rowcount
    rows = conn.scalar(
        select(func.count()).select_from(report_lineage).where(c.business_id == business_id)
    )
    return ForgetResult(
        business_id=business_id,
        destroyed_at=now,
        key_destroyed=destroyed,
        snapshots_deleted=int(deleted),
        inline_cleared=int(cleared),
        rows=int(rows or 0),
    )


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)
