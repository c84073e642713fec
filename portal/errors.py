"""The portal's error tree.

Every error the portal raises on purpose is a `PortalError` with a stable `code`
(a short snake_case string that clients, logs and the audit log can match on), an
HTTP status for the admin and OAuth surfaces, and a JSON-RPC code for the MCP
surfaces. `portal.gateway.rendering` is the one place that turns them into wire
responses; nothing else formats an error for a client.

Messages are written for the person reading them and never carry secrets,
host paths or upstream tracebacks.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "BadRequest",
    "ConfigError",
    "HeaderMismatch",
    "InvalidParams",
    "MethodNotFound",
    "NotFound",
    "ParseError",
    "PayloadTooLarge",
    "PortalError",
    "SessionNotFound",
    "UnknownResource",
    "UnknownServer",
    "UnknownTool",
    "UnsupportedProtocolVersion",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamRejected",
    "UpstreamTimeout",
    "UpstreamUnavailable",
]

# JSON-RPC 2.0 §5.1 codes, and the MCP-reserved ones used below.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
CONNECTION_CLOSED = -32000
REQUEST_TIMEOUT = -32001
HEADER_MISMATCH = -32020
UNSUPPORTED_PROTOCOL_VERSION = -32022
# Implementation-defined server errors live in -32099..-32000 (JSON-RPC 2.0 §5.1);
# MCP already uses -32000 and -32001, so the portal's own start at -32050.
UPSTREAM_UNAVAILABLE = -32050
UPSTREAM_PROTOCOL = -32051

ERROR_HTTP_STATUS: dict[int, int] = {
    PARSE_ERROR: 400,
    INVALID_REQUEST: 400,
    INVALID_PARAMS: 400,
    HEADER_MISMATCH: 400,
    -32021: 400,  # missing required client capability
    UNSUPPORTED_PROTOCOL_VERSION: 400,
    METHOD_NOT_FOUND: 404,
}
"""2026-07-28 streamable HTTP: the HTTP status that goes with a JSON-RPC error code (others: 200)."""


class PortalError(Exception):
    """Root of every error the portal raises on purpose."""

    code: ClassVar[str] = "portal_error"
    http_status: ClassVar[int] = 500
    jsonrpc_code: ClassVar[int] = INTERNAL_ERROR

    def __init__(self, message: str, **data: Any) -> None:
        super().__init__(message)
        self.message = message
        self.data = {key: value for key, value in data.items() if value is not None}

    def to_data(self) -> dict[str, Any]:
        """The `error.data` member of a JSON-RPC error: the stable code plus context."""
        return {"code": self.code, **self.data}


class ConfigError(PortalError):
    """`portal.toml`, an environment variable or a registry change is invalid."""

    code = "config_invalid"
    http_status = 400


class BadRequest(PortalError):
    """The request is not a valid JSON-RPC message for this endpoint."""

    code = "bad_request"
    http_status = 400
    jsonrpc_code = INVALID_REQUEST


class ParseError(BadRequest):
    code = "parse_error"
    jsonrpc_code = PARSE_ERROR


class PayloadTooLarge(BadRequest):
    code = "payload_too_large"
    http_status = 413


class InvalidParams(BadRequest):
    code = "invalid_params"
    jsonrpc_code = INVALID_PARAMS


class MethodNotFound(BadRequest):
    code = "method_not_found"
    http_status = 404
    jsonrpc_code = METHOD_NOT_FOUND


class HeaderMismatch(BadRequest):
    """2026-07-28: a routing header disagrees with the body it travels with."""

    code = "header_mismatch"
    jsonrpc_code = HEADER_MISMATCH


class UnsupportedProtocolVersion(BadRequest):
    code = "unsupported_protocol_version"
    jsonrpc_code = UNSUPPORTED_PROTOCOL_VERSION

    def to_data(self) -> dict[str, Any]:
        # The spec fixes this error's data shape ({supported, requested}); clients parse it.
        return dict(self.data)


class NotFound(PortalError):
    code = "not_found"
    http_status = 404
    jsonrpc_code = INVALID_PARAMS


class SessionNotFound(NotFound):
    """Streamable HTTP: an unknown or ended session is a 404, so that the client re-initializes."""

    code = "session_not_found"
    jsonrpc_code = INVALID_REQUEST


class UnknownServer(NotFound):
    code = "unknown_server"


class UnknownTool(NotFound):
    """MCP 2025-11-25 server/tools: an unknown tool is a -32602 protocol error."""

    code = "unknown_tool"


class UnknownResource(NotFound):
    """SEP-2164: reading a resource nobody serves is invalid params (-32602), not the retired -32002."""

    code = "unknown_resource"


class UpstreamError(PortalError):
    """Something went wrong between the portal and one upstream server.

    Always names the server, so that a client can tell which of the servers behind
    the aggregated endpoint failed.
    """

    code = "upstream_error"
    http_status = 502
    jsonrpc_code = UPSTREAM_UNAVAILABLE

    def __init__(self, server: str, cause: str, **data: Any) -> None:
        super().__init__(f"server '{server}' {cause}", server=server, **data)
        self.server = server
        self.cause = cause


class UpstreamUnavailable(UpstreamError):
    """The server cannot be reached, has crashed, or is not started yet."""

    code = "upstream_unavailable"
    http_status = 503


class UpstreamTimeout(UpstreamError):
    code = "upstream_timeout"
    http_status = 504
    jsonrpc_code = REQUEST_TIMEOUT


class UpstreamProtocolError(UpstreamError):
    """The server answered with something that is not MCP (bad JSON, wrong shape)."""

    code = "upstream_protocol_error"
    jsonrpc_code = UPSTREAM_PROTOCOL


class UpstreamRejected(UpstreamError):
    """The server answered the request with a JSON-RPC error of its own.

    Its code and message are relayed as they came: they are the upstream's answer
    to the client, not a fault of the portal.
    """

    code = "upstream_rejected"

    def __init__(self, server: str, rpc_code: int, rpc_message: str, rpc_data: Any = None) -> None:
        super().__init__(server, f"rejected the request: {rpc_message}")
        self.rpc_code = rpc_code
        self.rpc_message = rpc_message
        self.rpc_data = rpc_data
