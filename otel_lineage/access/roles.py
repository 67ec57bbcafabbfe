"""Roles and what each may do: the one place the service decides "may this user do that?".

Roles are ordered (support < auditor < admin) and each permission names the lowest role that
holds it, so a role holds everything the roles below it hold. Input snapshots carry customers'
personal data, hence ``READ_INPUTS`` (and ``VERIFY``, which re-renders from them) start at
auditor; changing who can get in (``MANAGE_KEYS``) and destroying data (``PRUNE``) at admin.
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    """Who a key or a trusted proxy says the user is."""

    SUPPORT = "support"
    AUDITOR = "auditor"
    ADMIN = "admin"


class Permission(StrEnum):
    """Something a route does that not every role may do."""

    SEARCH = "search"
    READ_REPORT = "read_report"
    DOWNLOAD_PDF = "download_pdf"
    IDENTIFY = "identify"
    READ_TRACE = "read_trace"
    READ_INPUTS = "read_inputs"
    VERIFY = "verify"
    READ_ACCESS_LOG = "read_access_log"
    MANAGE_KEYS = "manage_keys"
    PRUNE = "prune"


_RANK = {Role.SUPPORT: 0, Role.AUDITOR: 1, Role.ADMIN: 2}

#: The lowest role that holds each permission.
MINIMUM_ROLE: dict[Permission, Role] = {
    Permission.SEARCH: Role.SUPPORT,
    Permission.READ_REPORT: Role.SUPPORT,
    Permission.DOWNLOAD_PDF: Role.SUPPORT,
    Permission.IDENTIFY: Role.SUPPORT,
    Permission.READ_TRACE: Role.SUPPORT,
    Permission.READ_INPUTS: Role.AUDITOR,
    Permission.VERIFY: Role.AUDITOR,
    Permission.READ_ACCESS_LOG: Role.AUDITOR,
    Permission.MANAGE_KEYS: Role.ADMIN,
    Permission.PRUNE: Role.ADMIN,
}


def allows(role: Role, permission: Permission) -> bool:
    """Whether ``role`` holds ``permission``."""
    return _RANK[role] >= _RANK[MINIMUM_ROLE[permission]]


def parse_role(value: str) -> Role:
    """The role called ``value`` (case-insensitive, surrounding blanks ignored).

    Raises ``ValueError`` naming the valid roles: the message is meant for the operator (CLI
    option, proxy header mapping) and never echoes more than the first 40 characters given.
    """
    try:
        return Role(value.strip().lower())
    except ValueError:
        names = ", ".join(role.value for role in Role)
        raise ValueError(f"unknown role {value[:40]!r} (one of: {names})") from None
