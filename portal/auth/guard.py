"""Pipeline stage: a token's capabilities bound what its request may reach.

SPEC.md, Tokens: `tools:*` ⊇ `tools:{server}` ⊇ `tools:{server}:{tool}`. A call
needs the capability of its one tool; reading a server's resources, getting its
prompts or completing their arguments needs the server-wide capability (they are
not tools, and a per-tool grant says nothing about them); Code Mode needs
`codemode`. Lists show only what the token could use, so a client never offers a
model a tool that would be refused.

A missing capability is `403 insufficient_scope` naming the scope to ask for
(MCP authorization, step-up), never "unknown tool": the client may step up.
"""

from __future__ import annotations

from typing import Any

from portal.auth.principal import Principal
from portal.auth.resource import AuthenticationRequired, InsufficientScope
from portal.auth.scopes import tool_scope
from portal.catalog import LIST_ITEMS
from portal.gateway.servers import ServerSet
from portal.pipeline import Handler, McpRequest

__all__ = ["CapabilityGuard", "endpoint_scope"]


def endpoint_scope(kind: str, server: str | None) -> str:
    """The capability that opens an endpoint as a whole (the `scope` of its 401 challenge)."""
    if kind == "codemode":
        return "codemode"
    return f"tools:{server}" if server else "tools:*"


class CapabilityGuard:
    def __init__(self, servers: ServerSet) -> None:
        self.servers = servers

    async def __call__(self, request: McpRequest, call_next: Handler) -> dict[str, Any]:
        principal = request.principal
        if principal is None:
            # The transport authenticates every request; reaching here without a principal is a bug,
            # and a security check fails closed.
            raise AuthenticationRequired("Authentication required", error=None)
        if request.endpoint.kind == "codemode" and not principal.can("codemode"):
            raise InsufficientScope(["codemode"])
        target = request.target
        if target is not None:
            needed = tool_scope(target.server, target.name) if target.kind == "tool" else f"tools:{target.server}"
            if not principal.can(needed):
                raise InsufficientScope([needed])
        result = await call_next(request)
        # Code Mode lists its own two tools; the SDK behind them is built from a filtered `/mcp` listing.
        if request.method in LIST_ITEMS and request.endpoint.kind != "codemode":
            return self._filtered(request, principal, result)
        return result

    def _filtered(self, request: McpRequest, principal: Principal, result: dict[str, Any]) -> dict[str, Any]:
        key, field = LIST_ITEMS[request.method]
        items = result.get(key)
        if not isinstance(items, list):
            return result
        catalog, server = self.servers.catalog, request.endpoint.server
        kept = [item for item in items if _allows(principal, key, catalog.owner(key, item.get(field, ""), server))]
        return {**result, key: kept}


def _allows(principal: Principal, key: str, owner: tuple[str, str] | None) -> bool:
    """Tools need their own scope (or a broader one); resources and prompts their server's."""
    if owner is None:
        return False
    server, name = owner
    return principal.can(tool_scope(server, name) if key == "tools" else f"tools:{server}")
