"""The last link of the pipeline: answer from the catalog, or send the request upstream.

Lists are answered from the catalog (so they never wait on a slow server, and a
down server just drops out); calls, reads and prompt requests are renamed back to
the upstream's own names and forwarded to the one server they belong to.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mcp.server.connection import allowed_log_levels
from mcp.shared.inbound import validate_mcp_param_headers
from mcp_types import CLIENT_CAPABILITIES_META_KEY, CLIENT_INFO_META_KEY, LOG_LEVEL_META_KEY, PROTOCOL_VERSION_META_KEY

from portal.catalog import aggregate_uri, split_uri
from portal.errors import (
    HeaderMismatch,
    InvalidParams,
    MethodNotFound,
    UnknownResource,
    UnknownServer,
    UnknownTool,
)
from portal.gateway.rendering import input_required_for_legacy
from portal.gateway.servers import ServerSet
from portal.pipeline import McpRequest
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

    def __init__(self, servers: ServerSet) -> None:
        self.servers = servers

    async def __call__(self, request: McpRequest) -> dict[str, Any]:
        method = request.method
        if method in _LISTS:
            return self._list(request, _LISTS[method])
        if method == "tools/call":
            return await self._call_tool(request)
        if method == "resources/read":
            return await self._read_resource(request)
        if method == "prompts/get":
            return await self._get_prompt(request)
        if method == "completion/complete":
            return await self._complete(request)
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

    def _target(self, request: McpRequest, name: str, *, prompt: bool = False) -> tuple[str, str]:
        """The (server, upstream name) a tool or prompt name on this endpoint refers to."""
        what = "prompt" if prompt else "tool"
        server = request.endpoint.server
        if server is None:
            resolved = self.servers.catalog.resolve_prompt(name) if prompt else self.servers.catalog.resolve_tool(name)
            if resolved is None:
                resolved = self._unlisted_server(name)
            if resolved is None:
                raise UnknownTool(f"Unknown {what}: {name}", name=name)
            server, name = resolved
        catalog = self.servers.catalog.get(server)
        if catalog is None:
            upstream = self.servers.get(server)
            if upstream is None:
                raise UnknownServer(f"Unknown server: {server}", server=server)
            # Known but not listed: it is down; let the upstream raise its own cause.
            return server, name
        items = catalog.items["prompts" if prompt else "tools"]
        if not any(item.get("name") == name for item in items):
            raise UnknownTool(f"Unknown {what}: {name}", name=name)
        return server, name

    def _unlisted_server(self, name: str) -> tuple[str, str] | None:
        """The server an aggregated name is prefixed with, when that server is configured but not listed.

        A server that is down (or still starting) has no tools listed; a client calling one it
        listed before gets the server's own cause from the upstream, rather than "unknown tool".
        Server names hold no `_`, so the prefix is everything before the first one.
        """
        server, _, rest = name.partition("_")
        upstream = self.servers.get(server)
        if not rest or upstream is None or not upstream.config.enabled or self.servers.catalog.get(server) is not None:
            return None
        return server, rest

    async def _forward(self, request: McpRequest, server: str, params: dict[str, Any]) -> dict[str, Any]:
        upstream = self.servers.get(server)
        if upstream is None:
            raise UnknownServer(f"Unknown server: {server}", server=server)
        request.state["server"] = server
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

        params = _upstream_params(request, params)
        result = await upstream.request(request.method, params, on_notification=relay)
        if result.get("resultType") == "input_required" and not request.modern:
            raise input_required_for_legacy(server)
        return result

    async def _call_tool(self, request: McpRequest) -> dict[str, Any]:
        name = _string_param(request.params, "name")
        server, tool = self._target(request, name)
        request.state["tool"] = tool
        arguments = request.params.get("arguments")
        if arguments is not None and not isinstance(arguments, Mapping):
            raise InvalidParams("arguments must be an object")
        headers = request.state.get(MCP_PARAM_HEADERS)
        if request.modern and headers is not None:
            self._check_param_headers(server, tool, arguments or {}, headers)
        return await self._forward(request, server, {**request.params, "name": tool})

    def _check_param_headers(
        self, server: str, tool: str, arguments: Mapping[str, Any], headers: Mapping[str, str]
    ) -> None:
        """2026-07-28 custom headers: `Mcp-Param-*` must agree with the arguments the tool's schema annotates."""
        catalog = self.servers.catalog.get(server)
        items = catalog.items["tools"] if catalog is not None else []
        schema = next((item.get("inputSchema") for item in items if item.get("name") == tool), None)
        if schema is None:
            return
        rejection = validate_mcp_param_headers(schema, arguments, headers)
        if rejection is not None:
            raise HeaderMismatch(rejection.message)

    async def _get_prompt(self, request: McpRequest) -> dict[str, Any]:
        name = _string_param(request.params, "name")
        server, prompt = self._target(request, name, prompt=True)
        request.state["tool"] = prompt
        return await self._forward(request, server, {**request.params, "name": prompt})

    async def _read_resource(self, request: McpRequest) -> dict[str, Any]:
        uri = _string_param(request.params, "uri")
        server, upstream_uri = self._resource_target(request, uri)
        request.state["tool"] = upstream_uri
        result = await self._forward(request, server, {**request.params, "uri": upstream_uri})
        if request.endpoint.server is None and isinstance(result.get("contents"), list):
            # Contents name their URI; on /mcp they must name it as the client does.
            result = {
                **result,
                "contents": [
                    {**c, "uri": aggregate_uri(server, c["uri"])} if isinstance(c, dict) and "uri" in c else c
                    for c in result["contents"]
                ],
            }
        return result

    def _resource_target(self, request: McpRequest, uri: str) -> tuple[str, str]:
        if request.endpoint.server is not None:
            return request.endpoint.server, uri
        split = split_uri(uri)
        if split is None or self.servers.get(split[0]) is None:
            # SEP-2164: an unknown resource is -32602 (invalid params); -32002 is retired.
            raise UnknownResource(f"Resource not found: {uri}", uri=uri)
        return split

    async def _complete(self, request: McpRequest) -> dict[str, Any]:
        ref = request.params.get("ref")
        if not isinstance(ref, Mapping):
            raise InvalidParams("ref must be an object")
        ref = dict(ref)
        if ref.get("type") == "ref/prompt":
            server, ref["name"] = self._target(request, _string_param(ref, "name"), prompt=True)
        elif ref.get("type") == "ref/resource":
            server, ref["uri"] = self._resource_target(request, _string_param(ref, "uri"))
        else:
            raise InvalidParams("ref.type must be ref/prompt or ref/resource")
        return await self._forward(request, server, {**request.params, "ref": ref})


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


def _string_param(params: Mapping[str, Any], key: str) -> str:
    value = params.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidParams(f"{key} must be a non-empty string")
    return value
