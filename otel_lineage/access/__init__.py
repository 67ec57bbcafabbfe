"""Access control of the lineage service: roles, API keys and the access log.

Storage and rules only (no HTTP): ``web`` and ``cli`` call these. Imports ``delivery`` (the
tables) and the package root, nothing else, so every front end shares one set of rules.
"""

from otel_lineage.access.keys import (
    ApiKey,
    KeyInputError,
    KeyNameTakenError,
    KeyNotFoundError,
    authenticate,
    create_key,
    get_key,
    list_keys,
    revoke_key,
)
from otel_lineage.access.log import list_access, record_access
from otel_lineage.access.roles import Permission, Role, allows, parse_role

__all__ = [
    "ApiKey",
    "KeyInputError",
    "KeyNameTakenError",
    "KeyNotFoundError",
    "Permission",
    "Role",
    "allows",
    "authenticate",
    "create_key",
    "get_key",
    "list_access",
    "list_keys",
    "parse_role",
    "record_access",
    "revoke_key",
]
