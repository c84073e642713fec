"""Fetching a URL someone else chose, without being turned against the portal's own network (SSRF).

Used for Client ID Metadata Documents, whose URL is the client id any caller sends.
Every hop is checked the same way:

1. the URL is parsed once, by the parser the HTTP client uses (yarl), so that the host
   checked is the host connected to; the scheme is `https` (plain `http` only to a
   loopback address, and only when the caller allows loopback, for development); no user
   info in the URL; `localhost` and `*.localhost` (RFC 6761) only when loopback is allowed;
2. a host that spells an IPv4 address in any form the C library accepts (`2130706433`,
   `0x7f.1`, `0177.0.0.1`) or an IPv6 address is judged as that address, without asking a
   resolver; any other host is resolved, and every address it resolves to must be a public
   unicast address: private, loopback, link-local, shared (CGNAT), reserved, multicast and
   unspecified ranges are refused, and IPv4-mapped, 6to4 and NAT64 IPv6 addresses are judged
   by the IPv4 address inside too;
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
import re
import socket
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urljoin

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from portal.errors import PortalError

__all__ = [
    "OutboundFailed",
    "OutboundRefused",
    "Resolver",
    "check_address",
    "check_url",
    "fetch_json",
    "literal_address",
]

Resolver = Callable[[str, int], Awaitable[list[str]]]
"""`(host, port) -> addresses`; tests pass one so that nothing touches the network."""

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_DENIED = tuple(
    ipaddress.ip_network(net)
    for net in (
        # Not global, whatever the Python version's `is_global` says (3.11 misses some of them).
        "192.0.0.0/24",  # IETF protocol assignments
        "198.18.0.0/15",  # benchmarking
        "fec0::/10",  # site-local (deprecated, still routed inside some networks)
        "64:ff9b:1::/48",  # local-use NAT64
        "100::/64",  # discard-only
        "2001::/23",  # IETF protocol assignments, Teredo
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation
        "5f00::/16",  # SRv6 SIDs
    )
)
_IPV4_PART = re.compile(r"0[xX][0-9a-fA-F]*|0[0-7]*|[1-9][0-9]*")
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
            or any(candidate in network for network in _DENIED)
        ):
            raise OutboundRefused("the URL resolves to a private or reserved address")
    return address


def literal_address(host: str) -> IPAddress | None:
    """The address `host` spells, if it spells one: IPv6, or IPv4 in any form `inet_aton` takes
    (one to four parts, each decimal, octal with a leading 0 or hex with 0x; the last part fills
    the remaining bytes), with or without a trailing dot. None for a name."""
    text = host.strip("[]")
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        pass
    parts = text[:-1].split(".") if text.endswith(".") else text.split(".")
    if not 1 <= len(parts) <= 4 or not all(p.isascii() and _IPV4_PART.fullmatch(p) for p in parts):
        return None
    values = [int(p[2:] or "0", 16) if p[:2].lower() == "0x" else int(p, 8) if p[0] == "0" else int(p) for p in parts]
    *leading, last = values
    if any(v > 255 for v in leading) or last >= 256 ** (4 - len(leading)):
        return None
    number = last
    for index, value in enumerate(leading):
        number += value << (8 * (3 - index))
    return ipaddress.IPv4Address(number)


def check_url(url: str, *, allow_loopback: bool) -> tuple[URL, str, int]:
    """The URL as the HTTP client will read it, its host and port, if the rules before resolving
    allow it (scheme, user info, host names that are always loopback); `OutboundRefused` otherwise."""
    try:
        parsed = URL(url)
        port = parsed.port
    except (ValueError, TypeError):
        raise OutboundRefused("not a valid URL") from None
    if parsed.scheme not in ("https", "http"):
        raise OutboundRefused("only https URLs are fetched")
    if parsed.raw_user is not None or parsed.raw_password is not None:
        raise OutboundRefused("URLs with user info are not fetched")
    host = parsed.raw_host
    if not host or port is None:
        raise OutboundRefused("the URL has no host")
    name = host.lower().rstrip(".")
    if not allow_loopback and (name == "localhost" or name.endswith(".localhost")):
        raise OutboundRefused("the URL names a loopback host")
    return parsed, host, port


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


async def _checked_target(url: str, *, allow_loopback: bool, resolver: Resolver) -> tuple[URL, str, list[str]]:
    parsed, host, port = check_url(url, allow_loopback=allow_loopback)
    literal = literal_address(host)
    if literal is not None:
        addresses = [str(literal)]
    else:
        try:
            addresses = await resolver(host, port)
        except OSError:
            raise OutboundFailed(f"cannot resolve {host}") from None
        if not addresses:
            raise OutboundFailed(f"cannot resolve {host}")
    checked = [check_address(a, allow_loopback=allow_loopback) for a in addresses]
    if parsed.scheme == "http" and not (allow_loopback and all(_embedded_ipv4(a).is_loopback for a in checked)):
        raise OutboundRefused("only https URLs are fetched")
    return parsed, host, [str(a) for a in checked]


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
                target, host, addresses = await _checked_target(url, allow_loopback=allow_loopback, resolver=resolve)
                status, location, body = await _get(target, host, addresses, max_bytes)
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


async def _get(url: URL, host: str, addresses: list[str], max_bytes: int) -> tuple[int, str | None, bytes]:
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
