"""Era negotiation with an upstream server (MCP 2026-07-28 basic/lifecycle#version-negotiation).

`protocol="auto"` probes `server/discover` at 2026-07-28 and falls back to the
`initialize` handshake at 2025-11-25, deciding the way `mcp.client._probe` does:
anything that is not positive evidence of a modern server falls back, and only a
modern-only server with no version in common is an error. `"2025-11-25"` only
handshakes; `"2026-07-28"` only probes.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Mapping
from typing import TYPE_CHECKING, Any, Final, Literal

from mcp_types import (
    CLIENT_CAPABILITIES_META_KEY,
    CLIENT_INFO_META_KEY,
    PROTOCOL_VERSION_META_KEY,
    SERVER_INFO_META_KEY,
    UNSUPPORTED_PROTOCOL_VERSION,
)
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION, MODERN_PROTOCOL_VERSIONS

from portal.errors import UpstreamProtocolError, UpstreamRejected, UpstreamTimeout, UpstreamUnavailable
from portal.upstream.base import CLIENT_INFO, NotificationHandler, UpstreamInfo

if TYPE_CHECKING:
    from portal.upstream._rpc import Call

__all__ = ["HANDSHAKE", "MODERN", "EraNegotiation", "Protocol", "envelope"]

MODERN: Final = MODERN_PROTOCOL_VERSIONS[-1]
"""The per-request-envelope era the portal speaks (2026-07-28)."""
HANDSHAKE: Final = LATEST_HANDSHAKE_VERSION
"""The handshake-era version the portal offers in `initialize` (2025-11-25)."""

Protocol = Literal["auto", "2025-11-25", "2026-07-28"]


def envelope(version: str) -> dict[str, Any]:
    """The 2026 `_meta` envelope (basic#per-request-protocol-fields); the portal declares no capabilities."""
    return {PROTOCOL_VERSION_META_KEY: version, CLIENT_CAPABILITIES_META_KEY: {}, CLIENT_INFO_META_KEY: CLIENT_INFO}


class EraNegotiation(ABC):
    """The negotiation half of `RpcConnector`: `_negotiate()` returns the `UpstreamInfo`."""

    name: str
    protocol: Protocol
    connect_timeout: float
    info: UpstreamInfo | None
    _envelope: dict[str, Any]

    @abstractmethod
    def _new_call(
        self, method: str, params: dict[str, Any] | None, on_notification: NotificationHandler | None = None
    ) -> Call: ...

    @abstractmethod
    def _forget(self, call: Call) -> None: ...

    @abstractmethod
    async def _bootstrap(self, call: Call, version: str | None) -> dict[str, Any]:
        """Send a negotiation request (`initialize` when `version` is None, else `server/discover`)."""

    @abstractmethod
    async def _notify(self, method: str, params: Mapping[str, Any] | None) -> None:
        """Send a notification to the upstream."""

    async def _negotiate(self) -> UpstreamInfo:
        """Settle the era with the upstream: MCP 2026-07-28 basic/lifecycle#version-negotiation.

        Raises `UpstreamUnavailable` when the upstream cannot be reached, refuses or does not
        answer, and `UpstreamProtocolError` when it answers something that is not MCP.
        """
        try:
            return await self._negotiate_era()
        except UpstreamTimeout as exc:
            raise UpstreamUnavailable(self.name, exc.cause) from None
        except UpstreamRejected as exc:
            raise UpstreamUnavailable(self.name, f"refused the handshake: {exc.rpc_message}") from None

    async def _negotiate_era(self) -> UpstreamInfo:
        if self.protocol == HANDSHAKE:
            return await self._handshake()
        if self.protocol == MODERN:
            try:
                raw = await self._probe(MODERN)
            except UpstreamRejected as exc:
                raise UpstreamUnavailable(self.name, f"refused server/discover: {exc.rpc_message}") from None
            info = self._adopt_discover(raw)
            if info is None:
                raise UpstreamUnavailable(self.name, f"does not support protocol version {MODERN}")
            return info
        return await self._negotiate_auto()

    async def _negotiate_auto(self) -> UpstreamInfo:
        # Mirrors mcp.client._probe.negotiate_auto: anything that is not positive evidence of a
        # modern server falls back to the handshake; only a modern-only server with no version in
        # common is an error. Transport failures are never an era verdict and propagate.
        version = MODERN
        for attempt in range(2):
            try:
                raw = await self._probe(version)
            except (UpstreamRejected, UpstreamProtocolError, UpstreamTimeout) as exc:
                if isinstance(exc, UpstreamRejected) and exc.rpc_code == UNSUPPORTED_PROTOCOL_VERSION:
                    supported = _supported_versions(exc.rpc_data)
                    mutual = [v for v in MODERN_PROTOCOL_VERSIONS if v in (supported or ())]
                    if mutual and attempt == 0:
                        version = mutual[-1]
                        continue
                    if supported is not None and not any(v in HANDSHAKE_PROTOCOL_VERSIONS for v in supported):
                        raise UpstreamUnavailable(
                            self.name, f"speaks only protocol versions {', '.join(supported)}"
                        ) from None
                try:
                    return await self._handshake()
                except UpstreamRejected as handshake_exc:
                    # A -32022 answer to initialize is itself modern evidence: re-probe once.
                    supported = _supported_versions(handshake_exc.rpc_data)
                    mutual = [v for v in MODERN_PROTOCOL_VERSIONS if v in (supported or ())]
                    if handshake_exc.rpc_code != UNSUPPORTED_PROTOCOL_VERSION or attempt or not mutual:
                        raise UpstreamUnavailable(
                            self.name, f"refused initialize: {handshake_exc.rpc_message}"
                        ) from None
                    version = mutual[-1]
                    continue
            info = self._adopt_discover(raw)
            return info if info is not None else await self._handshake()
        raise UpstreamUnavailable(self.name, "could not agree on a protocol version")

    async def _probe(self, version: str) -> dict[str, Any]:
        call = self._new_call("server/discover", {"_meta": envelope(version)})
        try:
            return await self._bounded(self._bootstrap(call, version), "server/discover")
        finally:
            self._forget(call)

    def _adopt_discover(self, raw: dict[str, Any]) -> UpstreamInfo | None:
        supported = raw.get("supportedVersions")
        if not isinstance(supported, list):
            return None  # not a DiscoverResult: not modern evidence
        mutual = [v for v in MODERN_PROTOCOL_VERSIONS if v in supported]
        if not mutual:
            return None  # a discover-answering server advertising only handshake versions
        version = mutual[-1]
        self._envelope = envelope(version)
        meta = raw.get("_meta")
        server_info = meta.get(SERVER_INFO_META_KEY) if isinstance(meta, dict) else None
        capabilities = raw.get("capabilities")
        instructions = raw.get("instructions")
        return UpstreamInfo(
            protocol_version=version,
            capabilities=capabilities if isinstance(capabilities, dict) else {},
            server_info=server_info if isinstance(server_info, dict) else {},
            instructions=instructions if isinstance(instructions, str) else None,
        )

    async def _handshake(self) -> UpstreamInfo:
        """MCP 2025-11-25 basic/lifecycle#initialization: initialize, then notifications/initialized."""
        params = {"protocolVersion": HANDSHAKE, "capabilities": {}, "clientInfo": CLIENT_INFO}
        call = self._new_call("initialize", params)
        try:
            raw = await self._bounded(self._bootstrap(call, None), "initialize")
        finally:
            self._forget(call)
        version = raw.get("protocolVersion")
        if version not in HANDSHAKE_PROTOCOL_VERSIONS:
            # basic/lifecycle#version-negotiation: a client that does not support the server's
            # version SHOULD disconnect.
            raise UpstreamUnavailable(self.name, f"answered initialize with unsupported protocol version {version!r}")
        self._envelope = {}
        capabilities = raw.get("capabilities")
        server_info = raw.get("serverInfo")
        instructions = raw.get("instructions")
        info = UpstreamInfo(
            protocol_version=version,
            capabilities=capabilities if isinstance(capabilities, dict) else {},
            server_info=server_info if isinstance(server_info, dict) else {},
            instructions=instructions if isinstance(instructions, str) else None,
        )
        self.info = info  # the transport stamps the negotiated version on the notification
        await self._notify("notifications/initialized", None)
        return info

    async def _bounded(self, step: Awaitable[dict[str, Any]], what: str) -> dict[str, Any]:
        try:
            async with asyncio.timeout(self.connect_timeout):
                return await step
        except TimeoutError:
            raise UpstreamTimeout(self.name, f"did not answer {what} within {self.connect_timeout:g}s") from None


def _supported_versions(data: Any) -> list[str] | None:
    """`data.supported` of a -32022 error, or None when it is not there to act on."""
    supported = data.get("supported") if isinstance(data, dict) else None
    if isinstance(supported, list) and all(isinstance(v, str) for v in supported):
        return supported
    return None
