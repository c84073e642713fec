"""One broken upstream costs only its own tools (`portal.gateway.servers`, `portal.upstream.supervisor`).

Upstreams that are down from the start, die in the middle of a call, hang, or answer
garbage: the other servers keep answering, lists keep working without the broken one,
its calls fail with a JSON-RPC error that names it and the cause, `/readyz` and
`portal.servers.health()` show what happened, and a crashed stdio server is restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_asyncio
from gateway_support import UPSTREAM_ERAS, Launcher, PortalUnderTest, client, eventually, text_of, unused_url
from gateway_upstreams import build_upstream
from mcp.shared.exceptions import MCPError

from portal.settings import ServerConfig

HOSTED = ServerConfig(name="hosted", module="gateway_hosted")
UPSTREAM_UNAVAILABLE = -32050
REQUEST_TIMEOUT = -32001
TIMEOUT = 0.5
"""Seconds the hung servers get; short, to keep the tests fast."""


async def listed_tools(url: str, era: str) -> set[str]:
    async with client(url, era) as c:
        return {tool.name for tool in (await c.list_tools()).tools}


async def call_error(url: str, era: str, tool: str, arguments: dict[str, Any] | None = None) -> MCPError:
    async with client(url, era) as c:
        with pytest.raises(MCPError) as caught:
            await c.call_tool(tool, arguments or {})
    return caught.value


async def assert_serves_only_the_healthy(p: PortalUnderTest, era: str, broken: str) -> None:
    tools = await listed_tools(p.mcp(), era)
    assert "hosted_whoami" in tools
    assert not any(name.startswith(f"{broken}_") for name in tools), tools
    async with client(p.mcp(), era) as c:
        assert text_of(await c.call_tool("hosted_whoami", {})) == "hosted"


async def test_a_server_that_comes_up_later_is_listed_once_it_does(launch: Launcher) -> None:
    late = await launch.upstream("late")
    await late.stop()  # its port is free again: the portal finds nothing there at first
    p = await launch.portal(HOSTED, ServerConfig(name="late", url=late.url), wait=False)
    await p.wait_state("late", "down")
    revived = await launch.upstream("late", port=late.port)
    assert revived.url == late.url
    await p.wait_listed("late")
    async with client(p.mcp(), "2026-07-28") as c:
        assert text_of(await c.call_tool("late_whoami", {})) == "late"


@pytest.mark.parametrize("upstream_era", UPSTREAM_ERAS)
async def test_a_remote_server_dying_mid_call_fails_that_call_naming_the_server(
    launch: Launcher, era: str, upstream_era: str
) -> None:
    frail = await launch.upstream("frail")
    p = await launch.portal(HOSTED, ServerConfig(name="frail", url=frail.url, protocol=upstream_era))
    started = asyncio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        started.set()

    async with client(p.mcp(), era) as c:
        call = asyncio.create_task(c.call_tool("frail_wait", {"key": "k"}, progress_callback=on_progress))
        async with asyncio.timeout(10):
            await started.wait()
        frail.crash()
        with pytest.raises(MCPError) as caught:
            async with asyncio.timeout(10):
                await call
    assert caught.value.code == UPSTREAM_UNAVAILABLE
    assert "server 'frail'" in caught.value.message

    health = await p.wait_state("frail", "down")
    assert health["errors"] >= 1
    await assert_serves_only_the_healthy(p, era, "frail")
    error = await call_error(p.mcp(), era, "frail_whoami")
    assert error.message.startswith("server 'frail' is unavailable: ")
    assert (await p.readyz())["servers"]["frail"]["state"] == "down"


@pytest.mark.parametrize(
    ("era", "upstream_era"),
    # Each era once on each side (a subprocess restart is slow); the dying remote above
    # covers how the failure of a call reaches a client in every pairing.
    [("legacy", "2026-07-28"), ("2026-07-28", "2025-11-25")],
)
async def test_a_crashed_stdio_server_is_restarted_and_serves_again(
    launch: Launcher, era: str, upstream_era: str
) -> None:
    p = await launch.portal(HOSTED, launch.stdio("pipe", protocol=upstream_era))
    started = asyncio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        started.set()

    async with client(p.mcp(), era) as c:
        first_pid = (await c.call_tool("pipe_pid", {})).structured_content["result"]
        call = asyncio.create_task(c.call_tool("pipe_wait", {"key": "k"}, progress_callback=on_progress))
        async with asyncio.timeout(10):
            await started.wait()
        os.kill(first_pid, signal.SIGKILL)
        with pytest.raises(MCPError) as caught:
            async with asyncio.timeout(10):
                await call
        assert caught.value.code == UPSTREAM_UNAVAILABLE
        assert caught.value.message == "server 'pipe' was killed by signal SIGKILL"
        # The call failed at once, and the other servers never noticed.
        assert text_of(await c.call_tool("hosted_whoami", {})) == "hosted"

        await eventually_restarted(p, "pipe")
        second_pid = (await c.call_tool("pipe_pid", {})).structured_content["result"]
        assert second_pid != first_pid
        assert text_of(await c.call_tool("pipe_whoami", {})) == "pipe"
    health = (await p.readyz())["servers"]["pipe"]
    assert health["state"] == "up" and health["restarts"] >= 1


async def eventually_restarted(p: PortalUnderTest, server: str) -> None:
    await eventually(lambda: p.health(server)["restarts"] >= 1, what=f"{server} restarted")
    await p.wait_listed(server)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hung_world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PortalUnderTest]:
    """Servers with a short timeout (`slow-*`), each with a twin on the same upstream (`calm-*`) to ask it."""
    launch = Launcher(Path(tmp_path_factory.mktemp("hung")))
    try:
        web25 = await launch.upstream("web25")
        web26 = await launch.upstream("web26")
        servers = [HOSTED]
        for kind, options in (
            ("hosted", {"module": "gateway_hosted"}),
            ("web25", {"url": web25.url, "protocol": "2025-11-25"}),
            ("web26", {"url": web26.url, "protocol": "2026-07-28"}),
        ):
            servers.append(ServerConfig(name=f"slow-{kind}", timeout=TIMEOUT, **options))
            servers.append(ServerConfig(name=f"calm-{kind}", **options))
        servers.append(launch.stdio("slow-pipe", timeout=TIMEOUT))
        yield await launch.portal(*servers)
    finally:
        await launch.aclose()


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("kind", ["hosted", "web25", "web26", "pipe"])
async def test_a_hung_call_fails_within_the_servers_timeout_naming_the_server(
    hung_world: PortalUnderTest, era: str, kind: str
) -> None:
    p, server, key = hung_world, f"slow-{kind}", uuid.uuid4().hex
    async with client(p.mcp(), era) as c:
        began = time.monotonic()
        hung = asyncio.create_task(c.call_tool(f"{server}_wait", {"key": key}))
        # Meanwhile every other server answers as usual.
        assert text_of(await c.call_tool("hosted_whoami", {})) == "hosted"
        with pytest.raises(MCPError) as caught:
            await hung
        elapsed = time.monotonic() - began
        assert caught.value.code == REQUEST_TIMEOUT
        assert caught.value.message == f"server '{server}' did not answer within {TIMEOUT:g}s"
        assert caught.value.data == {"code": "upstream_timeout", "server": server}
        assert TIMEOUT <= elapsed < TIMEOUT + 2
        if kind != "pipe":
            # The portal gave up on the call upstream too (the twin asks the same upstream).
            asked = await c.call_tool(f"calm-{kind}_was_cancelled", {"key": key, "within": 5.0})
            assert asked.structured_content == {"result": True}
    health = p.health(server)
    assert health["state"] == "up" and health["errors"] >= 1


def garbage(content_type: str, body: bytes, status: int = 200) -> Any:
    """An ASGI app that answers every request with the same non-MCP response."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


BROKEN = {
    "gone": (None, "is unreachable: connection refused"),
    "html": (garbage("text/html", b"<html>Welcome to nginx!</html>"), "answered text/html, not MCP"),
    "badjson": (garbage("application/json", b"{this is not json"), "answered with something that is not JSON"),
    "notrpc": (garbage("application/json", b'{"hello": "world"}'), "JSON-RPC"),
    "http502": (garbage("text/plain", b"Bad gateway", status=502), "answered HTTP 502"),
}
"""Servers broken from the start: nothing listening, or answering every request with garbage."""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def broken_world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PortalUnderTest]:
    launch = Launcher(Path(tmp_path_factory.mktemp("broken")))
    try:
        servers = [HOSTED]
        for name, (app, _) in BROKEN.items():
            url = unused_url() if app is None else (await launch.upstream(name, app=app)).url
            servers.append(ServerConfig(name=name, url=url))
        p = await launch.portal(*servers, wait=False)
        await p.wait_listed("hosted")
        for name in BROKEN:
            await p.wait_state(name, "down")
        yield p
    finally:
        await launch.aclose()


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("broken", list(BROKEN))
async def test_a_server_broken_from_the_start_costs_only_its_own_tools(
    broken_world: PortalUnderTest, era: str, broken: str
) -> None:
    p, cause = broken_world, BROKEN[broken][1]
    health = p.health(broken)
    assert health["state"] == "down" and cause in health["last_error"]

    await assert_serves_only_the_healthy(p, era, broken)
    assert await listed_tools(p.mcp(broken), era) == set()
    for url, tool in ((p.mcp(), f"{broken}_whoami"), (p.mcp(broken), "whoami")):
        error = await call_error(url, era, tool)
        assert error.code == UPSTREAM_UNAVAILABLE
        assert error.message.startswith(f"server '{broken}' ") and cause in error.message
        assert error.data == {"code": "upstream_unavailable", "server": broken}

    ready = await p.readyz()
    assert ready["status"] == "ok"
    assert ready["servers"]["hosted"]["state"] == "up"
    assert ready["servers"][broken]["state"] == "down"
    assert cause in ready["servers"][broken]["last_error"]


def garbling(app: Any, garble: Callable[[dict[str, Any]], bool], answer: bytes) -> Any:
    """Wrap an MCP app so that the requests `garble` picks get `answer` (as JSON) instead."""

    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        with contextlib.suppress(orjson.JSONDecodeError):
            parsed = orjson.loads(body)
            if isinstance(parsed, dict) and garble(parsed):
                headers = [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send({"type": "http.response.body", "body": answer})
                return
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # type: ignore[no-any-return]

        await app(scope, replay, send)

    return wrapped


@pytest.mark.parametrize(("era", "upstream_era"), [("legacy", "2025-11-25"), ("2026-07-28", "2026-07-28")])
async def test_a_garbage_answer_to_one_call_fails_that_call_only(launch: Launcher, era: str, upstream_era: str) -> None:
    mcp = build_upstream("odd")
    calls_add = lambda message: (message.get("params") or {}).get("name") == "add"  # noqa: E731
    odd = await launch.upstream("odd", app=garbling(mcp.streamable_http_app(), calls_add, b"{garbage"))
    p = await launch.portal(ServerConfig(name="odd", url=odd.url, protocol=upstream_era))
    error = await call_error(p.mcp(), era, "odd_add", {"a": 1, "b": 2})
    assert error.code == -32051
    assert error.message == "server 'odd' answered with something that is not JSON"
    async with client(p.mcp(), era) as c:
        assert text_of(await c.call_tool("odd_whoami", {})) == "odd"
    health = p.health("odd")
    assert health["state"] == "up" and health["errors"] == 1


@pytest.mark.parametrize(("era", "upstream_era"), [("legacy", "2026-07-28"), ("2026-07-28", "2025-11-25")])
async def test_a_server_whose_first_listing_fails_is_listed_once_it_answers(
    launch: Launcher, era: str, upstream_era: str
) -> None:
    """A list that fails once (a timeout, a bad answer) must not hide a healthy server until it reconnects."""
    failed: list[dict[str, Any]] = []

    def first_tools_list(message: dict[str, Any]) -> bool:
        if message.get("method") == "tools/list" and not failed:
            failed.append(message)
            return True
        return False

    mcp = build_upstream("shy")
    shy = await launch.upstream("shy", app=garbling(mcp.streamable_http_app(), first_tools_list, b"{garbage"))
    p = await launch.portal(HOSTED, ServerConfig(name="shy", url=shy.url, protocol=upstream_era), wait=False)
    await p.wait_listed("hosted", "shy")
    assert failed
    async with client(p.mcp(), era) as c:
        assert text_of(await c.call_tool("shy_whoami", {})) == "shy"
