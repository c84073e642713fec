"""Servers added, disabled, enabled and removed while the portal runs (`portal.gateway.servers`).

Changes go through `portal.registry` (as the CLI and the admin API make them); the
running portal notices them within `registry_poll_seconds` and applies them without
disturbing the other servers. Clients hear about each change through `list_changed`.
"""

from __future__ import annotations

import asyncio

import pytest
from gateway_support import (
    MODERN_HEADERS,
    Launcher,
    PortalUnderTest,
    client,
    eventually,
    modern_body,
    text_of,
    unused_url,
    watching,
)
from mcp.shared.exceptions import MCPError

from portal.settings import ServerConfig

HOSTED = ServerConfig(name="hosted", module="gateway_hosted")


async def endpoint_status(p: PortalUnderTest, server: str) -> int:
    headers = {**MODERN_HEADERS, "Mcp-Method": "tools/list"}
    status, _, _ = await p.post(modern_body("tools/list"), server=server, headers=headers)
    return status


async def test_a_server_added_at_run_time_is_listed_routed_and_announced(launch: Launcher, era: str) -> None:
    extra = await launch.upstream("extra")
    p = await launch.portal(HOSTED)
    assert await endpoint_status(p, "extra") == 404
    async with watching(p, p.mcp(), era) as watch:
        await asyncio.to_thread(p.portal.registry.add, ServerConfig(name="extra", url=extra.url))
        await watch.next_change()
        names = await watch.tools_until(lambda names: "extra_whoami" in names)
        assert "hosted_whoami" in names
        assert text_of(await watch.client.call_tool("extra_whoami", {})) == "extra"
    async with client(p.mcp("extra"), era) as c:
        assert text_of(await c.call_tool("whoami", {})) == "extra"
    assert (await p.readyz())["servers"]["extra"]["state"] == "up"


@pytest.mark.parametrize("source", ["runtime", "config"])
async def test_a_disabled_server_leaves_the_lists_and_its_endpoint_404s_until_enabled_again(
    launch: Launcher, era: str, source: str
) -> None:
    """Both a run-time server and a `portal.toml` one (disabled by an override) can be switched off."""
    extra = await launch.upstream("extra")
    config = ServerConfig(name="extra", url=extra.url)
    p = await launch.portal(HOSTED, *([config] if source == "config" else []))
    registry = p.portal.registry
    if source == "runtime":
        await asyncio.to_thread(registry.add, config)
    await p.wait_listed("extra")

    async with watching(p, p.mcp(), era) as watch:
        assert "extra_whoami" in await watch.tools()
        await asyncio.to_thread(registry.set_enabled, "extra", False)
        await watch.next_change()
        names = await watch.tools_until(lambda names: not any(n.startswith("extra_") for n in names))
        assert "hosted_whoami" in names
        with pytest.raises(MCPError) as caught:
            await watch.client.call_tool("extra_whoami", {})
        assert caught.value.code == -32602
        assert await endpoint_status(p, "extra") == 404
        health = (await p.readyz())["servers"]["extra"]
        assert health["state"] == "disabled"

        await asyncio.to_thread(registry.set_enabled, "extra", True)
        await watch.next_change()
        await watch.tools_until(lambda names: "extra_whoami" in names)
        assert text_of(await watch.client.call_tool("extra_whoami", {})) == "extra"
    assert await endpoint_status(p, "extra") == 200


async def test_a_removed_server_is_gone_and_the_others_keep_serving(launch: Launcher, era: str) -> None:
    extra = await launch.upstream("extra")
    p = await launch.portal(HOSTED)
    await asyncio.to_thread(p.portal.registry.add, ServerConfig(name="extra", url=extra.url))
    await p.wait_listed("extra")
    async with watching(p, p.mcp(), era) as watch:
        await asyncio.to_thread(p.portal.registry.remove, "extra")
        await watch.next_change()
        await watch.tools_until(lambda names: "extra_whoami" not in names)
        assert text_of(await watch.client.call_tool("hosted_whoami", {})) == "hosted"
    assert await endpoint_status(p, "extra") == 404
    assert "extra" not in (await p.readyz())["servers"]


async def test_a_server_added_at_run_time_may_be_down_without_troubling_the_others(launch: Launcher, era: str) -> None:
    p = await launch.portal(HOSTED)
    await asyncio.to_thread(p.portal.registry.add, ServerConfig(name="nothere", url=unused_url()))
    health = await p.wait_state("nothere", "down")
    assert "connection refused" in health["last_error"]
    async with client(p.mcp(), era) as c:
        assert text_of(await c.call_tool("hosted_whoami", {})) == "hosted"
        with pytest.raises(MCPError) as caught:
            await c.call_tool("nothere_whoami", {})
    assert "server 'nothere'" in caught.value.message


async def test_notification_streams_are_released_when_their_clients_go_away(launch: Launcher, era: str) -> None:
    p = await launch.portal(HOSTED)
    async with watching(p, p.mcp(), era), watching(p, p.mcp("hosted"), era):
        assert len(p.portal.streams) == 2
    await eventually(lambda: len(p.portal.streams) == 0, what="streams released")
