"""API keys of the lineage service: created once, stored as a hash, expired or revoked.

A secret is ``d6l_`` and 43 URL-safe characters (256 random bits): shown once by
``create_key``, stored only as its sha256. A fast hash is right here (unlike for passwords):
the secret is random, not guessable, so no amount of hashing speed helps an attacker with a
copy of the table. The lookup is by that hash (a unique index), so the secret is never
compared character by character. ``prefix`` (the first 12 characters) is kept to tell keys
apart in lists and logs; it leaves 200 unknown bits.

A name is unique among unrevoked keys (enforced by a partial unique index, so a race between
two creators cannot produce two active "alice" keys). ``authenticate`` refuses unknown, revoked
and expired keys alike (the caller cannot tell which: no oracle), and records ``last_used_at``
at most once a minute, so every request does not become a write.

``create_key`` and ``revoke_key`` take an optional ``audit`` callback run in their own
transaction, so the access log row of a key change commits or rolls back with the change.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import string
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, Row, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from otel_lineage.access.roles import Role
from otel_lineage.delivery.schema import lineage_api_keys

SECRET_PREFIX = "d6l_"
#: Random bytes per secret: ``token_urlsafe(32)`` is 43 characters.
SECRET_BYTES = 32
SECRET_LENGTH = len(SECRET_PREFIX) + 43
#: Characters of the secret kept in clear to tell keys apart.
PREFIX_LENGTH = 12
#: ``last_used_at`` is written at most this often per key.
LAST_USED_EVERY = timedelta(minutes=1)
#: A key name: a login-like word (shown in pages, logs and terminals; never needs escaping).
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,99}")
MAX_CREATED_BY = 200
_URLSAFE = frozenset(string.ascii_letters + string.digits + "-_")

#: Called with the transaction of a key change and the changed key (to write the access log).
AuditHook = Callable[[Connection, "ApiKey"], None]


class KeyInputError(ValueError):
    """A key cannot be created as asked (bad name, creator or expiry): the message says why."""


class KeyNameTakenError(KeyInputError):
    """An unrevoked key already has this name."""


class KeyNotFoundError(LookupError):
    """No unrevoked key has this name or id."""


@dataclass(frozen=True)
class ApiKey:
    """A key as stored, without its hash (which nothing outside this module needs)."""

    id: str
    name: str
    role: Role
    prefix: str
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    #: Browser sessions issued before this are void (a sign-out ends every session of the key).
    sessions_valid_after: datetime | None = None

    def active(self, now: datetime | None = None) -> bool:
        """Whether the key lets its holder in at ``now`` (default: the current time)."""
        return self.state(now) == "active"

    def state(self, now: datetime | None = None) -> str:
        """``"active"``, ``"expired"`` or ``"revoked"`` (revocation wins over expiry)."""
        now = _utc(now) if now is not None else datetime.now(UTC)
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "active"

    def as_dict(self, now: datetime | None = None) -> dict[str, Any]:
        """The key as JSON-ready values, with its ``state``."""
        return {
            "id": self.id,
            "name": self.name,
            "role": self.role.value,
            "prefix": self.prefix,
            "created_by": self.created_by,
            "created_at": self.created_at.isoformat(),
            "expires_at": _iso(self.expires_at),
            "revoked_at": _iso(self.revoked_at),
            "last_used_at": _iso(self.last_used_at),
            "state": self.state(now),
        }


def hash_secret(secret: str) -> str:
    """The stored form of a secret: its sha256, in hex."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def create_key(
    engine: Engine,
    *,
    name: str,
    role: Role,
    created_by: str,
    expires_at: datetime | None = None,
    audit: AuditHook | None = None,
) -> tuple[ApiKey, str]:
    """A new key and its secret (the only time the secret exists outside its holder).

    Raises ``KeyInputError`` for a bad name, creator, role or an expiry not in the future, and
    ``KeyNameTakenError`` when an unrevoked key has the name.
    """
    now = datetime.now(UTC)
    check_name(name)
    _check_created_by(created_by)
    try:
        role = Role(role)
    except ValueError:
        raise KeyInputError(f"unknown role {str(role)[:40]!r}") from None
    if expires_at is not None:
        expires_at = _utc(expires_at)
        if expires_at <= now:
            raise KeyInputError(f"the expiry {expires_at.isoformat()} is not in the future")
    secret = SECRET_PREFIX + secrets.token_urlsafe(SECRET_BYTES)
    key = ApiKey(
        id=str(uuid.uuid4()),
        name=name,
        role=role,
        prefix=secret[:PREFIX_LENGTH],
        created_by=created_by,
        created_at=now,
        expires_at=expires_at,
        revoked_at=None,
        last_used_at=None,
    )
    taken = KeyNameTakenError(f"an unrevoked key is already named {name!r}")
    try:
        with engine.begin() as conn:
            if _active_named(conn, name) is not None:
                raise taken
            conn.execute(
                insert(lineage_api_keys).values(
                    id=key.id,
                    name=key.name,
                    role=key.role.value,
                    prefix=key.prefix,
                    key_hash=hash_secret(secret),
                    created_by=key.created_by,
                    created_at=key.created_at,
                    expires_at=key.expires_at,
                )
            )
            if audit is not None:
                audit(conn, key)
    except IntegrityError:  # another creator won the race for the name
        raise taken from None
    return key, secret


def list_keys(engine: Engine) -> list[ApiKey]:
    """Every key, revoked and expired ones included (the audit trail of who had access)."""
    table = lineage_api_keys
    with engine.connect() as conn:
        rows = conn.execute(
            select(*_COLUMNS).order_by(table.c.created_at, table.c.name, table.c.id)
        )
        return [_key(row) for row in rows]


def get_key(engine: Engine, key_id: str) -> ApiKey | None:
    """The key with this id, whatever its state (sessions re-check ``active`` on each request)."""
    with engine.connect() as conn:
        row = conn.execute(select(*_COLUMNS).where(lineage_api_keys.c.id == key_id)).first()
    return None if row is None else _key(row)


def end_sessions(engine: Engine, key_id: str, *, at: datetime | None = None) -> None:
    """Void every browser session of the key issued up to now (sign out, on every worker)."""
    with engine.begin() as conn:
        conn.execute(
            update(lineage_api_keys)
            .where(lineage_api_keys.c.id == key_id)
            .values(sessions_valid_after=at or datetime.now(UTC))
        )


def revoke_key(engine: Engine, name_or_id: str, *, audit: AuditHook | None = None) -> ApiKey:
    """Revoke the unrevoked key with this id or name (an id wins over a name); return it.

    An expired key can be revoked. Raises ``KeyNotFoundError`` when no unrevoked key matches.
    """
    table = lineage_api_keys
    missing = KeyNotFoundError(f"no unrevoked key has the name or id {name_or_id[:100]!r}")
    now = datetime.now(UTC)
    with engine.begin() as conn:
        rows = conn.execute(
            select(*_COLUMNS).where(
                table.c.revoked_at.is_(None),
                or_(table.c.id == name_or_id, table.c.name == name_or_id),
            )
        ).all()
        if not rows:
            raise missing
        row = next((r for r in rows if r.id == name_or_id), rows[0])
        done = conn.execute(
            update(table)
            .where(table.c.id == row.id, table.c.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        if done.rowcount != 1:  # revoked by someone else in between
            raise missing
        key = replace(_key(row), revoked_at=now)
        if audit is not None:
            audit(conn, key)
    return key


def authenticate(engine: Engine, secret: str) -> ApiKey | None:
    """The active key whose secret this is, or ``None`` (unknown, revoked, expired, malformed)."""
    if not _well_formed(secret):
        return None
    table = lineage_api_keys
    now = datetime.now(UTC)
    with engine.begin() as conn:
        row = conn.execute(select(*_COLUMNS).where(table.c.key_hash == hash_secret(secret))).first()
        if row is None:
            return None
        key = _key(row)
        if not key.active(now):
            return None
        if key.last_used_at is None or now - key.last_used_at >= LAST_USED_EVERY:
            conn.execute(
                update(table)
                .where(
                    table.c.id == key.id,
                    or_(
                        table.c.last_used_at.is_(None),
                        table.c.last_used_at <= now - LAST_USED_EVERY,
                    ),
                )
                .values(last_used_at=now)
            )
            key = replace(key, last_used_at=now)
    return key


def check_name(name: str) -> str:
    """``name`` if it is a valid key name; ``KeyInputError`` saying what is allowed if not."""
    if not isinstance(name, str) or NAME_PATTERN.fullmatch(name) is None:
        raise KeyInputError(
            f"bad key name {str(name)[:40]!r}: 1 to 100 characters, letters, digits and "
            "._@+- (starting with a letter or digit)"
        )
    return name


_COLUMNS = tuple(c for c in lineage_api_keys.c if c.name != "key_hash")


def _active_named(conn: Connection, name: str) -> Row[Any] | None:
    table = lineage_api_keys
    return conn.execute(
        select(table.c.id).where(table.c.name == name, table.c.revoked_at.is_(None))
    ).first()


def _check_created_by(created_by: str) -> None:
    if not created_by or len(created_by) > MAX_CREATED_BY or not created_by.isprintable():
        raise KeyInputError(
            f"bad creator: 1 to {MAX_CREATED_BY} printable characters (no control characters)"
        )


def _well_formed(secret: str) -> bool:
    return (
        isinstance(secret, str)
        and len(secret) == SECRET_LENGTH
        and secret.startswith(SECRET_PREFIX)
        and all(ch in _URLSAFE for ch in secret[len(SECRET_PREFIX) :])
    )


def _key(row: Row[Any]) -> ApiKey:
    return ApiKey(
        id=row.id,
        name=row.name,
        role=Role(row.role),
        prefix=row.prefix,
        created_by=row.created_by,
        created_at=_utc(row.created_at),
        expires_at=_maybe_utc(row.expires_at),
        revoked_at=_maybe_utc(row.revoked_at),
        last_used_at=_maybe_utc(row.last_used_at),
        sessions_valid_after=_maybe_utc(row.sessions_valid_after),
    )


def _utc(value: datetime) -> datetime:
    """The same instant in UTC; SQLite gives back naive times, which were stored as UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _maybe_utc(value: datetime | None) -> datetime | None:
    return None if value is None else _utc(value)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
