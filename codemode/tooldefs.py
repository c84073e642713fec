"""The MCP definitions of the two Code Mode tools, `search` and `execute`.

Their size does not depend on the catalog: the listing a client loads stays the same few hundred tokens whether the
SDK behind it has ten tools or a thousand.
"""

from __future__ import annotations

from typing import Any

from codemode.outcome import Limits

__all__ = ["EXECUTE", "SEARCH", "tool_definitions"]

SEARCH = "search"
EXECUTE = "execute"

_SEARCH_DESCRIPTION = (
    "Find tools in the typed Python SDK that `execute` runs. Returns signatures, best first: "
    "`module.function(*, arg: type) -> Result  # summary`. For the TypedDicts and full docs, pass `stubs` with "
    "names like 'notes' (a server) or 'notes.create_note' (a tool). An empty query lists the servers."
)

_EXECUTE_DESCRIPTION = (
    "Run a Python program against the tool SDK; returns its printed output and the value of its last expression. "
    "Import server modules from `tools` and await their functions (keyword arguments only):\n"
    "    from tools import notes\n"
    "    note = await notes.get_note(id=3)\n"
    "Use `asyncio.gather` for independent calls. The program is type-checked first; on errors nothing runs. "
    "A failed tool call raises RuntimeError. Python subset without files, network or OS; modules: asyncio, json, "
    "re, math, datetime, time, collections, itertools, functools, random, hashlib, base64, dataclasses, copy, "
    "decimal, typing. Limits: {timeout:g} s, {tool_calls} tool calls, {output} bytes of output."
)

# Schemas say what a client needs to validate and no more: every token here is paid by every client, every session.
_SEARCH_INPUT: dict[str, Any] = {
    "type": "object",
    "properties": {
        "query": {"type": "string", "description": "What the tools should do, in a few words."},
        "limit": {"type": "integer", "minimum": 1, "maximum": 50, "default": 10},
        "stubs": {"type": "array", "items": {"type": "string"}, "maxItems": 20, "description": "Names for full stubs."},
    },
    "additionalProperties": False,
}

_SEARCH_OUTPUT: dict[str, Any] = {
    "type": "object",
    "properties": {
        "results": {"type": "array", "items": {"type": "object"}},
        "stubs": {"type": "object", "additionalProperties": {"type": "string"}},
        "unknown": {"type": "array", "items": {"type": "string"}},
        "servers": {"type": "array", "items": {"type": "object"}},
        "total_tools": {"type": "integer"},
    },
    "required": ["results", "stubs", "unknown", "servers", "total_tools"],
}

_EXECUTE_INPUT: dict[str, Any] = {
    "type": "object",
    "properties": {"code": {"type": "string", "description": "The Python program."}},
    "required": ["code"],
    "additionalProperties": False,
}

_EXECUTE_OUTPUT: dict[str, Any] = {
    "type": "object",
    "properties": {
        "ok": {"type": "boolean"},
        "output": {"type": "string"},
        "value": {},
        "error": {"type": ["object", "null"]},
        "calls": {"type": "array", "items": {"type": "object"}},
        "duration_ms": {"type": "number"},
        "warning": {"type": ["string", "null"]},
    },
    "required": ["ok", "output", "value", "error", "calls", "duration_ms", "warning"],
}


def tool_definitions(limits: Limits) -> list[dict[str, Any]]:
    """`search` and `execute` as `tools/list` entries, the execute description stating `limits`."""
    return [
        {
            "name": SEARCH,
            "title": "Search tools",
            "description": _SEARCH_DESCRIPTION,
            "inputSchema": _SEARCH_INPUT,
            "outputSchema": _SEARCH_OUTPUT,
            "annotations": {"title": "Search tools", "readOnlyHint": True, "openWorldHint": False},
        },
        {
            "name": EXECUTE,
            "title": "Execute a program",
            "description": _EXECUTE_DESCRIPTION.format(
                timeout=limits.timeout, tool_calls=limits.tool_calls, output=limits.output
            ),
            "inputSchema": _EXECUTE_INPUT,
            "outputSchema": _EXECUTE_OUTPUT,
            # What a program does depends on the tools it calls; each inner call carries its own annotations.
            "annotations": {"title": "Execute a program", "readOnlyHint": False, "openWorldHint": True},
        },
    ]
