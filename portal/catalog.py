"""What every upstream offers, and how it is named on the aggregated endpoint.

The catalog keeps, per server, the last `tools/list`, `resources/list`,
`resources/templates/list` and `prompts/list` it answered (all pages), refreshed
when the server connects and whenever it sends a `list_changed` notification.
Lists are served from here, so a list never waits on a slow upstream and a down
server simply drops out of it.

Names on `/mcp` (SPEC.md, Names): tools and prompts become `{server}_{name}`,
fitting `^[A-Za-z0-9_-]{1,64}$` so that every major client accepts them; a name
that does not fit is folded into that alphabet and, if still too long, shortened
with a digest suffix. Resource URIs keep their scheme and gain the server as
their authority: `note://7` is `note://notes/7` on `/mcp`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = [
    "LIST_ITEMS",
    "Catalog",
    "ServerCatalog",
    "aggregate_name",
    "aggregate_uri",
    "fetch_server_catalog",
    "split_uri",
]

KINDS = ("tools", "resources", "resourceTemplates", "prompts")
LIST_ITEMS: dict[str, tuple[str, str]] = {
    "tools/list": ("tools", "name"),
    "prompts/list": ("prompts", "name"),
    "resources/list": ("resources", "uri"),
    "resources/templates/list": ("resourceTemplates", "uriTemplate"),
}
"""List methods: the key of their items in a result, and the field that names an item."""
_LIST_METHODS = {
    "tools": "tools/list",
    "resources": "resources/list",
    "resourceTemplates": "resources/templates/list",
    "prompts": "prompts/list",
}
_CAPABILITY = {"tools": "tools", "resources": "resources", "resourceTemplates": "resources", "prompts": "prompts"}
_NAME_OK = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_NAME_BAD_CHARS = re.compile(r"[^A-Za-z0-9_-]")
_MAX_PAGES = 100


def aggregate_name(server: str, name: str) -> str:
    """`{server}_{name}`, made to fit `^[A-Za-z0-9_-]{1,64}$`."""
    candidate = f"{server}_{name}"
    if _NAME_OK.fullmatch(candidate):
        return candidate
    folded = _NAME_BAD_CHARS.sub("_", candidate)
    if len(folded) <= 64 and folded == candidate:
        return folded
    # Folding can make two names equal; the digest of the original keeps them apart.
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{folded[: 64 - 9]}_{digest}"


def aggregate_uri(server: str, uri: str) -> str:
    """Give a resource URI (or URI template) the server as its authority."""
    scheme, sep, rest = uri.partition(":")
    if not sep:
        return f"portal://{server}/{uri}"
    if rest.startswith("//"):
        return f"{scheme}://{server}/{rest[2:]}"
    # An opaque URI (`urn:x:y`) keeps its colon, so the mapping stays reversible.
    return f"{scheme}://{server}/:{rest}"


def split_uri(uri: str) -> tuple[str, str] | None:
    """Undo `aggregate_uri`: the server and the original URI, or None if it names none."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return None
    server, slash, tail = rest.partition("/")
    if not slash or not server:
        return None
    if scheme == "portal":
        return server, tail
    if tail.startswith(":"):
        return server, f"{scheme}{tail}"
    return server, f"{scheme}://{tail}"


@dataclass
class ServerCatalog:
    """The lists one server answered, with the names they have on `/mcp`."""

    server: str
    items: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {kind: [] for kind in KINDS})

    def tool(self, name: str) -> dict[str, Any] | None:
        return self.named("tools").get(name)

    def named(self, kind: str) -> dict[str, dict[str, Any]]:
        """`kind`'s items by name, built once per catalog (a refresh replaces the whole catalog)."""
        index = self.__dict__.setdefault("_named", {})
        by_name = index.get(kind)
        if by_name is None:
            by_name = index[kind] = {item["name"]: item for item in reversed(self.items[kind]) if "name" in item}
        return by_name

    def annotated(self, tool: str) -> bool:
        """Whether the tool's input schema has `x-mcp-header` annotations (cached)."""
        flags = self.__dict__.setdefault("_annotated", {})
        flag = flags.get(tool)
        if flag is None:
            item = self.tool(tool)
            flag = flags[tool] = item is not None and b"x-mcp-header" in orjson.dumps(item.get("inputSchema"))
        return flag


class Catalog:
    """Every server's lists, plus the reverse maps from aggregated names."""

    def __init__(self) -> None:
        self._servers: dict[str, ServerCatalog] = {}
        self._tool_names: dict[str, tuple[str, str]] = {}
        self._prompt_names: dict[str, tuple[str, str]] = {}
        self.generation = 0
        """Bumped on every change, so that derived views (Code Mode's SDK) know to rebuild."""

    def servers(self) -> Iterable[ServerCatalog]:
        return self._servers.values()

    def get(self, server: str) -> ServerCatalog | None:
        return self._servers.get(server)

    def replace(self, catalog: ServerCatalog) -> None:
        self._servers[catalog.server] = catalog
        self._reindex()

    def drop(self, server: str) -> None:
        if self._servers.pop(server, None) is not None:
            self._reindex()

    def _reindex(self) -> None:
        tools: dict[str, tuple[str, str]] = {}
        prompts: dict[str, tuple[str, str]] = {}
        for server, catalog in sorted(self._servers.items()):
            for tool in catalog.items["tools"]:
                tools.setdefault(aggregate_name(server, tool["name"]), (server, tool["name"]))
            for prompt in catalog.items["prompts"]:
                prompts.setdefault(aggregate_name(server, prompt["name"]), (server, prompt["name"]))
        self._tool_names, self._prompt_names = tools, prompts
        self.generation += 1

    def resolve_tool(self, aggregated: str) -> tuple[str, str] | None:
        return self._tool_names.get(aggregated)

    def owner(self, key: str, name: str, server: str | None) -> tuple[str, str] | None:
        """The server of an item of list `key` named `name` as a client sees it, and its name there;
        `server` is the endpoint's own server (None on `/mcp`, where names carry their server)."""
        if server is not None:
            return server, name
        if key == "tools":
            return self.resolve_tool(name)
        if key == "prompts":
            return self.resolve_prompt(name)
        return split_uri(name)

    def resolve_prompt(self, aggregated: str) -> tuple[str, str] | None:
        return self._prompt_names.get(aggregated)

    def aggregated(self, kind: str, servers: Iterable[str]) -> list[dict[str, Any]]:
        """The `kind` list of `servers`, renamed for `/mcp`."""
        out: list[dict[str, Any]] = []
        for server in servers:
            catalog = self._servers.get(server)
            if catalog is None:
                continue
            for item in catalog.items[kind]:
                renamed = dict(item)
                if kind in ("tools", "prompts"):
                    renamed["name"] = aggregate_name(server, item["name"])
                    # Clients show `title` when present; keep the server visible there too.
                    if "title" in item:
                        renamed["title"] = f"{server}: {item['title']}"
                elif kind == "resources":
                    renamed["uri"] = aggregate_uri(server, item["uri"])
                else:
                    renamed["uriTemplate"] = aggregate_uri(server, item["uriTemplate"])
                out.append(renamed)
        return out


async def fetch_server_catalog(
    server: str,
    capabilities: Mapping[str, Any],
    request: Any,
    *,
    allow: Any = None,
) -> ServerCatalog:
    """Ask one server for all its lists (every page), keeping what `allow(tool_name)` lets through.

    `request(method, params)` sends one request to the server. Kinds the server
    did not announce in its capabilities are not asked for.
    """
    catalog = ServerCatalog(server)
    for kind, method in _LIST_METHODS.items():
        if _CAPABILITY[kind] not in capabilities:
            continue
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        for _ in range(_MAX_PAGES):
            result = await request(method, {"cursor": cursor} if cursor else {})
            page = result.get(kind)
            if isinstance(page, list):
                items.extend(item for item in page if isinstance(item, dict) and _well_formed(kind, item))
            cursor = result.get("nextCursor")
            if not isinstance(cursor, str) or not cursor:
                break
        if kind == "tools" and allow is not None:
            items = [tool for tool in items if allow(tool["name"])]
        catalog.items[kind] = items
    return catalog


def _well_formed(kind: str, item: Mapping[str, Any]) -> bool:
    """Drop list entries that lack their identifying field: garbage costs that entry only."""
    key = {"tools": "name", "prompts": "name", "resources": "uri", "resourceTemplates": "uriTemplate"}[kind]
    return isinstance(item.get(key), str) and bool(item[key])
