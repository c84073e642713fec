"""Who may use the admin API: a bearer token for the resource `{public_url}/api` with the right scope.

The admin API is an OAuth resource of its own (RFC 8707): a token minted for `/mcp` is
refused here, and one minted for `/api` is refused on the MCP endpoints. Reading needs
`audit:read` (or `admin`); changing anything needs `admin` or the narrower write scope the
route names (`servers:write`, `policies:write`). Errors are JSON, `{"error": {"code", "message"}}`,
with the status of the error and, for 401 and 403, an RFC 6750 `WWW-Authenticate` header.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from portal.auth.principal import Principal
from portal.auth.resource import AuthenticationRequired, InsufficientScope, bearer_token, metadata_url
from portal.errors import PortalError

__all__ = ["API_PATH", "ApiAccess", "error_response", "json_response"]

API_PATH = "/api"

Verifier = Callable[[str, str], Awaitable[Principal]]


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def error_response(exc: PortalError, public_url: str) -> Response:
    """The admin API's rendering of a `PortalError` (the MCP surfaces use `portal.gateway.rendering`)."""
    headers = {"Cache-Control": "no-store"}
    if isinstance(exc, AuthenticationRequired | InsufficientScope):
        # RFC 6750 §3 and RFC 9728 §5.1: say where the metadata is and which scope would do.
        parts = [f'resource_metadata="{metadata_url(public_url, API_PATH)}"']
        error = getattr(exc, "error", None) or ("insufficient_scope" if isinstance(exc, InsufficientScope) else None)
        if error:
            parts.append(f'error="{error}"')
        scope = exc.data.get("scope")
        if scope:
            parts.append(f'scope="{scope}"')
        headers["WWW-Authenticate"] = "Bearer " + ", ".join(parts)
    return json_response({"error": {"code": exc.code, "message": exc.message}}, exc.http_status, headers)


class ApiAccess:
    """Checks the token of an admin API request."""

    def __init__(self, verify: Verifier, public_url: str) -> None:
        self.verify = verify
        self.public_url = public_url
        self.audience = f"{public_url}{API_PATH}"

    async def principal(self, request: Request, scope: str) -> Principal:
        """The caller, if their token is for the admin API and carries `scope` (raises otherwise)."""
        token = bearer_token(request.headers, request.scope.get("query_string", b""))
        if token is None:
            raise AuthenticationRequired("The admin API needs a bearer token", error=None, scope=scope)
        principal = await self.verify(token, self.audience)
        if not principal.can(scope):
            raise InsufficientScope([scope])
        return principal
