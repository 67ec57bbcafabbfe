"""The lineage service's configuration, read and checked once at start.

Like ``otel_lineage.settings``, a value the service cannot honour is refused with one line
naming the variable (``LineageConfigError``), never started with and lived with: an access
control layer that silently falls back to "open" is worse than none.

The signing secret of session cookies and CSRF tokens comes from ``OTEL_LINEAGE_WEB_SECRET``
or, when unset, from a file created on first start (mode 0600, ``O_EXCL``) so that every uvicorn
worker of one deployment signs with the same key and a restart keeps people signed in.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from otel_lineage.settings import (
    LineageConfigError,
    LineageSettings,
    parse_bool,
    parse_number,
)

DEFAULT_REPORTS_DIR = Path("var") / "reports"
DEFAULT_SECRET_FILE = Path("var") / "lineage-web-secret"
DEFAULT_MAX_UPLOAD_BYTES = 50 * 1024 * 1024
#: The role names a proxy may send (``otel_lineage.access.roles.Role`` values).
ROLE_NAMES = ("support", "auditor", "admin")
#: Set by ``otel-lineage serve --no-auth`` for its workers, with the host it binds.
NO_AUTH_ENV = "OTEL_LINEAGE_WEB_NO_AUTH"
HOST_ENV = "OTEL_LINEAGE_WEB_HOST"
_MIN_SECRET_CHARS = 32
_HEADER_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class WebSettings:
    database_url: str
    reports_database_url: str
    reports_dir: Path
    secret: bytes = field(repr=False)
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    trusted_proxies: tuple[Network, ...] = ()
    proxy_user_header: str | None = None
    proxy_role_header: str | None = None
    #: Proxy role header values (e.g. SSO group names) mapped to roles; a value that already
    #: is a role name needs no entry.
    proxy_role_map: Mapping[str, str] = field(default_factory=dict)
    no_auth: bool = False
    jaeger_url: str | None = None
    outbox: str | None = None
    session_ttl_s: int = 8 * 3600
    #: Failed sign-ins (or bearer keys) per client per minute before 429.
    sign_in_attempts_per_minute: int = 10

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        no_auth: bool | None = None,
        secret_file: Path = DEFAULT_SECRET_FILE,
    ) -> WebSettings:
        """Read and check every variable; raises ``LineageConfigError`` on the first bad one."""
        env = os.environ if environ is None else environ
        lineage = LineageSettings.from_env(env)
        if no_auth is None:
            no_auth = parse_bool(env, NO_AUTH_ENV, default=False)
        if no_auth:
            _check_loopback(env.get(HOST_ENV, "127.0.0.1"))
        proxies = _networks(env, "OTEL_LINEAGE_TRUSTED_PROXIES")
        user_header = _header(env, "OTEL_LINEAGE_PROXY_USER_HEADER")
        role_header = _header(env, "OTEL_LINEAGE_PROXY_ROLE_HEADER")
        if user_header and not proxies:
            raise LineageConfigError(
                "OTEL_LINEAGE_PROXY_USER_HEADER is set but OTEL_LINEAGE_TRUSTED_PROXIES is not: "
                "expected the addresses of the proxies allowed to send it"
            )
        if user_header and not role_header:
            raise LineageConfigError(
                "OTEL_LINEAGE_PROXY_USER_HEADER is set but OTEL_LINEAGE_PROXY_ROLE_HEADER is not: "
                "expected the header that carries the user's role or groups"
            )
        return cls(
            database_url=lineage.database_url,
            reports_database_url=lineage.reports_database_url,
            reports_dir=_directory(env, "D6_REPORTS_DIR", DEFAULT_REPORTS_DIR),
            secret=_secret(env, secret_file),
            max_upload_bytes=parse_number(
                env, "OTEL_LINEAGE_MAX_UPLOAD_BYTES", int, DEFAULT_MAX_UPLOAD_BYTES, 1024, 1 << 32
            ),
            trusted_proxies=proxies,
            proxy_user_header=user_header,
            proxy_role_header=role_header,
            proxy_role_map=_role_map(env, "OTEL_LINEAGE_PROXY_ROLE_MAP"),
            no_auth=no_auth,
            jaeger_url=lineage.jaeger_url,
            outbox=lineage.outbox,
        )


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def _check_loopback(host: str) -> None:
    if not is_loopback(host):
        raise LineageConfigError(
            f"--no-auth is refused on host {host!r}: it serves everything to anyone who can "
            "connect, so it only binds a loopback address (127.0.0.1, ::1, localhost)"
        )


def _secret(env: Mapping[str, str], path: Path) -> bytes:
    raw = env.get("OTEL_LINEAGE_WEB_SECRET")
    if raw is not None and raw.strip():
        if len(raw.strip()) < _MIN_SECRET_CHARS:
            raise LineageConfigError(
                f"OTEL_LINEAGE_WEB_SECRET is too short: expected at least {_MIN_SECRET_CHARS} "
                "characters (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`)"
            )
        return raw.strip().encode()
    return _secret_file(path)


def _secret_file(path: Path) -> bytes:
    """The shared secret in ``path``, created (0600, exclusively) by whichever worker is first."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(48))
        info = path.stat()
        if info.st_mode & 0o077:
            raise LineageConfigError(
                f"{path} is readable by other users (mode {info.st_mode & 0o777:o}): "
                f"expected 0600 (chmod 600 {path})"
            )
        value = path.read_text().strip()
    except OSError as exc:
        raise LineageConfigError(
            f"cannot read or create the web secret file {path}: {exc.strerror}; "
            "set OTEL_LINEAGE_WEB_SECRET instead"
        ) from exc
    if len(value) < _MIN_SECRET_CHARS:  # another worker is still writing it, or it is damaged
        raise LineageConfigError(f"the web secret file {path} holds too short a secret")
    return value.encode()


def _directory(env: Mapping[str, str], name: str, default: Path) -> Path:
    raw = env.get(name)
    value = raw.strip() if raw and raw.strip() else str(default)
    if "\x00" in value:
        raise LineageConfigError(f"{name} is not valid: expected a directory")
    return Path(value).expanduser().resolve()


def _networks(env: Mapping[str, str], name: str) -> tuple[Network, ...]:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return ()
    networks = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise LineageConfigError(
                f"{name} is not valid: {item[:60]!r} is not an IP address or CIDR network"
            ) from None
    return tuple(networks)


def _header(env: Mapping[str, str], name: str) -> str | None:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return None
    value = raw.strip()
    if len(value) > 100 or not set(value) <= _HEADER_CHARS:
        raise LineageConfigError(f"{name} is not valid: expected an HTTP header name")
    return value.lower()


def _role_map(env: Mapping[str, str], name: str) -> dict[str, str]:
    """``group=role,group=role``: what a proxy's role header values mean."""
    raw = env.get(name)
    if raw is None or not raw.strip():
        return {}
    mapping = {}
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        group, sep, role = item.partition("=")
        if not sep or not group.strip() or role.strip() not in ROLE_NAMES:
            raise LineageConfigError(
                f"{name} is not valid: expected group=role pairs with roles from "
                f"{', '.join(ROLE_NAMES)}"
            )
        mapping[group.strip()] = role.strip()
    return mapping
