"""Fetching a URL someone else chose, without being turned against the portal's own network (SSRF).

Used for Client ID Metadata Documents, whose URL is the client id any caller sends.
Every hop is checked the same way:

1. the scheme is `https` (plain `http` only to a loopback address, and only when the
   caller allows loopback, for development); no user info in the URL;
2. the host is resolved, and every address it resolves to must be a public unicast
   address: private, loopback, link-local, shared (CGNAT), reserved, multicast and
   unspecified ranges are refused, IPv4-mapped and NAT64 IPv6 addresses are judged by
   the IPv4 address inside, and odd spellings (`2130706433`, `0x7f.1`) are judged by
   what they resolve to;
3. the connection goes to exactly the checked addresses (a resolver pinned to them),
   so a DNS answer that changes between check and connect (rebinding) changes nothing;
4. redirects are not followed by the HTTP client but here, each target checked again,
   at most `max_redirects` of them;
5. the body is read up to `max_bytes`, within `timeout` seconds overall.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from portal.errors import PortalError

__all__ = ["OutboundFailed", "OutboundRefused", "Resolver", "check_address", "fetch_json"]

Resolver = Callable[[str, int], Awaitable[list[str]]]
"""`(host, port) -> addresses`; tests pass one so that nothing touches the network."""

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_REDIRECTS = {301, 302, 303, 307, 308}


class OutboundRefused(PortalError):
    """The URL, an address it resolves to, a redirect or the response is not allowed."""

    code = "outbound_refused"
    http_status = 400


class OutboundFailed(PortalError):
    """The URL could not be fetched (network error, timeout, error status, not JSON)."""

    code = "outbound_failed"
    http_status = 502


def _embedded_ipv4(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if address.sixtofour is not None:
            return address.sixtofour
    return address


def check_address(text: str, *, allow_loopback: bool) -> IPAddress:
    """The address, if the portal may connect to it; `OutboundRefused` otherwise."""
    try:
        address: IPAddress = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        raise OutboundRefused(f"not an IP address: {text!r}") from None
    inner = _embedded_ipv4(address)
    if inner.is_loopback or address.is_loopback:
        if allow_loopback:
            return address
        raise OutboundRefused("the URL resolves to a loopback address")
    for candidate in {address, inner}:
        if (
            candidate.is_private
            or candidate.is_link_local
            or candidate.is_multicast
            or candidate.is_reserved
            or candidate.is_unspecified
            or not candidate.is_global
        ):
            raise OutboundRefused("the URL resolves to a private or reserved address")
    return address


async def _system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


class _PinnedResolver(AbstractResolver):
    """Answers for one host with the addresses already checked, and for nothing else."""

    def __init__(self, host: str, addresses: list[str]) -> None:
        self._host = host
        self._addresses = addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host != self._host:
            raise OSError(f"unexpected host {host!r}")
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in self._addresses
        ]

    async def close(self) -> None:
        return None


async def _checked_target(url: str, *, allow_loopback: bool, resolver: Resolver) -> tuple[str, list[str]]:
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http"):
        raise OutboundRefused("only https URLs are fetched")
    if parts.username is not None or parts.password is not None:
        raise OutboundRefused("URLs with user info are not fetched")
    host = parts.hostname
    if not host:
        raise OutboundRefused("the URL has no host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise OutboundRefused("the URL has an invalid port") from None
    try:
        addresses = await resolver(host, port)
    except OSError:
        raise OutboundFailed(f"cannot resolve {host}") from None
    if not addresses:
        raise OutboundFailed(f"cannot resolve {host}")
    checked = [check_address(a, allow_loopback=allow_loopback) for a in addresses]
    if parts.scheme == "http" and not (allow_loopback and all(_embedded_ipv4(a).is_loopback for a in checked)):
        raise OutboundRefused("only https URLs are fetched")
    return host, [str(a) for a in checked]


async def fetch_json(
    url: str,
    *,
    allow_loopback: bool = False,
    max_bytes: int = 64 * 1024,
    timeout: float = 5.0,
    resolver: Resolver | None = None,
    max_redirects: int = 3,
) -> Any:
    """GET `url` and parse its JSON body, under the rules of this module."""
    resolve = resolver or _system_resolver
    try:
        async with asyncio.timeout(timeout):
            for _hop in range(max_redirects + 1):
                host, addresses = await _checked_target(url, allow_loopback=allow_loopback, resolver=resolve)
                status, location, body = await _get(url, host, addresses, max_bytes)
                if status in _REDIRECTS:
                    if not location:
                        raise OutboundFailed(f"redirect without a Location from {host}")
                    url = urljoin(url, location)
                    continue
                if status != 200:
                    raise OutboundFailed(f"{host} answered HTTP {status}")
                try:
                    return json.loads(body)
                except ValueError:
                    raise OutboundFailed(f"{host} did not answer with JSON") from None
            raise OutboundRefused(f"more than {max_redirects} redirects")
    except TimeoutError:
        raise OutboundFailed(f"no answer within {timeout:g} s") from None


async def _get(url: str, host: str, addresses: list[str], max_bytes: int) -> tuple[int, str | None, bytes]:
    connector = aiohttp.TCPConnector(resolver=_PinnedResolver(host, addresses), use_dns_cache=False, limit=1)
    try:
        async with (
            aiohttp.ClientSession(connector=connector, trust_env=False) as session,
            session.get(url, allow_redirects=False, headers={"Accept": "application/json"}) as response,
        ):
            if response.status in _REDIRECTS:
                return response.status, response.headers.get("Location"), b""
            if response.content_length is not None and response.content_length > max_bytes:
                raise OutboundRefused(f"the document is larger than {max_bytes} bytes")
            body = bytearray()
            async for chunk in response.content.iter_chunked(16 * 1024):
                body.extend(chunk)
                if len(body) > max_bytes:
                    raise OutboundRefused(f"the document is larger than {max_bytes} bytes")
            return response.status, None, bytes(body)
    except aiohttp.ClientError as exc:
        raise OutboundFailed(f"cannot fetch from {host}: {type(exc).__name__}") from None
