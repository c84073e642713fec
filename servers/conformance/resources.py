"""The `test://` resources and resource template, and handshake-era `resources/subscribe` / `unsubscribe`."""

from __future__ import annotations

import json
from typing import Any

from mcp.server import ServerRequestContext
from mcp.types import EmptyResult, SubscribeRequestParams, UnsubscribeRequestParams

from .content import PNG_BYTES
from .core import server

_subscriptions: set[str] = set()


@server.resource("test://static-text", name="static-text", mime_type="text/plain")
def static_text() -> str:
    """A static text resource for testing."""
    return "This is the content of the static text resource."


@server.resource("test://static-binary", name="static-binary", mime_type="image/png")
def static_binary() -> bytes:
    """A static binary resource (a 1x1 PNG) for testing."""
    return PNG_BYTES


@server.resource("test://template/{id}/data", name="template-data", mime_type="application/json")
def template_data(id: str) -> str:
    """A resource template: substitutes `{id}` into the returned JSON."""
    return json.dumps({"id": id, "templateTest": True, "data": f"Data for ID: {id}"})


@server.resource("test://watched-resource", name="watched-resource", mime_type="text/plain")
def watched_resource() -> str:
    """A resource clients can subscribe to."""
    return "Watched resource content"


async def _subscribe(ctx: ServerRequestContext[Any], params: SubscribeRequestParams) -> EmptyResult:
    """Handle `resources/subscribe` (handshake era; the stateless era uses subscriptions/listen)."""
    _subscriptions.add(str(params.uri))
    return EmptyResult()


async def _unsubscribe(ctx: ServerRequestContext[Any], params: UnsubscribeRequestParams) -> EmptyResult:
    """Handle `resources/unsubscribe`."""
    _subscriptions.discard(str(params.uri))
    return EmptyResult()


# MCPServer has no public hook for these handshake-era methods; the low-level server does. Registering them
# also makes the server advertise `resources.subscribe` in the handshake era.
server._lowlevel_server.add_request_handler("resources/subscribe", SubscribeRequestParams, _subscribe)
server._lowlevel_server.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, _unsubscribe)
