"""The portal as an OAuth resource server on every MCP endpoint.

- RFC 9728: one protected-resource metadata document per endpoint, at
  `/.well-known/oauth-protected-resource{path}`, whose `resource` is exactly that
  endpoint's URL, so that a token minted for one endpoint is useless on another.
- RFC 6750 §3 and MCP authorization: a missing or bad token gets `401` with
  `WWW-Authenticate: Bearer resource_metadata=..., scope=...`; a token without the
  capability an operation needs gets `403` with `error="insufficient_scope"` and every
  scope the operation needs (step-up).
- Tokens travel only in the `Authorization` header: MCP authorization forbids them
  in the query string, so one there is refused rather than ignored.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any
from urllib.parse import parse_qs

from portal.auth.principal import Principal
from portal.errors import PortalError

__all__ = [
    "AuthenticationRequired",
    "InsufficientScope",
    "TokenInQuery",
    "bearer_token",
    "metadata_url",
    "protected_resource_metadata",
]

Verifier = Callable[..., Awaitable[Principal]]


class AuthenticationRequired(PortalError):
    """No token, or a token that failed verification (RFC 6750 §3.1 `invalid_token`)."""

    code = "invalid_token"
    http_status = 401
    jsonrpc_code = -32001

    def __init__(self, message: str, *, error: str | None = "invalid_token", scope: str | None = None) -> None:
        super().__init__(message)
        self.error = error
        self.scope = scope

    def to_data(self) -> dict[str, Any]:
        return {"code": self.error or "authentication_required", **self.data}


class TokenInQuery(AuthenticationRequired):
    code = "invalid_request"
    http_status = 400

    def __init__(self) -> None:
        super().__init__(
            "Access tokens must be sent in the Authorization header, never in the URL", error="invalid_request"
        )


class InsufficientScope(PortalError):
    """RFC 6750 §3.1 `insufficient_scope`: the token lacks a capability the operation needs."""

    code = "insufficient_scope"
    http_status = 403
    jsonrpc_code = -32001

    def __init__(self, needed: Iterable[str]) -> None:
        self.needed = tuple(needed)
        super().__init__(f"This operation needs the scope {' '.join(self.needed)}", scope=" ".join(self.needed))


def metadata_url(public_url: str, path: str) -> str:
    """RFC 9728 §3.1: the metadata of resource `{public_url}{path}` lives at the well-known URI plus the path."""
    return f"{public_url}/.well-known/oauth-protected-resource{path}"


def protected_resource_metadata(public_url: str, path: str, scopes: Iterable[str]) -> dict[str, Any]:
    return {
        "resource": f"{public_url}{path}",
        "authorization_servers": [public_url],
        "scopes_supported": sorted(set(scopes)),
        "bearer_methods_supported": ["header"],
        "resource_name": f"Portal {path}",
    }


def challenge(public_url: str, path: str, exc: AuthenticationRequired | InsufficientScope, scope: str) -> str:
    """The `WWW-Authenticate` value for a refused request (RFC 6750 §3, RFC 9728 §5.1)."""
    parts = [f'resource_metadata="{metadata_url(public_url, path)}"']
    if isinstance(exc, InsufficientScope):
        parts.append('error="insufficient_scope"')
        parts.append(f'scope="{" ".join(exc.needed)}"')
    else:
        if exc.error:
            parts.append(f'error="{exc.error}"')
            # RFC 6750 §3: the description is for developers; it never carries the token.
            parts.append(f'error_description="{_quoted(exc.message)}"')
        parts.append(f'scope="{exc.scope or scope}"')
    return "Bearer " + ", ".join(parts)


def _quoted(text: str) -> str:
    return text.replace("\\", "").replace('"', "'")


def bearer_token(headers: Mapping[str, str], query_string: bytes) -> str | None:
    """The bearer token of a request, or None; a token in the query string is refused."""
    if query_string and "access_token" in parse_qs(query_string.decode("latin-1")):
        raise TokenInQuery()
    value = headers.get("authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise AuthenticationRequired("The Authorization header must be 'Bearer <token>'", error="invalid_request")
    return token
