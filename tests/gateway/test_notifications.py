"""What passes through the portal besides requests and answers: progress, cancellation, list changes.

One portal for the module, in front of every kind of upstream in both eras (`hosted`;
`web25`/`web26` remote and `pipe25`/`pipe26` stdio, forced to 2025-11-25 and
2026-07-28); every test runs for each upstream and each client era.

- Progress: the upstream's `notifications/progress` reach the client's progress callback.
- Cancellation: a 2025-11-25 client sends `notifications/cancelled`, a 2026-07-28 client
  closes the request's stream (the SDK client does either when a call is cancelled);
  either way the upstream's handler is cancelled, which it reports through `was_cancelled`.
- List changes: an upstream announces a new tool; the portal re-lists it and tells its
  clients, on the GET stream (2025-11-25) or a `subscriptions/listen` stream (2026-07-28).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import gateway_hosted
import pytest
import pytest_asyncio
from gateway_support import Launcher, PortalUnderTest, client, text_of, watching
from mcp.shared.exceptions import MCPError

from portal.settings import ServerConfig

pytestmark = pytest.mark.asyncio(loop_scope="module")

UPSTREAMS = ["hosted", "web25", "web26", "pipe25", "pipe26"]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PortalUnderTest]:
    launch = Launcher(Path(tmp_path_factory.mktemp("notifications")))
    try:
        web25 = await launch.upstream("web25")
        web26 = await launch.upstream("web26")
        # These servers add tools at run time (`grow`), which the tests expect to see at once.
        yield await launch.portal(
            ServerConfig(name="hosted", module="gateway_hosted", trust_new_tools=True),
            ServerConfig(name="web25", url=web25.url, protocol="2025-11-25", trust_new_tools=True),
            ServerConfig(name="web26", url=web26.url, protocol="2026-07-28", trust_new_tools=True),
            launch.stdio("pipe25", protocol="2025-11-25", trust_new_tools=True),
            launch.stdio("pipe26", protocol="2026-07-28", trust_new_tools=True),
        )
    finally:
        await launch.aclose()


@pytest.fixture(params=UPSTREAMS)
def upstream(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_progress_of_an_upstream_reaches_the_clients_callback(
    world: PortalUnderTest, era: str, upstream: str
) -> None:
    await assert_progress_passes(world.mcp(), era, f"{upstream}_steps")


@pytest.mark.parametrize("upstream", ["web25", "pipe26"])
async def test_progress_passes_through_a_server_endpoint_too(world: PortalUnderTest, era: str, upstream: str) -> None:
    await assert_progress_passes(world.mcp(upstream), era, "steps")


async def assert_progress_passes(url: str, era: str, tool: str) -> None:
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    async with client(url, era) as c:
        result = await c.call_tool(tool, {"n": 3}, progress_callback=on_progress)
    assert text_of(result) == "3 steps"
    assert seen == [(1, 3, "step 1"), (2, 3, "step 2"), (3, 3, "step 3")]


async def test_cancelling_a_call_cancels_the_upstreams_handler(world: PortalUnderTest, era: str, upstream: str) -> None:
    key = uuid.uuid4().hex
    started = asyncio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        started.set()

    async with client(world.mcp(), era) as c:
        call = asyncio.create_task(c.call_tool(f"{upstream}_wait", {"key": key}, progress_callback=on_progress))
        async with asyncio.timeout(10):
            await started.wait()
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await call
        answer = await c.call_tool(f"{upstream}_was_cancelled", {"key": key, "within": 5.0})
    assert answer.structured_content == {"result": True}
    # The cancelled call left nothing behind that keeps the portal from serving.
    assert world.health(upstream)["state"] == "up"


async def test_a_call_the_client_times_out_is_cancelled_upstream(world: PortalUnderTest, era: str) -> None:
    key = uuid.uuid4().hex
    async with client(world.mcp(), era) as c:
        with pytest.raises(MCPError) as caught:
            # Time enough for the call to reach the upstream before the client gives up on it.
            await c.call_tool("web26_wait", {"key": key}, read_timeout_seconds=1.0)
        assert caught.value.code == -32001  # the client's own timeout
        answer = await c.call_tool("web26_was_cancelled", {"key": key, "within": 5.0})
    assert answer.structured_content == {"result": True}


@contextlib.contextmanager
def grown_on(upstream: str, tool: str) -> Iterator[None]:
    """Remove a tool grown on the hosted upstream afterwards: that server lives as long as the process."""
    try:
        yield
    finally:
        if upstream == "hosted":
            with contextlib.suppress(Exception):
                gateway_hosted.server.remove_tool(tool)


async def test_a_tools_list_change_upstream_reaches_the_client_and_the_aggregated_list(
    world: PortalUnderTest, era: str, upstream: str
) -> None:
    tool = f"grown_{uuid.uuid4().hex[:8]}"
    await world.listening(upstream)
    with grown_on(upstream, tool):
        async with watching(world, world.mcp(), era) as watch:
            assert text_of(await watch.client.call_tool(f"{upstream}_grow", {"tool": tool})) == tool
            await watch.next_change()
            names = await watch.tools_until(lambda names: f"{upstream}_{tool}" in names)
            assert f"{upstream}_whoami" in names
            grown = await watch.client.call_tool(f"{upstream}_{tool}", {})
            assert text_of(grown) == f"{tool} from {upstream}"


async def test_a_server_endpoint_passes_on_its_own_servers_list_changes(world: PortalUnderTest, era: str) -> None:
    tool = f"grown_{uuid.uuid4().hex[:8]}"
    await world.listening("web25")
    async with watching(world, world.mcp("web25"), era) as watch:
        await watch.client.call_tool("grow", {"tool": tool})
        await watch.next_change()
        await watch.tools_until(lambda names: tool in names)
        assert text_of(await watch.client.call_tool(tool, {})) == f"{tool} from web25"
