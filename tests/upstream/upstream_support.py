"""Helpers for the connector tests: real MCP servers over HTTP (uvicorn, in process) and the means to watch them.

`serve(app)` runs any ASGI app on 127.0.0.1 and an ephemeral port; `Recorder` wraps an
app and keeps what reached it; `Notes` collects the notifications a connector hands over.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import uvicorn
from mcp.server.streamable_http import EventCallback, EventMessage, EventStore
from mcp_types import JSONRPCMessage
from upstream_demo_server import DemoState
from uvicorn_control import crash, stop

__all__ = [
    "DEMO_SCRIPT",
    "ERAS",
    "Demo",
    "Era",
    "InMemoryEventStore",
    "LogWatch",
    "Notes",
    "Recorder",
    "RunningServer",
    "Seen",
    "expected_era",
    "serve",
]

DEMO_SCRIPT = str(Path(__file__).with_name("upstream_demo_server.py"))
"""The demo server as a stdio script: `[sys.executable, DEMO_SCRIPT, ...]`."""

Era = Literal["auto", "2025-11-25", "2026-07-28"]

ERAS: list[Era] = ["2025-11-25", "2026-07-28", "auto"]
"""Every `protocol=` a connector takes; against the SDK servers `auto` lands on 2026-07-28."""


def expected_era(protocol: Era) -> str:
    return "2026-07-28" if protocol == "auto" else protocol


@dataclass
class RunningServer:
    url: str
    server: uvicorn.Server
    task: asyncio.Task[None]

    def crash(self) -> None:
        crash(self.server)

    async def stop(self) -> None:
        await stop(self.server, self.task)


@asynccontextmanager
async def serve(app: Any, path: str = "/mcp") -> AsyncIterator[RunningServer]:
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="auto")
    config.timeout_graceful_shutdown = 1
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.005)
    port = server.servers[0].sockets[0].getsockname()[1]
    running = RunningServer(url=f"http://127.0.0.1:{port}{path}", server=server, task=task)
    try:
        yield running
    finally:
        await running.stop()


@dataclass
class Seen:
    """One HTTP request as it reached the server."""

    method: str
    headers: dict[str, str]
    body: Any

    @property
    def rpc_method(self) -> str | None:
        return self.body.get("method") if isinstance(self.body, dict) else None


@dataclass
class Recorder:
    """ASGI middleware that keeps every request and can stand in for the app.

    `intercept(seen)` may return `(status, content_type, body)` to answer instead of the app.
    """

    app: Any
    seen: list[Seen] = field(default_factory=list)
    intercept: Callable[[Seen], tuple[int, str, bytes] | None] | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        raw = b"".join(chunks)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        headers = {key.decode().lower(): value.decode() for key, value in scope["headers"]}
        seen = Seen(scope["method"], headers, body)
        self.seen.append(seen)
        answer = self.intercept(seen) if self.intercept is not None else None
        if answer is not None:
            status, content_type, payload = answer
            await send(
                {"type": "http.response.start", "status": status, "headers": [(b"content-type", content_type.encode())]}
            )
            await send({"type": "http.response.body", "body": payload})
            return
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": raw, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def rpc(self, method: str) -> list[Seen]:
        return [seen for seen in self.seen if seen.rpc_method == method]


class InMemoryEventStore(EventStore):
    """Keeps every event so that a client can resume a stream (handshake-era resumability)."""

    def __init__(self) -> None:
        self._events: list[tuple[str, str, JSONRPCMessage | None]] = []
        self._ids = itertools.count(1)

    async def store_event(self, stream_id: str, message: JSONRPCMessage | None) -> str:
        event_id = str(next(self._ids))
        self._events.append((event_id, stream_id, message))
        return event_id

    async def replay_events_after(self, last_event_id: str, send_callback: EventCallback) -> str | None:
        index = next((i for i, event in enumerate(self._events) if event[0] == last_event_id), None)
        if index is None:
            return None
        stream_id = self._events[index][1]
        for event_id, stream, message in self._events[index + 1 :]:
            if stream == stream_id and message is not None:
                await send_callback(EventMessage(message, event_id))
        return stream_id


@dataclass
class Demo:
    """The demo server, running."""

    state: DemoState
    recorder: Recorder
    running: RunningServer

    @property
    def url(self) -> str:
        return self.running.url


class Notes:
    """Collects notifications handed to a connector, and lets a test wait for one."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        self._arrived = asyncio.Condition()

    async def __call__(self, method: str, params: Any) -> None:
        async with self._arrived:
            self.received.append((method, dict(params)))
            self._arrived.notify_all()

    async def wait_for(self, method: str, *, count: int = 1, timeout: float = 5.0) -> list[dict[str, Any]]:
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: len(self.of(method)) >= count)
        return self.of(method)

    def of(self, method: str) -> list[dict[str, Any]]:
        return [params for name, params in self.received if name == method]


class LogWatch(logging.Handler):
    """Watches a logger and lets a test wait for a record that contains some text."""

    def __init__(self, logger_name: str) -> None:
        super().__init__(logging.DEBUG)
        self.logger = logging.getLogger(logger_name)
        self.lines: list[str] = []
        self._changed = asyncio.Event()

    def __enter__(self) -> LogWatch:
        self._level = self.logger.level
        self.logger.setLevel(logging.DEBUG)
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self._level)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())
        self._changed.set()

    async def wait_for(self, text: str, timeout: float = 5.0) -> str:
        async with asyncio.timeout(timeout):
            while True:
                for line in self.lines:
                    if text in line:
                        return line
                self._changed.clear()
                await self._changed.wait()
