"""Helpers for the gateway's end-to-end tests: real servers on loopback, real SDK clients.

- `serve(app)` runs any ASGI app under uvicorn on 127.0.0.1 and an ephemeral port.
- `Launcher` starts upstream SDK servers (in process over HTTP, or their stdio
  configuration) and portals in front of them, and stops everything it started
  when the test ends.
- `client(url, mode)` is the SDK `Client` for one era, without a response cache, so
  that every list really reaches the portal. Open it inside the test itself: the SDK
  needs the task that enters a client to be the one that leaves it.
- Every MCP endpoint of the portal wants a bearer token for exactly that endpoint. Each
  portal started here has a user `tester` (no password) who holds minted tokens with
  `tools:*`: `client(url, mode)` signs in as `tester` on the portal serving `url` (or
  with `token=`), `PortalUnderTest.post` sends the `tester` token of its endpoint, and
  `PortalUnderTest.bearer(server)` is that header for raw aiohttp requests.
  `PortalUnderTest.token(...)` mints any other token (user, scopes, life).

Imported by name (`from gateway_support import ...`): `conftest.py` puts this folder
on `sys.path`, as the other test folders do with theirs.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx2
import orjson
import sqlalchemy
import uvicorn
from gateway_upstreams import build_upstream
from mcp import Client, types
from mcp.client._transport import TransportStreams
from mcp.client.session import IncomingMessage
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.subscriptions import ToolsListChanged
from mcp.types import CallToolResult
from starlette.applications import Starlette
from uvicorn_control import crash, stop

from portal.app import Portal, create_app
from portal.audit.chain import RECORDS
from portal.auth.service import AuthService
from portal.policy.testing import PERMIT_ALL, write_policies
from portal.settings import ServerConfig, Settings

__all__ = [
    "CLIENT_ERAS",
    "HERE",
    "MODERN_HEADERS",
    "TESTER",
    "UPSTREAM_ERAS",
    "Launcher",
    "PortalUnderTest",
    "Running",
    "Watch",
    "bearer_transport",
    "client",
    "eventually",
    "loopback_socket",
    "modern_body",
    "serve",
    "text_of",
    "unused_url",
    "watching",
]

HERE = Path(__file__).resolve().parent
UPSTREAMS_SCRIPT = str(HERE / "gateway_upstreams.py")

CLIENT_ERAS = ("legacy", "2026-07-28")
"""`Client(mode=...)`: the 2025-11-25 initialize handshake, and the stateless 2026-07-28 era."""

UPSTREAM_ERAS = ("2025-11-25", "2026-07-28")
"""`ServerConfig(protocol=...)`: the era the portal speaks towards an upstream."""

MODERN = "2026-07-28"
MODERN_HEADERS = {
    "Content-Type": "application/json",
    "Accept": "application/json, text/event-stream",
    "MCP-Protocol-Version": MODERN,
}


TESTER = "tester"
"""The user every portal started here has (no password), whose minted tokens the harness sends."""
TEST_CLIENT = "portal-tests"
"""The client id of the tokens the harness mints."""
TOKEN_TTL = 3600
"""Life of a minted test token: longer than any test, far below the 24-hour cap."""

_SERVING: dict[str, PortalUnderTest] = {}
"""Running portals by base URL, so that `client(url, mode)` finds the one that mints its token."""


def client(url: str, mode: str, *, token: str | None = None, **options: Any) -> Client:
    """An SDK client of `url` in one era, with no response cache.

    On a portal started by `Launcher`, it carries `token`, by default the `tester` token of
    that endpoint; anywhere else (an upstream), no token unless given one.
    """
    if token is None:
        portal = _portal_serving(url)
        if portal is not None:
            token = portal.token_for_url(url)
    if token is None:
        return Client(url, mode=mode, cache=None, **options)
    return Client(bearer_transport(url, token), mode=mode, cache=None, **options)


@contextlib.asynccontextmanager
async def bearer_transport(url: str, token: str) -> AsyncIterator[TransportStreams]:
    """The SDK's Streamable HTTP transport to `url`, every request with `Authorization: Bearer token`."""
    async with (
        create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}) as http,
        streamable_http_client(url, http_client=http) as streams,
    ):
        yield streams


def _portal_serving(url: str) -> PortalUnderTest | None:
    for base, portal in _SERVING.items():
        if url.startswith(base + "/"):
            return portal
    return None


def text_of(result: CallToolResult) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)


def modern_body(method: str, params: Mapping[str, Any] | None = None, request_id: int | str = 1) -> dict[str, Any]:
    """A 2026-07-28 JSON-RPC request with its `_meta` envelope, as a raw client would send it."""
    meta = {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "0"},
    }
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": {**(params or {}), "_meta": meta}}


async def eventually(check: Callable[[], Any], *, timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll `check` (sync or async) until it returns something truthy; for states no event announces."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def unused_url() -> str:
    """An MCP URL on a loopback port where nothing listens."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/mcp"


@dataclass
class Running:
    """One uvicorn server on loopback."""

    base: str
    """`http://127.0.0.1:PORT`."""
    server: uvicorn.Server
    task: asyncio.Task[None]
    mcp: MCPServer | None = None
    """The SDK server behind it, for an upstream."""

    @property
    def url(self) -> str:
        """The MCP endpoint of an upstream."""
        return f"{self.base}/mcp"

    @property
    def port(self) -> int:
        return int(self.base.rsplit(":", 1)[1])

    def crash(self) -> None:
        crash(self.server)

    async def stop(self) -> None:
        await stop(self.server, self.task)


def loopback_socket(port: int = 0) -> socket.socket:
    """A TCP socket bound to 127.0.0.1 and `port` (default: an ephemeral one), for `serve(..., sock=)`.

    Binding before building an app lets the app know its own URL (a portal's `public_url`).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


async def serve(app: Any, port: int = 0, *, sock: socket.socket | None = None) -> Running:
    """Run `app` on 127.0.0.1 and `port` (default: an ephemeral one), or on the bound `sock`;
    returns once it listens."""
    # No log_config: uvicorn's records reach the root logger, where the tests look for crashes.
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="auto")
    config.timeout_graceful_shutdown = 0.1
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock] if sock is not None else None))
    # uvicorn has no started event; `started` flips once the socket listens (or the task fails).
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("uvicorn stopped before it started")
        await asyncio.sleep(0.005)
    port = server.servers[0].sockets[0].getsockname()[1]
    return Running(base=f"http://127.0.0.1:{port}", server=server, task=task)


@dataclass
class PortalUnderTest:
    """A running portal and the ways a test reaches it."""

    app: Starlette
    running: Running
    http: aiohttp.ClientSession
    _tokens: dict[str, str] = field(default_factory=dict)

    @property
    def portal(self) -> Portal:
        return self.app.state.portal  # type: ignore[no-any-return]

    @property
    def auth(self) -> AuthService:
        return self.portal.auth

    @property
    def base(self) -> str:
        return self.running.base

    def url(self, path: str) -> str:
        return self.base + path

    def mcp(self, server: str | None = None) -> str:
        """`/mcp`, or `/servers/{server}/mcp`."""
        return f"{self.base}/mcp" if server is None else f"{self.base}/servers/{server}/mcp"

    def add_user(self, name: str, *, groups: Iterable[str] = (), password: str | None = None) -> None:
        """A local user of this portal (without a password: one who only holds minted tokens)."""
        self.auth.users.add(name, password, list(groups))

    def token(
        self,
        server: str | None = None,
        *,
        user: str = TESTER,
        scopes: Iterable[str] = ("tools:*",),
        ttl: int = TOKEN_TTL,
        client_id: str = TEST_CLIENT,
        audience: str | None = None,
    ) -> str:
        """A freshly minted access token of `user` for the endpoint of `server` (or `audience`)."""
        audience = audience or self.mcp(server)
        return self.auth.mint_access_token(user, client_id, scopes, audience, ttl)

    def token_for_url(self, url: str) -> str:
        """The `tester` token of the endpoint at `url` (minted once, then reused)."""
        if url not in self._tokens:
            self._tokens[url] = self.token(audience=url)
        return self._tokens[url]

    def bearer(self, server: str | None = None, token: str | None = None) -> dict[str, str]:
        """`Authorization: Bearer ...` for a raw request to the endpoint of `server` (`tester`'s token by default)."""
        return {"Authorization": f"Bearer {token or self.token_for_url(self.mcp(server))}"}

    def http_client(self, server: str | None = None, token: str | None = None) -> httpx2.AsyncClient:
        """An httpx2 client that sends `bearer(server, token)` on every request, for
        `Client(streamable_http_client(url, http_client=...))`; the caller enters and closes it."""
        return create_mcp_http_client(headers=self.bearer(server, token))

    async def audit_records(self, **where: Any) -> list[dict[str, Any]]:
        """This portal's audit records matching `where` (column = value), oldest first, once all is stored."""
        log = self.portal.audit
        assert log is not None, "this portal records nothing ([audit] enabled = false)"
        await log.drained()

        def read() -> list[dict[str, Any]]:
            query = sqlalchemy.select(RECORDS).order_by(RECORDS.c.seq)
            for name, value in where.items():
                query = query.where(RECORDS.c[name] == value)
            with log.engine.connect() as connection:
                return [dict(row._asdict()) for row in connection.execute(query)]

        return await asyncio.to_thread(read)

    async def wait_ready(self, timeout: float = 15.0) -> None:
        await self.portal.servers.wait_ready(timeout)

    async def readyz(self) -> dict[str, Any]:
        async with self.http.get(f"{self.base}/readyz") as response:
            assert response.status == 200, await response.text()
            return await response.json()  # type: ignore[no-any-return]

    def health(self, server: str) -> dict[str, Any]:
        return dict(self.portal.servers.health().get(server, {"state": None}))

    async def wait_listed(self, *servers: str, timeout: float = 15.0) -> None:
        """Wait until each of `servers` is up and its tools are listed."""
        visible = self.portal.servers.visible
        await eventually(lambda: set(servers) <= set(visible()), timeout=timeout, what=f"{servers} listed")

    async def wait_state(self, server: str, state: str, *, timeout: float = 15.0) -> dict[str, Any]:
        """Wait until `server`'s health is in `state`; returns that health."""
        await eventually(lambda: self.health(server)["state"] == state, timeout=timeout, what=f"{server} {state}")
        return self.health(server)

    async def listening(self, server: str, timeout: float = 10.0) -> None:
        """Wait until the portal holds the upstream's notification stream open.

        A change announced before then is lost (neither era replays), so list_changed tests
        wait for it. Hosted servers are listening as soon as they are up.
        """
        upstream = self.portal.servers.get(server)
        assert upstream is not None, server
        connector = upstream._connector
        listening = getattr(connector, "listening", None)
        if listening is not None:
            async with asyncio.timeout(timeout):
                await listening.wait()

    @contextlib.contextmanager
    def stream_opened(self) -> Iterator[asyncio.Event]:
        """An event set when the portal next opens a notification stream towards a client.

        A 2025-11-25 client opens its GET stream in the background after the handshake; a
        change announced before the portal holds it would not reach that client.
        """
        streams = self.portal.streams
        event = asyncio.Event()
        original = streams.open
        shadowed = "open" in vars(streams)  # an enclosing stream_opened()

        def opening(stream: Any) -> Any:
            event.set()
            return original(stream)

        streams.open = opening  # type: ignore[method-assign]
        try:
            yield event
        finally:
            if shadowed:
                streams.open = original  # type: ignore[method-assign]
            else:
                del streams.open

    async def post(
        self,
        body: Any,
        *,
        server: str | None = None,
        headers: Mapping[str, str] | None = None,
        raw: bool = False,
        auth: bool = True,
        url: str | None = None,
    ) -> tuple[int, dict[str, str], Any]:
        """POST to an MCP endpoint (or `url`); (status, headers, decoded JSON body or None).

        Sends `tester`'s token of the endpoint unless `headers` has an Authorization of its own,
        or `auth` is false.
        """
        sent = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        if auth and not any(key.lower() == "authorization" for key in headers or {}):
            sent.update(self.bearer(server))
        sent.update(headers or {})
        data = body if raw else orjson.dumps(body)
        async with self.http.post(url or self.mcp(server), data=data, headers=sent) as response:
            text = await response.read()
            decoded = orjson.loads(text) if text and response.content_type == "application/json" else None
            return response.status, dict(response.headers), decoded


@dataclass
class Watch:
    """A client, and the `tools/list_changed` notifications it receives."""

    client: Client
    _next: Callable[[], Awaitable[Any]]

    async def next_change(self, timeout: float = 10.0) -> None:
        """Wait for the next `tools/list_changed` the client receives."""
        async with asyncio.timeout(timeout):
            await self._next()

    async def tools(self) -> set[str]:
        return {tool.name for tool in (await self.client.list_tools()).tools}

    async def tools_until(self, predicate: Callable[[set[str]], bool], timeout: float = 10.0) -> set[str]:
        """List the tools again after each change notification until `predicate` holds."""
        async with asyncio.timeout(timeout):
            while not predicate(names := await self.tools()):
                await self._next()
        return names


@contextlib.asynccontextmanager
async def watching(p: PortalUnderTest, url: str, era: str) -> AsyncIterator[Watch]:
    """A client of `url` that hears about tool list changes: on its GET stream (2025-11-25), whose
    opening it waits for, or through `subscriptions/listen` (2026-07-28)."""
    if era == "legacy":
        changes: asyncio.Queue[Any] = asyncio.Queue()

        async def on_message(message: IncomingMessage) -> None:
            if isinstance(message, types.ToolListChangedNotification):
                changes.put_nowait(message)

        with p.stream_opened() as opened:
            async with client(url, era, message_handler=on_message) as c:
                async with asyncio.timeout(10):
                    await opened.wait()
                yield Watch(c, changes.get)
    else:
        async with client(url, era) as c, c.listen(tools_list_changed=True) as subscription:
            events = aiter(subscription)

            async def next_event() -> Any:
                event = await anext(events)
                assert isinstance(event, ToolsListChanged), event
                return event

            yield Watch(c, next_event)


@dataclass
class Launcher:
    """Starts upstreams and portals for one test and stops them at its end."""

    tmp_path: Path
    _portals: list[tuple[Running, aiohttp.ClientSession]] = field(default_factory=list)
    _upstreams: list[Running] = field(default_factory=list)
    _count: int = 0

    async def upstream(self, name: str, app: Any = None, port: int = 0) -> Running:
        """An upstream over Streamable HTTP: `build_upstream(name)`, or any ASGI `app`."""
        mcp = None
        if app is None:
            mcp = build_upstream(name)
            app = mcp.streamable_http_app()
        running = await serve(app, port)
        running.mcp = mcp
        self._upstreams.append(running)
        return running

    @staticmethod
    def stdio(name: str, **options: Any) -> ServerConfig:
        """The configuration of `build_upstream(name)` run as a stdio subprocess."""
        return ServerConfig(
            name=name, command="python", args=(UPSTREAMS_SCRIPT, name), cwd=str(HERE), **options
        ).validate()

    async def portal(
        self, *servers: ServerConfig, wait: bool = True, policies: str = PERMIT_ALL, **settings: Any
    ) -> PortalUnderTest:
        """A portal in front of `servers`, with its own database and `policies` (by default, every
        decision is left to the token's capabilities); waits until the servers are listed."""
        self._count += 1
        folder = self.tmp_path / f"portal-{self._count}"
        folder.mkdir()
        write_policies(folder / "policies", policies)
        # The port is bound first, so that public_url (every token's audience) is the URL the tests use.
        sock = loopback_socket()
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        # Run-time registry changes apply at once; idle pings stay out of the way of short timeouts.
        options: dict[str, Any] = {"registry_poll_seconds": 0.05, "health_interval_seconds": 30.0}
        options.update(settings)
        app = create_app(
            Settings(
                public_url=base,
                database_url=f"sqlite:///{folder}/portal.db",
                base_dir=str(folder),
                servers=servers,
                **options,
            )
        )
        try:
            running = await serve(app, sock=sock)
        except BaseException:
            sock.close()  # once serving, uvicorn owns the socket and closes it when it stops
            raise
        http = aiohttp.ClientSession()
        self._portals.append((running, http))
        under_test = PortalUnderTest(app=app, running=running, http=http)
        _SERVING[base] = under_test
        under_test.add_user(TESTER)
        if wait:
            await under_test.wait_ready()
        return under_test

    async def aclose(self) -> None:
        """Stop every server at once (uvicorn takes a few ticks to stop; the portals do not mind)."""
        portals, self._portals = self._portals, []
        upstreams, self._upstreams = self._upstreams, []
        for running, _ in portals:
            _SERVING.pop(running.base, None)
        try:
            await asyncio.gather(
                *(running.stop() for running, _ in portals), *(running.stop() for running in upstreams)
            )
        finally:
            await asyncio.gather(*(http.close() for _, http in portals))
