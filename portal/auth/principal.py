"""Who a request acts for, as its access token says."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from portal.auth.scopes import satisfies

__all__ = ["Principal"]


@dataclass(frozen=True)
class Principal:
    """The verified claims of an access token (RFC 9068)."""

    subject: str
    """`sub`: the user (or, for `client_credentials`, the client itself)."""
    client_id: str
    scopes: frozenset[str]
    token_id: str
    """`jti`: what revocation and the audit log refer to."""
    audience: str
    expires_at: int
    groups: tuple[str, ...] = ()
    actor: dict[str, Any] | None = None
    """`act` (RFC 8693): the agent a token was delegated to, when exchanged."""
    extra: dict[str, Any] = field(default_factory=dict)

    def can(self, scope: str) -> bool:
        return satisfies(self.scopes, scope)
