"""The last link of the pipeline: answer from the catalog, or send the request upstream.

Lists are answered from the catalog (so they never wait on a slow server, and a
down server just drops out); calls, reads and prompt requests are renamed back to
the upstream's own names and forwarded to the one server they belong to. Requests
on `/codemode/mcp` go to Code Mode, whose programs' calls come back through the
pipeline on the aggregated view.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from mcp.server.connection import allowed_log_levels
from mcp.shared.inbound import validate_mcp_param_headers
from mcp_types import CLIENT_CAPABILITIES_META_KEY, CLIENT_INFO_META_KEY, LOG_LEVEL_META_KEY, PROTOCOL_VERSION_META_KEY

from portal.catalog import aggregate_uri
from portal.errors import HeaderMismatch, MethodNotFound, UnknownServer
from portal.gateway.rendering import input_required_for_legacy
from portal.gateway.servers import ServerSet
from portal.pipeline import Handler, McpRequest
from portal.upstream.base import NotificationHandler

__all__ = ["FORWARDED_METHODS", "Forwarder"]

_LISTS = {
    "tools/list": "tools",
    "resources/list": "resources",
    "resources/templates/list": "resourceTemplates",
    "prompts/list": "prompts",
}
FORWARDED_METHODS = frozenset(
    {*_LISTS, "tools/call", "resources/read", "prompts/get", "completion/complete", "logging/setLevel"}
)
_ENVELOPE_KEYS = (PROTOCOL_VERSION_META_KEY, CLIENT_CAPABILITIES_META_KEY, CLIENT_INFO_META_KEY, LOG_LEVEL_META_KEY)
MCP_PARAM_HEADERS = "mcp_param_headers"
"""`request.state` key: the `Mcp-Param-*` headers of a 2026-era `tools/call` (set by the transport)."""


class Forwarder:
    """Answers one MCP request for an endpoint's view of the servers."""

    def __init__(self, servers: ServerSet, codemode: Handler | None = None) -> None:
        self.servers = servers
        self.codemode = codemode
        """Answers requests on `/codemode/mcp` (`portal.gateway.codemode.CodeModeGateway`)."""

    async def __call__(self, request: McpRequest) -> dict[str, Any]:
        if request.endpoint.kind == "codemode":
            if self.codemode is None:
                raise MethodNotFound(f"Method not found: {request.method}", method=request.method)
            return await self.codemode(request)
        method = request.method
        if method in _LISTS:
            return self._list(request, _LISTS[method])
        if request.target is not None:
            if method == "tools/call" and request.modern:
                self._check_param_headers(request)
            result = await self._forward(request)
            if method == "resources/read" and request.endpoint.server is None:
                result = _aggregate_contents(request.target.server, result)
            return result
        if method == "logging/setLevel" and not request.modern:
            # Accepted so that clients which set a level keep working; upstream log
            # messages are relayed per request, at the upstream's own level. The 2026
            # era removed the method (a client asks per request, `_meta` logLevel).
            return {}
        raise MethodNotFound(f"Method not found: {method}", method=method)

    def _servers_of(self, request: McpRequest) -> list[str]:
        if request.endpoint.server is not None:
            return [request.endpoint.server] if request.endpoint.server in self.servers.visible() else []
        return self.servers.visible()

    def _list(self, request: McpRequest, kind: str) -> dict[str, Any]:
        servers = self._servers_of(request)
        if request.endpoint.server is None:
            items = self.servers.catalog.aggregated(kind, servers)
        else:
            catalog = self.servers.catalog.get(request.endpoint.server)
            items = list(catalog.items[kind]) if catalog is not None and servers else []
        return {kind: items}

    async def _forward(self, request: McpRequest) -> dict[str, Any]:
        target = request.target
        assert target is not None
        upstream = self.servers.get(target.server)
        if upstream is None:
            raise UnknownServer(f"Unknown server: {target.server}", server=target.server)
        relay: NotificationHandler | None = None
        if request.notify is not None:
            notify = request.notify
            # 2026-07-28: a client gets log messages only at the level it asked for on the request;
            # a handshake-era upstream sends them regardless, so they are filtered here.
            levels = allowed_log_levels(request.protocol_version, request.params.get("_meta"))

            async def relay(method: str, note_params: Mapping[str, Any]) -> None:
                if method == "notifications/message" and note_params.get("level") not in levels:
                    return
                await notify(method, note_params)

        params = _upstream_params(request, target.params)
        started = time.perf_counter()
        try:
            result = await upstream.request(request.method, params, on_notification=relay)
        finally:
            # What the audit record keeps beside the call's whole latency (SPEC: upstream latency).
            request.state["upstream_latency"] = time.perf_counter() - started
        if result.get("resultType") == "input_required" and not request.modern:
            raise input_required_for_legacy(target.server)
        return result

    def _check_param_headers(self, request: McpRequest) -> None:
        """2026-07-28 custom headers: `Mcp-Param-*` must agree with the arguments the tool's schema annotates."""
        target = request.target
        headers = request.state.get(MCP_PARAM_HEADERS)
        if target is None or headers is None:
            return
        catalog = self.servers.catalog.get(target.server)
        if catalog is not None and not headers and not catalog.annotated(target.name):
            return  # nothing to check: no Mcp-Param-* header came and the tool annotates no argument
        tool = catalog.tool(target.name) if catalog is not None else None
        schema = tool.get("inputSchema") if tool is not None else None
        if schema is None:
            return
        rejection = validate_mcp_param_headers(schema, target.params.get("arguments") or {}, headers)
        if rejection is not None:
            raise HeaderMismatch(rejection.message)


def _aggregate_contents(server: str, result: dict[str, Any]) -> dict[str, Any]:
    """Contents name their URI; on /mcp they must name it as the client does."""
    contents = result.get("contents")
    if not isinstance(contents, list):
        return result
    renamed = [
        {**c, "uri": aggregate_uri(server, c["uri"])} if isinstance(c, dict) and "uri" in c else c for c in contents
    ]
    return {**result, "contents": renamed}


def _upstream_params(request: McpRequest, params: dict[str, Any]) -> dict[str, Any]:
    """`params` with the parts of the client's envelope that an upstream needs in its `_meta`.

    A 2026-era client's capabilities and log level travel on (the portal passes input-required
    results back to it, so an upstream may ask it what it declared); a handshake-era client
    cannot answer such a round, and receives every log message, as a handshake-era server
    would send it. The connector adds the rest of the envelope, or drops it for a
    handshake-era upstream.
    """
    caller = params.get("_meta")
    caller = dict(caller) if isinstance(caller, Mapping) else {}
    meta = {key: value for key, value in caller.items() if key not in _ENVELOPE_KEYS}
    if request.modern:
        if request.client_capabilities is not None:
            meta[CLIENT_CAPABILITIES_META_KEY] = dict(request.client_capabilities)
        if LOG_LEVEL_META_KEY in caller:
            meta[LOG_LEVEL_META_KEY] = caller[LOG_LEVEL_META_KEY]
    else:
        meta[LOG_LEVEL_META_KEY] = "debug"
    out = {key: value for key, value in params.items() if key != "_meta"}
    if meta:
        out["_meta"] = meta
    return out
