"""Reading a request body as JSON, within limits.

The limits are checked before the body is held whole (size) and before anything
walks the parsed value (depth), so an oversized or deeply nested body costs the
portal a bounded amount of memory and time and gets HTTP 413 or 400.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from starlette.types import Receive

from portal.errors import BadRequest, ParseError, PayloadTooLarge

__all__ = ["json_depth_exceeds", "read_body", "read_json_body"]


async def read_body(receive: Receive, headers: Mapping[str, str], limit: int) -> bytes:
    """The whole body, or PayloadTooLarge as soon as it passes `limit` bytes."""
    declared = headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise PayloadTooLarge(f"Request body exceeds {limit} bytes", limit=limit)
        except ValueError:
            raise BadRequest("Content-Length is not a number") from None
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest("Client disconnected before the body was complete")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"Request body exceeds {limit} bytes", limit=limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def json_depth_exceeds(value: Any, limit: int) -> bool:
    """Whether `value` nests deeper than `limit` (iterative, so hostile input cannot exhaust the stack)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if not isinstance(node, dict | list):
            continue
        children = node.values() if isinstance(node, dict) else node
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


async def read_json_body(receive: Receive, headers: Mapping[str, str], limit: int, max_depth: int) -> Any:
    body = await read_body(receive, headers, limit)
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ParseError("Parse error: the body is not valid JSON") from None
    # Nesting deeper than max_depth needs more than max_depth brackets: count them in C first.
    if body.count(b"{") + body.count(b"[") > max_depth and json_depth_exceeds(value, max_depth):
        raise BadRequest(f"JSON nesting deeper than {max_depth} levels", limit=max_depth)
    return value
