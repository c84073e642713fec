"""The one place that turns results and errors into MCP wire messages.

Errors: a `PortalError` becomes a JSON-RPC error whose `data.code` is the
portal's stable code; an upstream's own JSON-RPC error is relayed with its code,
message and data; anything else becomes a bare "internal error" (the traceback is
logged, never sent). Results: shaped for the era the client speaks (the 2026 era
adds `resultType`, `ttlMs` and `cacheScope`; the handshake era never sees them),
with the upstream's own envelope removed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import orjson

from portal.errors import (
    ERROR_HTTP_STATUS,
    INTERNAL_ERROR,
    PortalError,
    UpstreamProtocolError,
    UpstreamRejected,
)

__all__ = [
    "CACHEABLE_METHODS",
    "error_message",
    "error_status",
    "input_required_for_legacy",
    "jsonrpc_error",
    "jsonrpc_result",
    "shape_result",
    "sse_event",
]

logger = logging.getLogger(__name__)

SERVER_INFO_KEY = "io.modelcontextprotocol/serverInfo"
MODERN_ONLY_KEYS = ("resultType", "ttlMs", "cacheScope")
CACHEABLE_METHODS = frozenset(
    {"tools/list", "resources/list", "resources/templates/list", "prompts/list", "resources/read", "server/discover"}
)
LIST_TTL_MS = 30_000
"""How long a 2026-era client may reuse a list; a change reaches it through `subscriptions/listen` anyway."""


def jsonrpc_error(request_id: Any, exc: BaseException) -> dict[str, Any]:
    """The JSON-RPC error response for `exc`, never leaking internals."""
    if isinstance(exc, UpstreamRejected):
        error: dict[str, Any] = {"code": exc.rpc_code, "message": exc.rpc_message}
        if exc.rpc_data is not None:
            error["data"] = exc.rpc_data
    elif isinstance(exc, PortalError):
        error = {"code": exc.jsonrpc_code, "message": exc.message, "data": exc.to_data()}
    else:
        logger.error("unexpected error while serving an MCP request", exc_info=exc)
        error = {"code": INTERNAL_ERROR, "message": "Internal error", "data": {"code": "internal_error"}}
    return {"jsonrpc": "2.0", "id": request_id, "error": error}


def error_message(message: Mapping[str, Any]) -> bool:
    return "error" in message


def error_status(message: Mapping[str, Any], *, modern: bool) -> int:
    """HTTP status of a response message.

    2026-07-28 maps protocol errors onto HTTP statuses (the SDK's table); the
    handshake era answers 200 and lets the JSON-RPC error speak.
    """
    if not modern or "error" not in message:
        return 200
    return ERROR_HTTP_STATUS.get(message["error"].get("code", 0), 200)


def shape_result(method: str, result: Mapping[str, Any], *, modern: bool, private: bool = True) -> dict[str, Any]:
    """Fit an upstream (or the portal's own) result to the client's era."""
    out = dict(result)
    meta = out.get("_meta")
    if isinstance(meta, Mapping) and SERVER_INFO_KEY in meta:
        # The upstream introduced itself to the portal, not to the client.
        rest = {k: v for k, v in meta.items() if k != SERVER_INFO_KEY}
        if rest:
            out["_meta"] = rest
        else:
            del out["_meta"]
    if not modern:
        for key in MODERN_ONLY_KEYS:
            out.pop(key, None)
        return out
    out.setdefault("resultType", "complete")
    if method in CACHEABLE_METHODS:
        # SPEC.md: a result filtered for the caller is `private`.
        if private:
            out["cacheScope"] = "private"
        else:
            out.setdefault("cacheScope", "private")
        out.setdefault("ttlMs", LIST_TTL_MS if method.endswith("/list") else 0)
    return out


def jsonrpc_result(request_id: Any, result: Mapping[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


def sse_event(message: Mapping[str, Any]) -> bytes:
    return b"event: message\r\ndata: " + orjson.dumps(message) + b"\r\n\r\n"


def input_required_for_legacy(server: str) -> UpstreamProtocolError:
    """A 2026 input-required result cannot travel to a handshake-era client."""
    return UpstreamProtocolError(
        server, "asked for input (an input-required result), which a 2025-11-25 client cannot answer"
    )
