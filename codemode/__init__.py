"""Code Mode: a typed Python SDK over MCP tools, ranked search over it, and a sandbox that runs programs against it.

Give `CodeMode` the tool definitions of some MCP servers (server name to its `tools/list` entries) and an async
`call_tool(server, tool, arguments)` that returns a `CallToolResult` as a dict. `search` finds tools and shows their
typed signatures; `execute` type-checks a program against the SDK and runs it in a pydantic-monty sandbox, where the
program can reach nothing but those tools, each call going through `call_tool`.

This package imports nothing from `portal`: the portal passes its own pipeline in as `call_tool`.
"""

from codemode.outcome import CallRecord, ErrorKind, ExecuteError, ExecuteResult, Limits
from codemode.results import ToolCallError
from codemode.runner import CallTool
from codemode.sandbox import Sandbox, default_sandbox
from codemode.sdk import PACKAGE, PACKAGE_STUB, ParamBinding, Sdk, ServerModule, ToolBinding, build_sdk
from codemode.search import SearchHit, SearchIndex
from codemode.service import CodeMode, SearchResult, catalog_fingerprint
from codemode.tooldefs import EXECUTE, SEARCH, tool_definitions

__all__ = [
    "EXECUTE",
    "PACKAGE",
    "PACKAGE_STUB",
    "SEARCH",
    "CallRecord",
    "CallTool",
    "CodeMode",
    "ErrorKind",
    "ExecuteError",
    "ExecuteResult",
    "Limits",
    "ParamBinding",
    "Sandbox",
    "Sdk",
    "SearchHit",
    "SearchIndex",
    "SearchResult",
    "ServerModule",
    "ToolBinding",
    "ToolCallError",
    "build_sdk",
    "catalog_fingerprint",
    "default_sandbox",
    "tool_definitions",
]
