"""Hosted servers: Python modules built with the `mcp` SDK, served inside the portal.

The module exposes its server as a module-level `server` (an `MCPServer` or a
low-level `Server`). The portal talks to it through the SDK's in-process
`DirectDispatcher` on the 2026-07-28 per-request path: no sockets, no JSON-RPC
framing, no handshake, but the same request handling as over the wire.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import logging
from collections.abc import Mapping
from contextlib import AsyncExitStack
from typing import Any

import anyio
from mcp.server.lowlevel.server import Server
from mcp.server.mcpserver import MCPServer
from mcp.server.runner import modern_on_request
from mcp.shared.direct_dispatcher import DirectDispatcher, create_direct_dispatcher_pair
from mcp.shared.exceptions import MCPError

from portal.errors import (
    REQUEST_TIMEOUT,
    UpstreamProtocolError,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from portal.upstream.base import CLIENT_INFO, NotificationHandler, UpstreamInfo

__all__ = ["HostedConnector", "load_hosted_server"]

logger = logging.getLogger(__name__)

MODERN = "2026-07-28"
_CAPABILITIES = "io.modelcontextprotocol/clientCapabilities"
_ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": CLIENT_INFO,
}


_request_relay: contextvars.ContextVar[NotificationHandler | None] = contextvars.ContextVar(
    "hosted_request_relay", default=None
)
"""The `on_notification` of the request being served. The in-process dispatcher runs the server's
handler in the caller's task and delivers its notifications there too, so a notification sent
while this is set belongs to that request (as one on its response stream would over HTTP)."""


def load_hosted_server(module: str) -> Server[Any]:
    """Import `module` and return the low-level server behind its `server` attribute."""
    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # an import error of any kind is the module's fault, not ours
        raise UpstreamUnavailable(module, f"cannot be imported: {type(exc).__name__}: {exc}") from None
    server = getattr(mod, "server", None)
    if isinstance(server, MCPServer):
        server = server._lowlevel_server
    if not isinstance(server, Server):
        raise UpstreamUnavailable(module, "has no module-level `server` (an MCPServer or Server)")
    return server


class HostedConnector:
    """An in-process server, reached through a `DirectDispatcher` pair."""

    def __init__(self, name: str, module: str) -> None:
        self.name = name
        self.module = module
        self.info: UpstreamInfo | None = None
        self.on_notification: NotificationHandler | None = None
        self._stack: AsyncExitStack | None = None
        self._client: DirectDispatcher | None = None
        self._closed = asyncio.Event()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def start(self) -> UpstreamInfo:
        server = load_hosted_server(self.module)
        stack = AsyncExitStack()
        try:
            state = await stack.enter_async_context(server.lifespan(server))
            client, peer = create_direct_dispatcher_pair(can_send_request=False, raise_handler_exceptions=False)
            tg = await stack.enter_async_context(anyio.create_task_group())
            # Exit order is LIFO: cancel the open listen stream first, then close both peers.
            stack.callback(peer.close)
            stack.callback(client.close)
            stack.callback(tg.cancel_scope.cancel)
            await tg.start(peer.run, modern_on_request(server, state), _drop_notification)
            await tg.start(client.run, _refuse_request, self._notified)
            raw = await client.send_raw_request("server/discover", {"_meta": _ENVELOPE}, {"timeout": 10.0})
        except BaseException:
            await stack.aclose()
            raise
        self._stack, self._client = stack, client
        meta = raw.get("_meta") or {}
        self.info = UpstreamInfo(
            protocol_version=MODERN,
            capabilities=raw.get("capabilities") or {},
            server_info=meta.get("io.modelcontextprotocol/serverInfo") or {"name": self.module},
            instructions=raw.get("instructions"),
        )
        if _announces_changes(self.info.capabilities):
            tg.start_soon(self._listen)
        return self.info

    async def _notified(self, _ctx: Any, method: str, params: Mapping[str, Any] | None) -> None:
        relay = _request_relay.get()
        if relay is not None and method == "notifications/message":
            await relay(method, params or {})
            return
        if self.on_notification is not None and method != "notifications/subscriptions/acknowledged":
            await self.on_notification(method, params or {})

    async def _listen(self) -> None:
        """Hold a `subscriptions/listen` open so list changes reach `on_notification`."""
        assert self._client is not None
        params = {
            "_meta": _ENVELOPE,
            "notifications": {"toolsListChanged": True, "resourcesListChanged": True, "promptsListChanged": True},
        }
        try:
            await self._client.send_raw_request("subscriptions/listen", params, None)
        except MCPError as exc:
            logger.debug("hosted server %s refused subscriptions/listen: %s", self.name, exc)

    async def request(
        self,
        method: str,
        params: Mapping[str, Any] | None,
        *,
        timeout: float,
        on_notification: NotificationHandler | None = None,
    ) -> dict[str, Any]:
        if self._client is None or self.closed:
            raise UpstreamUnavailable(self.name, "is not running")
        out = dict(params or {})
        caller_meta = dict(out.get("_meta") or {})
        token = caller_meta.pop("progressToken", None)
        # In process there is no shared session, so the caller's token cannot collide;
        # the dispatcher hands progress to a callback rather than to a token.
        out["_meta"] = {**caller_meta, **_ENVELOPE, **({"progressToken": token} if token is not None else {})}
        if _CAPABILITIES in caller_meta:
            # A 2026-era client's own capabilities: the server may ask it for input through the portal.
            out["_meta"][_CAPABILITIES] = caller_meta[_CAPABILITIES]
        opts: dict[str, Any] = {"timeout": timeout}
        if token is not None and on_notification is not None:

            async def progress(progress: float, total: float | None, message: str | None) -> None:
                note: dict[str, Any] = {"progressToken": token, "progress": progress}
                if total is not None:
                    note["total"] = total
                if message is not None:
                    note["message"] = message
                await on_notification("notifications/progress", note)

            opts["on_progress"] = progress
        relay_token = _request_relay.set(on_notification)
        try:
            return await self._client.send_raw_request(method, out, opts)  # type: ignore[arg-type]
        except MCPError as exc:
            if exc.code == REQUEST_TIMEOUT:
                raise UpstreamTimeout(self.name, f"did not answer within {timeout:g}s") from None
            raise UpstreamRejected(self.name, exc.code, exc.error.message, exc.error.data) from None
        except Exception as exc:
            raise UpstreamProtocolError(self.name, f"failed: {type(exc).__name__}") from None
        finally:
            _request_relay.reset(relay_token)

    async def close(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        self._closed.set()
        if stack is not None:
            with anyio.CancelScope(shield=True):
                await stack.aclose()


def _announces_changes(capabilities: Mapping[str, Any]) -> bool:
    return any(
        isinstance(capabilities.get(kind), Mapping) and capabilities[kind].get("listChanged")
        for kind in ("tools", "resources", "prompts")
    )


async def _drop_notification(_ctx: Any, _method: str, _params: Mapping[str, Any] | None) -> None:
    """The 2026 era defines no client-to-server notifications a server acts on."""


async def _refuse_request(_ctx: Any, method: str, _params: Mapping[str, Any] | None) -> dict[str, Any]:
    # 2026-07-28 servers cannot send requests to clients; the portal relays none.
    raise MCPError(code=-32601, message=f"the portal does not answer {method}")
