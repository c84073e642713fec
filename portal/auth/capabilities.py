"""What a token may carry, and for which endpoint.

A token's capabilities are what the client asked for, intersected with what the
person consented to and with what the operator granted them (`[auth.grants]`,
`[auth.group_grants]`; later, the policies). Capabilities form a lattice
(`tools:*` ⊇ `tools:notes` ⊇ `tools:notes:get_note`), so the intersection of
`tools:*` and `tools:notes` is `tools:notes`, not the empty set.

A token is audience-bound to one of the portal's endpoints (RFC 8707 `resource`):
`/mcp`, `/servers/{name}/mcp`, `/codemode/mcp`, or the admin API `/api`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from portal.auth.scopes import KNOWN_SCOPE, satisfies
from portal.auth.settings import AuthSettings

__all__ = [
    "IGNORED_SCOPES",
    "intersect",
    "is_resource",
    "minimal",
    "operator_grants",
    "resources_of",
    "unknown_scopes",
]

IGNORED_SCOPES = frozenset({"offline_access"})
"""Scopes clients commonly add that mean nothing here: refresh tokens go to clients registered for them."""

_SERVER_MCP = re.compile(r"^/servers/[a-z][a-z0-9-]{0,31}/mcp$")


def minimal(scopes: Iterable[str]) -> frozenset[str]:
    """`scopes` without those another one of them already covers (`tools:notes` drops `tools:notes:x`)."""
    held = set(scopes)
    return frozenset(s for s in held if not any(other != s and satisfies([other], s) for other in held))


def intersect(asked: Iterable[str], granted: Iterable[str]) -> frozenset[str]:
    """The capabilities both `asked` and `granted` allow (the meet in the capability lattice)."""
    granted_list = list(granted)
    out: set[str] = set()
    for scope in asked:
        if satisfies(granted_list, scope):
            out.add(scope)
        else:
            out.update(g for g in granted_list if satisfies([scope], g))
    return minimal(out)


def unknown_scopes(scopes: Iterable[str]) -> list[str]:
    """The scopes that are not capabilities of the portal (RFC 6749 §3.3 `invalid_scope`)."""
    return sorted(s for s in scopes if s not in IGNORED_SCOPES and not KNOWN_SCOPE.fullmatch(s))


def operator_grants(auth: AuthSettings, subject: str, groups: Iterable[str]) -> frozenset[str]:
    """Everything the operator granted `subject` directly and through its groups."""
    granted = set(auth.grants.get(subject, ()))
    for group in groups:
        granted.update(auth.group_grants.get(group, ()))
    return minimal(granted)


def resources_of(public_url: str) -> tuple[str, ...]:
    """The fixed resources of a portal (plus one `/servers/{name}/mcp` per server)."""
    return (f"{public_url}/mcp", f"{public_url}/codemode/mcp", f"{public_url}/api")


def is_resource(public_url: str, resource: str) -> bool:
    """Whether `resource` names one of the portal's endpoints exactly (RFC 8707 §2: an absolute URI
    without a fragment; here also without a query, trailing slash or other spelling)."""
    if resource in resources_of(public_url):
        return True
    if not resource.startswith(public_url + "/"):
        return False
    return bool(_SERVER_MCP.fullmatch(resource[len(public_url) :]))
