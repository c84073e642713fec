"""The 2026-07-28 routing headers of a Streamable HTTP request (basic/transports#routing-headers).

Every request names its method in `Mcp-Method`; `tools/call`, `prompts/get` and
`resources/read` name their target in `Mcp-Name`; and a `tools/call` mirrors the
arguments its tool's input schema annotates with `x-mcp-header` into `Mcp-Param-*`
headers (basic/transports#custom-headers), which the server checks against the body.
`RoutingHeaders` learns those annotations from the `tools/list` results that pass
through it, or asks an optional lookup for a tool it has not seen listed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from mcp.shared.inbound import (
    NAME_BEARING_METHODS,
    encode_header_value,
    find_invalid_x_mcp_header,
    mcp_param_headers,
    x_mcp_header_map,
)

__all__ = ["InputSchemaLookup", "RoutingHeaders"]

logger = logging.getLogger("portal.upstream.http")

InputSchemaLookup = Callable[[str], Mapping[str, Any] | None]
"""Returns the `inputSchema` of an upstream tool by its upstream name, or None when unknown."""


class RoutingHeaders:
    """Builds the routing headers of one upstream's requests."""

    def __init__(self, server: str, input_schema: InputSchemaLookup | None = None) -> None:
        self._server = server
        self._lookup = input_schema
        self._maps: dict[str, dict[tuple[str, ...], str]] = {}

    def clear(self) -> None:
        self._maps.clear()

    def for_request(self, base: Mapping[str, str], method: str, params: Mapping[str, Any] | None) -> dict[str, str]:
        """`base` plus the routing headers of a `method` request with `params`."""
        headers = {**base, "Mcp-Method": method}
        key = NAME_BEARING_METHODS.get(method)
        name = params.get(key) if key is not None and params is not None else None
        if isinstance(name, str):
            headers["Mcp-Name"] = encode_header_value(name)
            if method == "tools/call":
                arguments = params.get("arguments") if params is not None else None
                header_map = self._header_map(name)
                if header_map and isinstance(arguments, Mapping):
                    headers.update(mcp_param_headers(header_map, arguments))
        return headers

    def absorb(self, result: dict[str, Any]) -> None:
        """Learn the annotations of a `tools/list` result, dropping the tools whose are invalid."""
        tools = result.get("tools")
        if not isinstance(tools, list):
            return
        kept: list[Any] = []
        for tool in tools:
            name = tool.get("name") if isinstance(tool, dict) else None
            schema = tool.get("inputSchema") if isinstance(tool, dict) else None
            reason = find_invalid_x_mcp_header(schema)
            if reason is not None:
                # basic/transports#custom-headers: clients MUST drop a tool with invalid annotations.
                logger.warning("dropping tool %r of %s: invalid x-mcp-header (%s)", name, self._server, reason)
                continue
            kept.append(tool)
            if isinstance(name, str):
                header_map = x_mcp_header_map(schema)
                if header_map:
                    self._maps[name] = header_map
                else:
                    self._maps.pop(name, None)
        if len(kept) != len(tools):
            result["tools"] = kept

    def _header_map(self, tool: str) -> dict[tuple[str, ...], str] | None:
        header_map = self._maps.get(tool)
        if header_map is None and self._lookup is not None:
            schema = self._lookup(tool)
            if schema is not None and find_invalid_x_mcp_header(schema) is None:
                header_map = self._maps[tool] = x_mcp_header_map(schema)
        return header_map
