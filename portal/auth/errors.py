"""Errors of the authorization server and of token verification.

`InvalidToken` is what the resource server (the gateway) catches: every reason a
bearer token is refused ends there, with a description safe to show the client
(RFC 6750 §3.1 `error_description`) and never the token itself.
"""

from __future__ import annotations

from portal.errors import PortalError

__all__ = ["AuthError", "InvalidToken", "KeyUnavailable", "UnknownUser", "oauth_text"]


def oauth_text(text: str) -> str:
    """`text` as an OAuth `error_description` may carry it: printable ASCII without `"` and `\\`
    (RFC 6749 §5.2)."""
    return "".join(c if 0x20 <= ord(c) <= 0x7E and c not in '"\\' else "?" for c in text)


class AuthError(PortalError):
    """Root of the authorization server's own errors."""

    code = "auth_error"
    http_status = 400


class InvalidToken(AuthError):
    """An access token is missing, malformed, expired, revoked or not for this audience (RFC 6750 §3.1)."""

    code = "invalid_token"
    http_status = 401

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


class UnknownUser(AuthError):
    code = "unknown_user"
    http_status = 404


class KeyUnavailable(AuthError):
    """The master key is missing or wrong, so signing keys cannot be decrypted."""

    code = "key_unavailable"
    http_status = 500
