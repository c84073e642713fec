"""Scopes are capabilities (SPEC.md, Tokens).

`tools:*` (every tool), `tools:{server}` (every tool of a server),
`tools:{server}:{tool}` (one tool), `codemode`, and for the admin API `admin`,
`audit:read`, `policies:write`, `servers:write`. A broader scope satisfies a
narrower one; `admin` satisfies every admin scope.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = [
    "ADMIN_SCOPES",
    "KNOWN_SCOPE",
    "narrower_or_equal",
    "parse_scope",
    "satisfies",
    "tool_scope",
]

ADMIN_SCOPES = frozenset({"admin", "audit:read", "policies:write", "servers:write"})
KNOWN_SCOPE = re.compile(
    r"^(tools:\*|tools:[a-z][a-z0-9-]{0,31}|tools:[a-z][a-z0-9-]{0,31}:[^\s:]{1,128}|codemode"
    r"|admin|audit:read|policies:write|servers:write)$"
)


def parse_scope(value: str | None) -> frozenset[str]:
    """The set of scopes in a space-separated `scope` string (RFC 6749 §3.3)."""
    return frozenset(part for part in (value or "").split(" ") if part)


def tool_scope(server: str, tool: str) -> str:
    return f"tools:{server}:{tool}"


def _covers(granted: str, needed: str) -> bool:
    if granted == needed:
        return True
    if granted == "admin" and needed in ADMIN_SCOPES:
        return True
    if not needed.startswith("tools:"):
        return False
    if granted == "tools:*":
        return True
    # `tools:notes` covers `tools:notes:create_note`, but not `tools:notes-archive:x`.
    return granted.startswith("tools:") and granted.count(":") == 1 and needed.startswith(granted + ":")


def satisfies(granted: Iterable[str], needed: str) -> bool:
    """Whether any granted scope is at least as broad as `needed`."""
    return any(_covers(scope, needed) for scope in granted)


def narrower_or_equal(requested: Iterable[str], granted: Iterable[str]) -> bool:
    """Whether every requested scope is covered by the granted ones (token exchange only narrows)."""
    held = list(granted)
    return all(satisfies(held, scope) for scope in requested)
