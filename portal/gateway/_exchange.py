"""One HTTP exchange with an MCP client: answering it, streaming it, noticing it end.

Private to the transport. A request is answered with plain JSON unless something has
to be sent before its result; then the exchange switches to `text/event-stream`
(MCP Streamable HTTP) and ends with the result as the last event.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.types import Receive, Send

from portal.errors import PortalError
from portal.gateway.rendering import jsonrpc_error

__all__ = ["PING_INTERVAL", "SSE_HEADERS", "WATCH_AFTER", "HttpError", "RunState", "respond", "wait_disconnect"]

PING_INTERVAL = 15.0
"""Seconds of silence after which a streamed response or notification stream sends an SSE comment."""
WATCH_AFTER = 0.05
"""Seconds a request runs before the portal starts watching for the client going away: a task
per request costs more than most requests take."""

SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"x-accel-buffering", b"no"),
]


class RunState:
    """What `_run` shares with notifications, the keep-alive helper and `notifications/cancelled`."""

    def __init__(self, task: asyncio.Task[Any], send: Send, extra: list[tuple[bytes, bytes]]) -> None:
        self.task, self.send, self.extra = task, send, extra
        self.lock = asyncio.Lock()
        self.streaming = False
        self.finished = False
        self.cancelled_by: str | None = None
        self.keeper: asyncio.Task[None] | None = None

    async def write(self, chunk: bytes) -> None:
        async with self.lock:
            if self.finished:
                return
            if not self.streaming:
                await self.send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS + self.extra})
                self.streaming = True
            await self.send({"type": "http.response.body", "body": chunk, "more_body": True})

    def cancel(self, reason: str = "client") -> None:
        if not self.finished and self.cancelled_by is None:
            self.cancelled_by = reason
            self.task.cancel()

    def watch(self, receive: Receive) -> None:
        if not self.finished:
            self.keeper = asyncio.get_running_loop().create_task(self._keep(receive))

    async def _keep(self, receive: Receive) -> None:
        gone = asyncio.ensure_future(wait_disconnect(receive))
        try:
            while True:
                done, _ = await asyncio.wait({gone}, timeout=PING_INTERVAL)
                if gone in done:
                    # The client went away: for a 2026 client that is how it cancels.
                    self.cancel("disconnect")
                    return
                await self.write(b": ping\r\n\r\n")
        finally:
            gone.cancel()


class HttpError(Exception):
    """An answer decided before any request handling: status, optional JSON body, headers."""

    def __init__(self, status: int, body: Any, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        self.status, self.body, self.headers = status, body, headers or []

    @classmethod
    def rpc(cls, status: int, error: PortalError, request_id: Any = None) -> HttpError:
        return cls(status, jsonrpc_error(request_id, error), [(b"content-type", b"application/json")])


async def wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def respond(
    send: Send, status: int, body: bytes, *, json: bool = False, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [(b"content-length", str(len(body)).encode())]
    if json:
        headers.append((b"content-type", b"application/json"))
    headers.extend(extra or [])
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
