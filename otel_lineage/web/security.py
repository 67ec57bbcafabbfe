"""Who is asking, and may they: the service's whole security in one module.

A request is someone by exactly one of (first match wins):

1. ``--no-auth``: everyone is the admin "anonymous (no-auth)" (loopback only, checked at start);
2. ``Authorization: Bearer d6l_...``: an API key (``access.keys.authenticate``); a wrong key is a
   401, never a fall-through to the cookie;
3. the trusted proxy's user header, only when the peer address is one of
   ``OTEL_LINEAGE_TRUSTED_PROXIES`` (anyone else sending it is ignored and logged);
4. the session cookie set by signing in with a key: ``key id|expiry|hmac``, signed with the
   service secret (stdlib ``hmac``). The key is looked up on every request, so revoking or
   expiring it ends its sessions at once.

CSRF: every POST from a browser carries the signed double-submit token (cookie
``lineage_csrf`` and form field ``csrf_token`` or header ``X-CSRF-Token``); requests with a
bearer header are exempt (a browser never adds one by itself). Failed sign-ins and failed bearer
keys are rate limited per client address.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from otel_lineage.access.keys import authenticate, get_key
from otel_lineage.access.roles import Permission, Role, allows
from otel_lineage.delivery.store import untraced
from otel_lineage.web.errors import ApiError
from otel_lineage.web.settings import Network, WebSettings

_log = logging.getLogger(__name__)

SESSION_COOKIE = "lineage_session"
CSRF_COOKIE = "lineage_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
NO_AUTH_USER = "anonymous (no-auth)"
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
SECURITY_HEADERS = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
)
_ROLE_RANK = {Role.SUPPORT: 0, Role.AUDITOR: 1, Role.ADMIN: 2}
#: What ``--no-auth`` never allows: a key minted there would outlive the demo.
NO_AUTH_NEVER = frozenset({Permission.MANAGE_KEYS, Permission.PRUNE})
#: Host names a ``--no-auth`` request may use (anything else: DNS rebinding or a proxy).
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})
_MAX_USER_CHARS = 200


@dataclass(frozen=True)
class Principal:
    """The person (or tool) behind a request; ``via`` says how they were recognised."""

    name: str
    role: Role
    via: str
    key_id: str | None = None

    def can(self, permission: Permission) -> bool:
        if self.via == "no-auth" and permission in NO_AUTH_NEVER:
            return False  # nothing done in a keyless demo may outlive it
        return allows(self.role, permission)


# -- addresses ------------------------------------------------------------------------------------


def _in(address: str, networks: Iterable[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def peer_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def from_trusted_proxy(request: Request, settings: WebSettings) -> bool:
    return _in(peer_address(request), settings.trusted_proxies)


def client_address(request: Request, settings: WebSettings) -> str:
    """The client's address: the peer, or behind trusted proxies the last address in
    ``X-Forwarded-For`` that is not itself a trusted proxy (earlier ones are client-supplied)."""
    peer = peer_address(request)
    forwarded = request.headers.get("x-forwarded-for")
    if not forwarded or not _in(peer, settings.trusted_proxies):
        return peer
    for hop in reversed([part.strip() for part in forwarded.split(",")]):
        if hop and not _in(hop, settings.trusted_proxies):
            return hop[:64]
    return peer


def is_https(request: Request, settings: WebSettings) -> bool:
    if request.url.scheme == "https":
        return True
    proto = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return proto == "https" and from_trusted_proxy(request, settings)


# -- signed values --------------------------------------------------------------------------------


def _sign(secret: bytes, purpose: str, value: str) -> str:
    mac = hmac.new(secret, f"{purpose}\x00{value}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def session_value(
    secret: bytes, key_id: str, expires_at: int, issued_at: float | None = None
) -> str:
    """A signed session: key id, issue time (microseconds: a sign-out voids sessions issued
    up to its instant), expiry."""
    issued = int((time.time() if issued_at is None else issued_at) * 1_000_000)
    payload = f"{key_id}|{issued}|{expires_at}"
    return f"{payload}|{_sign(secret, 'session', payload)}"


def session_claims(
    secret: bytes, value: str, now: float | None = None
) -> tuple[str, datetime] | None:
    """(key id, issue time) of a valid, unexpired session cookie, else None."""
    parts = value.split("|")
    if len(parts) != 4:
        return None
    key_id, issued, expires, mac = parts
    if not (issued.isdigit() and expires.isdigit()):
        return None
    expected = _sign(secret, "session", f"{key_id}|{issued}|{expires}")
    if not hmac.compare_digest(expected, mac):
        return None
    if int(expires) < (time.time() if now is None else now):
        return None
    return key_id, datetime.fromtimestamp(int(issued) / 1_000_000, UTC)


def new_csrf_token(secret: bytes) -> str:
    nonce = secrets.token_urlsafe(24)
    return f"{nonce}.{_sign(secret, 'csrf', nonce)}"


def csrf_token_valid(secret: bytes, token: str | None) -> bool:
    if not token:
        return False
    nonce, sep, mac = token.partition(".")
    return bool(sep) and hmac.compare_digest(_sign(secret, "csrf", nonce), mac)


def check_csrf(request: Request, settings: WebSettings, submitted: str | None) -> None:
    """Refuse a browser POST whose token does not match its (signed) CSRF cookie."""
    if bearer_secret(request) is not None:
        return
    cookie = request.cookies.get(CSRF_COOKIE)
    if not (
        csrf_token_valid(settings.secret, cookie)
        and submitted is not None
        and hmac.compare_digest(submitted, cookie or "")
    ):
        raise ApiError(
            403,
            "csrf_failed",
            "the form's CSRF token is missing or does not match: reload the page and try again",
        )


# -- rate limiting --------------------------------------------------------------------------------


class FailureLimiter:
    """At most ``limit`` failures per client per ``window_s``; bounded memory (oldest clients
    forgotten first). Per process: with N workers a client gets at most N times the limit."""

    def __init__(self, limit: int, window_s: float = 60.0, max_clients: int = 10_000) -> None:
        self.limit, self.window_s, self.max_clients = limit, window_s, max_clients
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, client: str) -> int | None:
        """Seconds to wait when ``client`` is over the limit, else None."""
        now = time.monotonic()
        with self._lock:
            failures = self._failures.get(client)
            if failures is None:
                return None
            while failures and now - failures[0] > self.window_s:
                failures.popleft()
            if len(failures) < self.limit:
                return None
            return max(1, int(self.window_s - (now - failures[0])) + 1)

    def failed(self, client: str) -> None:
        with self._lock:
            if client not in self._failures and len(self._failures) >= self.max_clients:
                self._failures.pop(next(iter(self._failures)))
            self._failures.setdefault(client, deque()).append(time.monotonic())

    def check(self, client: str) -> None:
        wait = self.retry_after(client)
        if wait is not None:
            raise ApiError(
                429,
                "rate_limited",
                f"too many failed sign-in attempts from this address: retry in {wait} s",
                headers={"Retry-After": str(wait)},
            )


# -- who is asking --------------------------------------------------------------------------------


def bearer_secret(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def identify_request(
    request: Request, engine: Engine, settings: WebSettings, limiter: FailureLimiter
) -> Principal | None:
    """The principal of ``request`` (see the module docstring), None when anonymous.

    Raises ``ApiError`` 401 for a wrong bearer key and 429 for a client over the failure limit.
    """
    if settings.no_auth:
        _require_loopback(request)
        return Principal(NO_AUTH_USER, Role.ADMIN, "no-auth")
    secret = bearer_secret(request)
    if request.headers.get("authorization") is not None:
        client = client_address(request, settings)
        with untraced():
            key = authenticate(engine, secret) if secret else None
        if key is None:
            # Only failures are limited: a valid key is never locked out by others' mistakes
            # from a shared address.
            limiter.check(client)
            limiter.failed(client)
            raise ApiError(
                401,
                "invalid_key",
                "the API key is unknown, revoked or expired",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        return Principal(key.name, key.role, "key", key.id)
    proxied = _proxy_principal(request, settings)
    if proxied is not None:
        return proxied
    cookie = request.cookies.get(SESSION_COOKIE)
    claims = session_claims(settings.secret, cookie) if cookie else None
    if claims is None:
        return None
    key_id, issued_at = claims
    with untraced():
        key = get_key(engine, key_id)
    if key is None or not key.active(datetime.now(UTC)):
        return None
    if key.sessions_valid_after is not None and issued_at <= key.sessions_valid_after:
        return None  # signed out
    return Principal(key.name, key.role, "session", key.id)


def _require_loopback(request: Request) -> None:
    """``--no-auth`` answers only loopback peers that name a loopback host: a page that
    rebinds its own DNS name to 127.0.0.1 sends its own name in ``Host`` and is refused."""
    host = (request.headers.get("host") or "").rsplit(":", 1)[0].strip("[]").lower()
    loopback_host = host in _LOOPBACK_NAMES or _is_loopback(host)
    if not (loopback_host and _is_loopback(peer_address(request))):
        raise ApiError(
            403,
            "not_loopback",
            "this keyless demo server answers only http://127.0.0.1 or http://localhost",
        )


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _proxy_principal(request: Request, settings: WebSettings) -> Principal | None:
    header = settings.proxy_user_header
    if header is None or header not in request.headers:
        return None
    if not from_trusted_proxy(request, settings):
        _log.warning("ignored the proxy user header from an untrusted address")
        return None
    user = request.headers[header].strip()
    if not user or len(user) > _MAX_USER_CHARS or not user.isprintable():
        raise ApiError(401, "proxy_user_invalid", "the proxy's user header is empty or invalid")
    role = _proxy_role(request.headers.get(settings.proxy_role_header or "", ""), settings)
    if role is None:
        raise ApiError(
            403, "no_role", "your single sign-on groups carry no lineage role: ask an admin"
        )
    return Principal(user, role, "proxy")


def _proxy_role(value: str, settings: WebSettings) -> Role | None:
    """The highest role named by the header's comma-separated values: through the role map
    when one is configured (then only mapped groups count: a group that happens to be called
    "admin" grants nothing), else by role name."""
    roles = []
    mapping = settings.proxy_role_map
    for item in (part.strip() for part in value.split(",")):
        name = mapping.get(item) if mapping else item
        if name is not None and name in Role._value2member_map_:
            roles.append(Role(name))
    return max(roles, key=_ROLE_RANK.__getitem__) if roles else None


# -- response headers -----------------------------------------------------------------------------


class SecurityHeaders:
    """Pure ASGI middleware: the security headers on every response, errors and static files
    included (a ``BaseHTTPMiddleware`` would miss responses its inner app never returns)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        path = str(scope.get("path", ""))

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(n, v) for n, v in SECURITY_HEADERS if n not in present]
                if b"cache-control" not in present and not path.startswith("/static/"):
                    extra.append((b"cache-control", b"no-store"))  # personal data, secrets
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, with_headers)


#: The endpoints that take an upload (a PDF to identify).
UPLOAD_PATHS = frozenset({"/api/v1/identify", "/identify"})


class UploadsNeedAUser:
    """Pure ASGI middleware: an upload from nobody is refused before a byte of its body is
    read. FastAPI reads a form body before it runs the route's dependencies, so without this
    an anonymous client could make the server take in 50 MB per request, unauthenticated."""

    def __init__(self, app: ASGIApp, state: Any) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        if scope.get("path") not in UPLOAD_PATHS:
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        state = self.state
        try:
            user = await run_in_threadpool(
                identify_request, request, state.engine, state.settings, state.limiter
            )
        except ApiError as exc:
            await JSONResponse(exc.body(), exc.status, headers=exc.headers)(scope, receive, send)
            return
        if user is None:
            error = ApiError(401, "unauthenticated", "sign in before uploading a PDF")
            await JSONResponse(error.body(), 401)(scope, receive, send)
            return
        await self.app(scope, receive, send)
