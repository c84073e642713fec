"""Who may talk to the portal: `Host` and `Origin` checks against DNS rebinding.

A DNS rebinding attack points a name the attacker owns (`evil.example`) at the portal's
address, so that a page of that name, loaded in a victim's browser, can call the portal as
if it were its own origin. Two headers give it away, and browsers always send both on the
requests that matter:

- `Host` names the attacker's host, not one the portal serves. The portal serves the host
  of `public_url` and those of `[portal] allowed_hosts`; any other `Host` gets HTTP **421
  Misdirected Request**: RFC 9110 §15.5.20 and §7.4 define it for exactly this, a request
  whose target URI names an origin the server is not authoritative for (no response it could
  give would be authoritative for that name). Checked on every path but the probes
  (`/healthz`, `/readyz`, `/metrics`), which load balancers and scrapers reach by address.
- `Origin` names the page's origin. The MCP transport (2025-11-25, Security Warning) says a
  server MUST validate it and MUST answer an invalid one with **403 Forbidden**, the body
  optionally a JSON-RPC error without an id. Checked on the MCP endpoints; allowed are the
  origin of `public_url` and those of `[portal] allowed_origins`. A request without an
  `Origin` (every non-browser client) passes: no page sent it.

When `public_url` is a loopback URL (development), every loopback `Host` (`localhost`,
`127.0.0.1`, `[::1]`, any port) and every loopback origin (`http(s)://` one of those, any
port) is accepted too, as the MCP SDKs do for local servers: a name that rebinds to
127.0.0.1 is still not one of those names, while local tools that front the portal on
another port (a proxy, an inspector) keep working.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

import orjson
from starlette.types import Scope, Send

from portal.errors import INVALID_REQUEST, PortalError

__all__ = [
    "PROBE_PATHS",
    "InboundRules",
    "MisdirectedRequest",
    "OriginNotAllowed",
    "normalize_host",
    "normalize_origin",
    "send_http_refusal",
    "send_mcp_refusal",
]

PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
"""Reached by load balancers and scrapers by address: no `Host` check."""

_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


class OriginNotAllowed(PortalError):
    """A browser page of another origin called an MCP endpoint (MCP transport: 403)."""

    code = "origin_not_allowed"
    http_status = 403
    jsonrpc_code = INVALID_REQUEST


class MisdirectedRequest(PortalError):
    """The request names a host the portal does not serve (RFC 9110 §15.5.20: 421)."""

    code = "misdirected_request"
    http_status = 421
    jsonrpc_code = INVALID_REQUEST


def _split_host(value: str) -> tuple[str, int | None] | None:
    """`host[:port]` as (lower-case host, port); IPv6 hosts keep their brackets. None if malformed."""
    value = value.strip().lower()
    if not value:
        return None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        host, rest = value[: end + 1], value[end + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:] if rest else ""
    else:
        host, _, port_text = value.partition(":")
        if ":" in port_text:
            return None
    if not host or any(c in host for c in "/\\@?# "):
        return None
    if not port_text:
        return host, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return None
    return host, int(port_text)


def normalize_host(value: str) -> str:
    """A `Host` value as the portal compares it: lower case, no trailing dot. Raises ValueError."""
    parts = _split_host(value)
    if parts is None:
        raise ValueError(f"not a host[:port]: {value!r}")
    host, port = parts
    host = host.rstrip(".")
    return host if port is None else f"{host}:{port}"


def normalize_origin(value: str) -> str:
    """An origin as the portal compares it: `scheme://host[:port]`, lower case, no default port.
    Raises ValueError for anything else (a path, user info, a scheme other than http(s))."""
    parts = urlsplit(value.strip())
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"not an origin: {value!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"not an origin: {value!r}")
    split = _split_host(parts.netloc)
    if split is None:
        raise ValueError(f"not an origin: {value!r}")
    host, port = split
    host = host.rstrip(".")
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def _is_loopback_name(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class InboundRules:
    """The hosts and origins one portal accepts (see the module's docstring)."""

    def __init__(self, public_url: str, allowed_hosts: Iterable[str] = (), allowed_origins: Iterable[str] = ()) -> None:
        public = urlsplit(public_url)
        scheme = public.scheme.lower()
        split = _split_host(public.netloc.rpartition("@")[2])
        if scheme not in _DEFAULT_PORTS or split is None:
            raise ValueError(f"public_url is not an http(s) URL: {public_url!r}")
        host, port = split
        host = host.rstrip(".")
        self.loopback = _is_loopback_name(host)
        default = _DEFAULT_PORTS[scheme]
        # Hosts matched exactly (`host:port`, or `host` alone for the default port) ...
        exact = {f"{host}:{port or default}"}
        if port is None or port == default:
            exact.add(host)
        # ... and host names matched on any port.
        any_port: set[str] = set(_LOOPBACK_NAMES) if self.loopback else set()
        self.any_host = False
        for entry in allowed_hosts:
            if entry.strip() == "*":
                self.any_host = True
                continue
            normalized = normalize_host(entry)
            (exact if ":" in normalized.rpartition("]")[2] else any_port).add(normalized)
        self._exact_hosts = frozenset(exact)
        self._any_port_hosts = frozenset(any_port)
        self._exact_bytes = frozenset(h.encode() for h in exact)
        self.origins = frozenset({normalize_origin(f"{scheme}://{public.netloc.rpartition('@')[2]}")}) | frozenset(
            normalize_origin(o) for o in allowed_origins
        )
        self._origin_bytes = frozenset(o.encode() for o in self.origins)

    def host_allowed(self, value: str) -> bool:
        if self.any_host or value in self._exact_hosts:
            return True
        split = _split_host(value)
        if split is None:
            return False
        host, port = split
        host = host.rstrip(".")
        if host in self._any_port_hosts:
            return True
        return (host if port is None else f"{host}:{port}") in self._exact_hosts

    def origin_allowed(self, value: str) -> bool:
        if value in self.origins:
            return True
        try:
            origin = normalize_origin(value)
        except ValueError:
            return False  # `null` (sandboxed frames, file: pages) and anything malformed
        if origin in self.origins:
            return True
        if self.loopback:
            host = _split_host(origin.partition("://")[2])
            return host is not None and _is_loopback_name(host[0])
        return False

    def refusal(self, scope: Scope, *, mcp: bool) -> PortalError | None:
        """Why the request of `scope` is refused, or None. `mcp`: check `Origin` too."""
        host: bytes | None = None
        origin: bytes | None = None
        for key, value in scope["headers"]:
            if key == b"host":
                host = value
            elif key == b"origin":
                origin = value
        if host is not None and host not in self._exact_bytes:
            text = host.decode("latin-1")
            if not self.host_allowed(text):
                return MisdirectedRequest(
                    f"This portal does not serve the host {text!r} (see [portal] allowed_hosts)", host=text
                )
        if mcp and origin is not None and origin not in self._origin_bytes:
            text = origin.decode("latin-1")
            if not self.origin_allowed(text):
                return OriginNotAllowed(
                    f"Requests from the origin {text!r} are not allowed (see [portal] allowed_origins)", origin=text
                )
        return None


async def send_mcp_refusal(send: Send, error: PortalError) -> None:
    """The refusal on an MCP endpoint: its status, and a JSON-RPC error without an id (MCP transport)."""
    rpc_error = {"code": error.jsonrpc_code, "message": error.message, "data": error.to_data()}
    body = orjson.dumps({"jsonrpc": "2.0", "id": None, "error": rpc_error})
    await _send(send, error.http_status, body)


async def send_http_refusal(send: Send, error: PortalError) -> None:
    """The refusal elsewhere (pages, OAuth, admin API): its status and a JSON error."""
    body = orjson.dumps({"error": error.code, "error_description": error.message})
    await _send(send, error.http_status, body)


async def _send(send: Send, status: int, body: bytes) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"cache-control", b"no-store"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
