"""The last link of the pipeline: answer from the catalog, or send the request upstream.

Lists are answered from the catalog (so they never wait on a slow server, and a
down server just drops out); calls, reads and prompt requests are renamed back to
the upstream's own names and forwarded to the one server they belong to.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from portal.catalog import aggregate_uri, split_uri
from portal.errors import InvalidParams, MethodNotFound, UnknownResource, UnknownServer, UnknownTool
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
        if method == "logging/setLevel":
            # Accepted so that clients which set a level keep working; upstream log
            # messages are relayed per request, at the upstream's own level.
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

    async def _forward(self, request: McpRequest, server: str, params: dict[str, Any]) -> dict[str, Any]:
        upstream = self.servers.get(server)
        if upstream is None:
            raise UnknownServer(f"Unknown server: {server}", server=server)
        request.state["server"] = server
        relay: NotificationHandler | None = None
        if request.notify is not None:
            notify = request.notify

            async def relay(method: str, note_params: Mapping[str, Any]) -> None:
                await notify(method, note_params)

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
        return await self._forward(request, server, {**request.params, "name": tool})

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
            # SEP-2164: an unknown resource is "resource not found", -32002.
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


def _string_param(params: Mapping[str, Any], key: str) -> str:
    value = params.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidParams(f"{key} must be a non-empty string")
    return value
