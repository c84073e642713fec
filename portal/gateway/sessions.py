"""Client sessions and the streams that carry server notifications to clients.

Handshake-era (2025-11-25) sessions are stateless on the server: the
`Mcp-Session-Id` is a random nonce, the negotiated version and an HMAC over
both, so any replica behind a load balancer accepts a session another replica
opened (SPEC.md, scale-out without sticky sessions). Only a terminated session
leaves state behind (until it would have expired).

`Streams` fans `list_changed` out to every open notification stream: the
standalone GET streams of handshake-era sessions, and the `subscriptions/listen`
streams of 2026-era clients.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Session", "SessionCodec", "Stream", "Streams"]

_SESSION_TTL = 24 * 3600.0


@dataclass(frozen=True)
class Session:
    id: str
    protocol_version: str
    issued: int


class SessionCodec:
    """Mints and checks handshake-era session ids."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or secrets.token_bytes(32)
        self._terminated: dict[str, float] = {}
        self._verified: dict[tuple[str, str], Session] = {}
        """Ids already verified for their owner: an HMAC per request is measurable on the hot path."""

    def _mac(self, body: str, owner: str) -> str:
        # The owner is in the MAC, not in the id: the id reveals nothing about who holds it.
        digest = hmac.new(self._key, f"{body}\x00{owner}".encode(), hashlib.sha256).digest()[:18]
        return base64.urlsafe_b64encode(digest).decode()

    def mint(self, protocol_version: str, owner: str) -> Session:
        """A new session for `owner` (who opened it: user and client), which alone may use it."""
        issued = int(time.time())
        body = f"{secrets.token_urlsafe(12)}.{protocol_version}.{issued}"
        return Session(id=f"{body}.{self._mac(body, owner)}", protocol_version=protocol_version, issued=issued)

    def check(self, session_id: str, owner: str) -> Session | None:
        """The session behind a valid, live id of `owner`; None for a forged, foreign, expired or ended one."""
        key = (session_id, owner)
        known = self._verified.get(key)
        if known is not None:
            if time.time() - known.issued > _SESSION_TTL or session_id in self._terminated:
                return None
            return known
        session = self._check(session_id, owner)
        if session is not None:
            if len(self._verified) >= 4096:
                self._verified.clear()
            self._verified[key] = session
        return session

    def _check(self, session_id: str, owner: str) -> Session | None:
        body, _, mac = session_id.rpartition(".")
        if not body or not hmac.compare_digest(mac, self._mac(body, owner)):
            return None
        _, version, issued_text = body.split(".", 2)
        try:
            issued = int(issued_text)
        except ValueError:
            return None
        if time.time() - issued > _SESSION_TTL or session_id in self._terminated:
            return None
        return Session(id=session_id, protocol_version=version, issued=issued)

    def terminate(self, session: Session) -> None:
        now = time.time()
        self._terminated = {sid: t for sid, t in self._terminated.items() if t > now}
        self._terminated[session.id] = session.issued + _SESSION_TTL


@dataclass(eq=False)
class Stream:
    """One open notification stream towards a client."""

    endpoint_path: str
    server: str | None
    """The server of a per-server endpoint: only its changes go to this stream."""
    kinds: frozenset[str]
    """Which lists this stream wants to hear about: tools, resources, prompts."""
    subscription_id: Any = None
    """2026 era: the listen request's id, stamped on every notification."""
    queue: asyncio.Queue[dict[str, Any]] = field(default_factory=lambda: asyncio.Queue(maxsize=256))

    def offer(self, message: dict[str, Any]) -> bool:
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            return False
        return True

    def end(self) -> None:
        """Make the stream's writer finish: an empty message is the end marker."""
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait({})


class Streams:
    """Every open notification stream of this replica."""

    def __init__(self) -> None:
        self._streams: set[Stream] = set()

    def open(self, stream: Stream) -> Stream:
        self._streams.add(stream)
        return stream

    def close(self, stream: Stream) -> None:
        self._streams.discard(stream)

    def __len__(self) -> int:
        return len(self._streams)

    async def list_changed(self, server: str | None, kind: str) -> None:
        method = f"notifications/{kind}/list_changed"
        for stream in list(self._streams):
            if kind not in stream.kinds or (stream.server is not None and server not in (None, stream.server)):
                continue
            params: dict[str, Any] = {}
            if stream.subscription_id is not None:
                params["_meta"] = {"io.modelcontextprotocol/subscriptionId": stream.subscription_id}
            message: Mapping[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params}
            if not stream.offer(dict(message)):
                # A client that stopped reading loses its stream, not the portal's memory;
                # it reconnects and re-lists (no replay, as in the SDK).
                self.close(stream)
                stream.end()
