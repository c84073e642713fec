"""Values crossing the sandbox boundary: tool results in, program results out.

In: a `CallToolResult` (as a dict) becomes what the SDK promises. A tool with an `outputSchema` returns its
`structuredContent`; any other tool returns `ToolContent` (`text`, `content`, `structured`); a result with `isError`
raises `RuntimeError` in the program, carrying the tool's own error text.

Out: whatever the program printed or left as its last expression is turned into plain JSON, within a byte budget, so
nothing the sandbox produces reaches the caller as anything but data.
"""

from __future__ import annotations

import base64
import datetime
import json
import math
from collections.abc import Mapping
from typing import Any

from pydantic_monty import ExternalModule, MontyClassProxy, MontyStdTypeProxy

from codemode.sdk import ToolBinding

__all__ = ["ToolCallError", "ToolFailed", "describe_failure", "plain_json", "sandbox_value", "to_json"]

_MAX_ERROR_TEXT = 2_000


class ToolCallError(Exception):
    """Raised by a `call_tool` function to fail one call with a message the program may see.

    Any other exception from `call_tool` reaches the program only as "internal error", so that nothing about the
    host (paths, addresses, secrets in exception text) leaks into the sandbox or back to the model.
    """


class ToolFailed(Exception):
    """A tool call that failed; `message` is what the program sees in its `RuntimeError`."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def sandbox_value(binding: ToolBinding, result: Mapping[str, Any]) -> Any:
    """What the program receives for `result`; raises `ToolFailed` for an error result."""
    content = result.get("content")
    blocks = [dict(block) for block in content if isinstance(block, Mapping)] if isinstance(content, list) else []
    text = "\n".join(str(block.get("text", "")) for block in blocks if block.get("type") == "text")
    if result.get("isError") is True:
        raise ToolFailed(f"{binding.qualified} failed: {_clip(text) or 'the tool reported an error'}")
    structured = result.get("structuredContent")
    if binding.structured:
        if structured is not None:
            return structured
        # A server that declares an output schema but sends text only: its text is usually the same JSON.
        try:
            return json.loads(text)
        except ValueError:
            raise ToolFailed(f"{binding.qualified} returned no structured content") from None
    return {"text": text, "content": blocks, "structured": structured if isinstance(structured, dict) else None}


def describe_failure(binding: ToolBinding, error: BaseException) -> str:
    """The program-visible message for an exception raised by `call_tool`."""
    if isinstance(error, ToolFailed):
        return error.message
    if isinstance(error, ToolCallError):
        return f"{binding.qualified} failed: {_clip(str(error))}"
    return f"{binding.qualified} failed: internal error"


def to_json(value: Any, limit: int) -> tuple[Any, int]:
    """`value` (as the sandbox returned it) as plain JSON data, and the size of its JSON text in bytes.

    Tuples and sets become lists, bytes become base64, dates ISO strings, non-finite floats strings; a sandbox class
    instance becomes a dict of its attributes; anything else becomes a `<type>` placeholder, never its `repr`, which
    for host-side proxies could describe the host. Raises `OverflowError` when the JSON text exceeds `limit` bytes.
    """
    plain = plain_json(value)
    size = len(json.dumps(plain, ensure_ascii=False, separators=(",", ":")).encode())
    if size > limit:
        raise OverflowError(size)
    return plain, size


def plain_json(value: Any) -> Any:
    """`value` as plain JSON data (see `to_json`), with no size limit."""
    return _plain(value, 0)


def _plain(value: Any, depth: int) -> Any:
    if depth > 64:
        return "<nested too deep>"
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, Mapping):
        return {_key(key): _plain(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item, depth + 1) for item in value]
    if isinstance(value, set | frozenset):
        items = [_plain(item, depth + 1) for item in value]
        try:
            return sorted(items)
        except TypeError:
            return items
    if isinstance(value, bytes):
        return {"base64": base64.b64encode(value).decode()}
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, MontyClassProxy):
        return {"__class__": value.name, **_plain(value.attributes, depth + 1)}
    if isinstance(value, MontyStdTypeProxy):
        return f"<{value.kind} {value.name}>"
    if isinstance(value, ExternalModule):
        return "<module>"
    return f"<{type(value).__name__}>"


def _key(key: Any) -> str:
    return key if isinstance(key, str) else json.dumps(_plain(key, 0))


def _clip(text: str) -> str:
    text = text.strip()
    return text if len(text) <= _MAX_ERROR_TEXT else text[:_MAX_ERROR_TEXT] + "…"
