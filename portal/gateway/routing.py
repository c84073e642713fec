"""Which server, and which of its tools, prompts or resources, a request is about.

The first stage of the pipeline. It resolves the name a client used on its
endpoint (`notes_create_note` on `/mcp`, `create_note` on `/servers/notes/mcp`,
`note://notes/7` on `/mcp`) to the server and the upstream's own name, so that the
stages after it (capabilities, policies, audit) and the forwarder all see the
same target.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from portal.catalog import split_uri
from portal.errors import InvalidParams, UnknownResource, UnknownServer, UnknownTool
from portal.gateway.servers import ServerSet
from portal.pipeline import Handler, McpRequest

__all__ = ["Router", "Target"]


@dataclass(frozen=True)
class Target:
    """The upstream side of a request."""

    server: str
    kind: Literal["tool", "prompt", "resource"]
    name: str
    """The tool or prompt name, or the resource URI, as the server knows it."""
    params: dict[str, Any]
    """The request's params renamed for the server."""


class Router:
    """Pipeline stage: sets `request.target` for calls, reads, prompt and completion requests."""

    def __init__(self, servers: ServerSet) -> None:
        self.servers = servers

    async def __call__(self, request: McpRequest, call_next: Handler) -> dict[str, Any]:
        # Code Mode's own tools (`search`, `execute`) are no server's; the calls its programs make come
        # back through the pipeline on the aggregated view, and are routed then.
        if request.method in _RESOLVERS and request.endpoint.kind != "codemode":
            request.target = _RESOLVERS[request.method](self, request)
        return await call_next(request)

    def _tool(self, request: McpRequest) -> Target:
        name = _string_param(request.params, "name")
        server, tool = self._named(request, name)
        arguments = request.params.get("arguments")
        if arguments is not None and not isinstance(arguments, Mapping):
            raise InvalidParams("arguments must be an object")
        return Target(server, "tool", tool, {**request.params, "name": tool})

    def _prompt(self, request: McpRequest) -> Target:
        name = _string_param(request.params, "name")
        server, prompt = self._named(request, name, prompt=True)
        return Target(server, "prompt", prompt, {**request.params, "name": prompt})

    def _resource(self, request: McpRequest) -> Target:
        server, uri = self._resource_target(request, _string_param(request.params, "uri"))
        return Target(server, "resource", uri, {**request.params, "uri": uri})

    def _completion(self, request: McpRequest) -> Target:
        ref = request.params.get("ref")
        if not isinstance(ref, Mapping):
            raise InvalidParams("ref must be an object")
        ref = dict(ref)
        if ref.get("type") == "ref/prompt":
            server, ref["name"] = self._named(request, _string_param(ref, "name"), prompt=True)
            kind: Literal["prompt", "resource"] = "prompt"
        elif ref.get("type") == "ref/resource":
            server, ref["uri"] = self._resource_target(request, _string_param(ref, "uri"))
            kind = "resource"
        else:
            raise InvalidParams("ref.type must be ref/prompt or ref/resource")
        return Target(server, kind, ref.get("name") or ref["uri"], {**request.params, "ref": ref})

    def _named(self, request: McpRequest, name: str, *, prompt: bool = False) -> tuple[str, str]:
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
        if name not in catalog.named("prompts" if prompt else "tools"):
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

    def _resource_target(self, request: McpRequest, uri: str) -> tuple[str, str]:
        if request.endpoint.server is not None:
            return request.endpoint.server, uri
        split = split_uri(uri)
        if split is None or self.servers.get(split[0]) is None:
            # SEP-2164: an unknown resource is -32602 (invalid params); -32002 is retired.
            raise UnknownResource(f"Resource not found: {uri}", uri=uri)
        return split


_RESOLVERS = {
    "tools/call": Router._tool,
    "prompts/get": Router._prompt,
    "resources/read": Router._resource,
    "completion/complete": Router._completion,
}


def _string_param(params: Mapping[str, Any], key: str) -> str:
    value = params.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidParams(f"{key} must be a non-empty string")
    return value
