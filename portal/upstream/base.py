"""The seam between the gateway and the upstream MCP servers it fronts.

A `Connector` speaks MCP, at the JSON-RPC level, to one upstream server over one
transport (Streamable HTTP, stdio, or in-process). It negotiates the protocol era
with that upstream on its own, whatever era the portal's clients speak, and keeps
one long-lived session (a handshake-era `Mcp-Session-Id`, a stdio pipe, an
in-process server) that every call reuses.

The gateway hands it plain JSON-RPC `params` (a dict, already renamed for the
upstream) and gets back the plain `result` dict; it never sees the transport.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "CLIENT_INFO",
    "Connector",
    "NotificationHandler",
    "UpstreamInfo",
    "with_progress_token",
]

CLIENT_INFO: dict[str, str] = {"name": "portal", "version": "0.1.0"}
"""How the portal introduces itself to upstream servers."""

NotificationHandler = Callable[[str, Mapping[str, Any]], Awaitable[None]]
"""Receives `(method, params)` of a JSON-RPC notification."""


@dataclass
class UpstreamInfo:
    """What the handshake (or `server/discover`) told the portal about an upstream."""

    protocol_version: str
    """The negotiated era: `2025-11-25` (or an older handshake version) or `2026-07-28`."""
    capabilities: dict[str, Any] = field(default_factory=dict)
    server_info: dict[str, Any] = field(default_factory=dict)
    instructions: str | None = None

    @property
    def modern(self) -> bool:
        return self.protocol_version >= "2026-07-28"


@runtime_checkable
class Connector(Protocol):
    """One upstream MCP server, reached over one transport.

    Contract, shared by every implementation:

    - `start()` connects and negotiates the era (`protocol="auto"`: probe
      `server/discover` at 2026-07-28, fall back to `initialize`), and returns the
      `UpstreamInfo`. It raises `UpstreamUnavailable` when the server cannot be
      reached or the handshake fails, `UpstreamProtocolError` when it answers
      something that is not MCP.
    - `request(method, params, timeout=, on_notification=)` sends one request
      and returns its `result` dict. For the 2026 era the connector adds the
      `_meta` envelope (protocol version, client capabilities, client info) itself.
      If `params["_meta"]["progressToken"]` is present, the connector replaces it
      with a token unique on its session and hands every `notifications/progress`
      for it to `on_notification` with the caller's token restored; other
      notifications that belong to this request (2026 era: those on its response
      stream; stdio: `notifications/message` with `related_request_id`) go there too.
      Errors: `UpstreamRejected` for a JSON-RPC error answer (code, message and data
      kept), `UpstreamTimeout` after `timeout` seconds, `UpstreamUnavailable` when the
      transport fails (connection refused or reset, process died), and
      `UpstreamProtocolError` for an answer that is not JSON-RPC. Cancelling the
      awaiting task cancels the upstream request: a handshake-era session gets
      `notifications/cancelled` with the upstream request id, a 2026-era request
      has its response stream closed.
    - `on_notification` (attribute, set by the owner before `start`) receives the
      server's unsolicited notifications, such as `notifications/tools/list_changed`:
      from the standalone GET stream (handshake era), from `subscriptions/listen`
      (2026 era), or from stdout (stdio).
    - `closed` is set when the session has ended for good (process exit, session
      expired and not renewable); the supervisor then restarts the connector.
    - `close()` ends the session (DELETE for HTTP sessions, terminate for processes)
      and is safe to call twice.
    - Requests the upstream sends to the portal (sampling, elicitation, roots) are
      answered with a JSON-RPC `METHOD_NOT_FOUND` error: the portal does not relay
      server-to-client requests.
    """

    name: str
    info: UpstreamInfo | None
    on_notification: NotificationHandler | None

    async def start(self) -> UpstreamInfo: ...

    async def request(
        self,
        method: str,
        params: Mapping[str, Any] | None,
        *,
        timeout: float,
        on_notification: NotificationHandler | None = None,
    ) -> dict[str, Any]: ...

    @property
    def closed(self) -> bool: ...

    async def close(self) -> None: ...


def with_progress_token(params: Mapping[str, Any] | None, token: str | int | None) -> dict[str, Any]:
    """A copy of `params` whose `_meta.progressToken` is `token` (removed when `None`)."""
    out = dict(params or {})
    meta = dict(out.get("_meta") or {})
    if token is None:
        meta.pop("progressToken", None)
    else:
        meta["progressToken"] = token
    if meta:
        out["_meta"] = meta
    else:
        out.pop("_meta", None)
    return out
