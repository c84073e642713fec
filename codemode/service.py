"""`CodeMode`: search and execute over one tool catalog.

Build one per catalog a caller may see (the SDK is generated once, in the constructor) and call `search`, `stub`
and `execute`, or hand MCP `tools/call` requests to `call`. Nothing here holds workers or threads: those belong to
the `Sandbox`, shared by every `CodeMode` of the process.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from codemode.outcome import ExecuteResult, Limits
from codemode.runner import CallTool, run_program
from codemode.sandbox import Sandbox, SdkModules, default_sandbox
from codemode.sdk import PACKAGE, Sdk, build_sdk
from codemode.search import SearchHit, SearchIndex
from codemode.tooldefs import EXECUTE, SEARCH, tool_definitions

__all__ = ["CodeMode", "SearchResult", "catalog_fingerprint"]

_MAX_LIMIT = 50


@dataclass(frozen=True)
class SearchResult:
    """Ranked tools for a query, plus any full stubs asked for."""

    query: str
    hits: tuple[SearchHit, ...]
    stubs: dict[str, str] = field(default_factory=dict)
    unknown: tuple[str, ...] = ()
    servers: tuple[tuple[str, str, int], ...] = ()  # (server, module, tool count), for an empty query
    total_tools: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "results": [
                {"tool": hit.qualified, "signature": hit.signature, "summary": hit.summary, "score": hit.score}
                for hit in self.hits
            ],
            "stubs": dict(self.stubs),
            "unknown": list(self.unknown),
            "servers": [{"server": s, "module": m, "tools": n} for s, m, n in self.servers],
            "total_tools": self.total_tools,
        }

    def to_text(self) -> str:
        """Compact text for a model: signatures one per line, then the stubs asked for."""
        lines: list[str] = []
        if self.servers:
            lines.append(f"# {self.total_tools} tools in {len(self.servers)} servers, each a module of `tools`")
            lines += [f"{module}  # server {server!r}, {count} tools" for server, module, count in self.servers]
        if self.query.strip():
            if self.hits:
                lines.append(f"# {len(self.hits)} of {self.total_tools} tools for {self.query.strip()!r}")
                lines += [hit.line() for hit in self.hits]
            else:
                lines.append(f"# no tool matches {self.query.strip()!r}")
        if self.unknown:
            lines.append("# unknown names: " + ", ".join(self.unknown))
        for stub in self.stubs.values():
            lines += ["", stub.rstrip("\n")]
        return "\n".join(lines) if lines else "# nothing found"


class CodeMode:
    """Search and execute over `catalog`: server name to the tool definitions `tools/list` gave for it.

    `call_tool(server, tool, arguments)` makes each inner call and returns its `CallToolResult` as a dict; it may be
    given here, per `execute`, or both (the per-run one wins).
    """

    def __init__(
        self,
        catalog: Mapping[str, Sequence[Mapping[str, Any]]],
        call_tool: CallTool | None = None,
        *,
        limits: Limits | None = None,
        sandbox: Sandbox | None = None,
    ) -> None:
        self.sdk: Sdk = build_sdk(catalog)
        self.limits = limits or Limits()
        self._call_tool = call_tool
        self._sandbox = sandbox
        self._index = SearchIndex(self.sdk)
        self._modules = SdkModules(self.sdk)
        self._bindings = self.sdk.bindings

    @property
    def tool_count(self) -> int:
        return len(self._bindings)

    async def warm_up(self) -> None:
        """Start the sandbox's workers and this SDK's type checker now, so the first `execute` does not wait."""
        sandbox = self._sandbox or default_sandbox()
        checker = sandbox.checker(self._modules.select("pass"))  # the checker of programs that import no module
        await asyncio.get_running_loop().run_in_executor(sandbox.waiting_executor, checker.check, "pass")

    def tool_definitions(self) -> list[dict[str, Any]]:
        """The `tools/list` entries of `search` and `execute`."""
        return tool_definitions(self.limits)

    def search(self, query: str = "", limit: int = 10, stubs: Sequence[str] = ()) -> SearchResult:
        """The best `limit` tools for `query`, and the full stubs of the servers or tools named in `stubs`."""
        limit = min(max(int(limit), 1), _MAX_LIMIT)
        hits = tuple(self._index.search(query, limit)) if query.strip() else ()
        found: dict[str, str] = {}
        unknown: list[str] = []
        for name in stubs:
            text = self.stub(name)
            if text is None:
                unknown.append(name)
            else:
                found[name] = text
        servers: tuple[tuple[str, str, int], ...] = ()
        if not query.strip() and not stubs:
            servers = tuple((m.server, m.module, len(m.tools)) for m in self.sdk.modules)
        return SearchResult(query, hits, found, tuple(unknown), servers, self.tool_count)

    def stub(self, name: str) -> str | None:
        """The full stub of a server (`notes`) or of one tool (`notes.create_note`); None when there is no such."""
        name = name.strip().removeprefix(f"{PACKAGE}.")
        module = self.sdk.module(name)
        if module is not None:
            return module.stub()
        found = self.sdk.find(name)
        return found[0].tool_stub(found[1]) if found else None

    async def execute(
        self, code: str, *, call_tool: CallTool | None = None, limits: Limits | None = None
    ) -> ExecuteResult:
        """Type-check `code` against the SDK, then run it in the sandbox; every tool call goes through `call_tool`."""
        caller = call_tool or self._call_tool
        if caller is None:
            raise ValueError("execute needs a call_tool function, given to CodeMode or to execute")
        sandbox = self._sandbox or default_sandbox()
        return await run_program(sandbox, self._modules, self._bindings, code, caller, limits or self.limits)

    async def call(
        self, name: str, arguments: Mapping[str, Any] | None, *, call_tool: CallTool | None = None
    ) -> dict[str, Any]:
        """Serve an MCP `tools/call` of `search` or `execute`; returns the `CallToolResult` as a dict.

        Bad arguments give an error result (`isError`), as MCP asks of input validation; an unknown tool name raises
        `LookupError`, which an endpoint reports as a protocol error.
        """
        arguments = dict(arguments or {})
        if name == SEARCH:
            problem = _check(arguments, {"query": str, "limit": int, "stubs": list}, required=())
            if problem is None and not all(isinstance(item, str) for item in arguments.get("stubs", [])):
                problem = "stubs must be a list of strings"
            if problem:
                return _error(problem)
            found = self.search(arguments.get("query", ""), arguments.get("limit", 10), arguments.get("stubs", []))
            return {"content": [{"type": "text", "text": found.to_text()}], "structuredContent": found.to_dict()}
        if name == EXECUTE:
            problem = _check(arguments, {"code": str}, required=("code",))
            if problem:
                return _error(problem)
            result = await self.execute(arguments["code"], call_tool=call_tool)
            return {
                "content": [{"type": "text", "text": result.to_text()}],
                "structuredContent": result.to_dict(),
                "isError": not result.ok,
            }
        raise LookupError(f"unknown tool {name!r}; code mode has {SEARCH!r} and {EXECUTE!r}")


def catalog_fingerprint(catalog: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    """A digest of a catalog's content, for caching one `CodeMode` per distinct catalog (say, per caller's view).

    Servers and tools are sorted first, so listing order does not change it; any change to a definition does.
    """
    servers = {server: sorted(tools, key=lambda tool: str(tool.get("name"))) for server, tools in catalog.items()}
    canonical = json.dumps(servers, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _check(arguments: Mapping[str, Any], types: Mapping[str, type], required: Sequence[str]) -> str | None:
    for key in arguments:
        if key not in types:
            return f"unexpected argument {key!r}"
    for key in required:
        if key not in arguments:
            return f"missing argument {key!r}"
    for key, expected in types.items():
        value = arguments.get(key)
        if key in arguments and (not isinstance(value, expected) or isinstance(value, bool)):
            return f"argument {key!r} must be of type {expected.__name__}"
    return None


def _error(message: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": message}], "isError": True}
