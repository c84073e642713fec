"""What the portal's MCP endpoints offer and where each request goes (`portal.gateway.forward`).

One portal for the whole module, in front of every kind of upstream in every era:
`web25` and `web26` (remote, Streamable HTTP, forced to 2025-11-25 and 2026-07-28),
`pipe25` and `pipe26` (stdio subprocesses, likewise), `hosted` (in process), and two
remotes with a tool allow list (`picky`) and deny list (`guarded`). Each test runs
once per client era.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from gateway_support import Launcher, PortalUnderTest, client, text_of
from mcp.shared.exceptions import MCPError

from portal.settings import ServerConfig

pytestmark = pytest.mark.asyncio(loop_scope="module")

TOOLS = ["whoami", "add", "secret", "steps", "wait", "was_cancelled", "grow", "pid"]
SERVERS = ["hosted", "pipe25", "pipe26", "web25", "web26"]
"""The servers whose every tool is exposed."""
ERA_OF = {"web25": "2025-11-25", "web26": "2026-07-28", "pipe25": "2025-11-25", "pipe26": "2026-07-28"}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PortalUnderTest]:
    launch = Launcher(Path(tmp_path_factory.mktemp("forward")))
    try:
        web25 = await launch.upstream("web25")
        web26 = await launch.upstream("web26")
        picky = await launch.upstream("picky")
        guarded = await launch.upstream("guarded")
        yield await launch.portal(
            ServerConfig(name="hosted", module="gateway_hosted"),
            ServerConfig(name="web25", url=web25.url, protocol="2025-11-25"),
            ServerConfig(name="web26", url=web26.url, protocol="2026-07-28"),
            launch.stdio("pipe25", protocol="2025-11-25"),
            launch.stdio("pipe26", protocol="2026-07-28"),
            ServerConfig(name="picky", url=picky.url, tools_allow=("whoami", "add")),
            ServerConfig(name="guarded", url=guarded.url, tools_deny=("secret", "pid")),
        )
    finally:
        await launch.aclose()


async def test_each_upstream_is_spoken_to_in_the_era_it_is_configured_for(world: PortalUnderTest) -> None:
    health = world.portal.servers.health()
    assert {name: health[name]["protocol_version"] for name in ERA_OF} == ERA_OF
    assert health["hosted"]["protocol_version"] == "2026-07-28"
    assert all(h["state"] == "up" for h in health.values()), health


async def test_aggregated_endpoint_lists_every_tool_as_server_underscore_tool(world: PortalUnderTest, era: str) -> None:
    async with client(world.mcp(), era) as c:
        names = [tool.name for tool in (await c.list_tools()).tools]
    expected = {f"{server}_{tool}" for server in SERVERS for tool in TOOLS}
    expected |= {"picky_whoami", "picky_add"} | {f"guarded_{t}" for t in TOOLS if t not in ("secret", "pid")}
    assert sorted(names) == sorted(expected)


async def test_aggregated_tools_keep_their_schema_and_show_the_server_in_their_title(
    world: PortalUnderTest, era: str
) -> None:
    async with client(world.mcp(), era) as c:
        tools = {tool.name: tool for tool in (await c.list_tools()).tools}
    add = tools["web25_add"]
    assert add.title == "web25: Add"
    assert add.description == "Add two numbers."
    assert set(add.input_schema["properties"]) == {"a", "b"}


async def test_aggregated_calls_are_routed_to_the_server_named_by_the_prefix(world: PortalUnderTest, era: str) -> None:
    async with client(world.mcp(), era) as c:
        for server in [*SERVERS, "picky", "guarded"]:
            result = await c.call_tool(f"{server}_whoami", {})
            assert text_of(result) == server
            added = await c.call_tool(f"{server}_add", {"a": 20, "b": 22})
            assert added.structured_content == {"result": 42}


async def test_aggregated_resources_gain_the_server_in_their_uri_and_are_read_from_it(
    world: PortalUnderTest, era: str
) -> None:
    async with client(world.mcp(), era) as c:
        uris = sorted(str(r.uri) for r in (await c.list_resources()).resources)
        assert [u for u in uris if not u.startswith(("memo://picky/", "memo://guarded/"))] == [
            f"memo://{server}/1" for server in SERVERS
        ]
        for server in SERVERS:
            read = await c.read_resource(f"memo://{server}/1")
            assert [(str(content.uri), content.text) for content in read.contents] == [
                (f"memo://{server}/1", f"memo 1 of {server}")
            ]


async def test_aggregated_resource_templates_gain_the_server_and_expand_to_readable_uris(
    world: PortalUnderTest, era: str
) -> None:
    async with client(world.mcp(), era) as c:
        templates = sorted(t.uri_template for t in (await c.list_resource_templates()).resource_templates)
        assert "memo://web26/{memo_id}/text" in templates
        assert "memo://pipe25/{memo_id}/text" in templates
        read = await c.read_resource("memo://pipe25/7/text")
        assert read.contents[0].text == "memo 7 of pipe25"
        assert str(read.contents[0].uri) == "memo://pipe25/7/text"


async def test_aggregated_prompts_are_prefixed_and_rendered_by_their_server(world: PortalUnderTest, era: str) -> None:
    async with client(world.mcp(), era) as c:
        names = {prompt.name for prompt in (await c.list_prompts()).prompts}
        assert {f"{server}_greet" for server in SERVERS} <= names
        for server in SERVERS:
            prompt = await c.get_prompt(f"{server}_greet", {"who": "Ada"})
            assert prompt.messages[0].content.text == f"{server} greets Ada"


@pytest.mark.parametrize("server", SERVERS)
async def test_server_endpoint_offers_one_server_under_its_own_names(
    world: PortalUnderTest, era: str, server: str
) -> None:
    async with client(world.mcp(server), era) as c:
        assert sorted(tool.name for tool in (await c.list_tools()).tools) == sorted(TOOLS)
        assert text_of(await c.call_tool("whoami", {})) == server
        assert [str(r.uri) for r in (await c.list_resources()).resources] == ["memo://1"]
        assert [t.uri_template for t in (await c.list_resource_templates()).resource_templates] == [
            "memo://{memo_id}/text"
        ]
        read = await c.read_resource("memo://1")
        assert [(str(content.uri), content.text) for content in read.contents] == [("memo://1", f"memo 1 of {server}")]
        assert [p.name for p in (await c.list_prompts()).prompts] == ["greet"]
        assert (await c.get_prompt("greet", {"who": "Bo"})).messages[0].content.text == f"{server} greets Bo"


async def test_unknown_server_endpoint_is_404_with_a_json_rpc_error(world: PortalUnderTest) -> None:
    status, _, body = await world.post(
        {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}, server="nowhere"
    )
    assert status == 404
    assert body["error"]["data"] == {"code": "unknown_server", "server": "nowhere"}
    assert "nowhere" in body["error"]["message"]


async def test_unknown_tool_is_invalid_params_on_both_endpoints(world: PortalUnderTest, era: str) -> None:
    for url, name in ((world.mcp(), "web26_nope"), (world.mcp(), "nope_whoami"), (world.mcp("web26"), "nope")):
        async with client(url, era) as c:
            with pytest.raises(MCPError) as caught:
                await c.call_tool(name, {})
        assert caught.value.code == -32602, (url, name)
        assert name in caught.value.message


async def test_unknown_prompt_is_invalid_params(world: PortalUnderTest, era: str) -> None:
    async with client(world.mcp(), era) as c:
        with pytest.raises(MCPError) as caught:
            await c.get_prompt("hosted_nope", {})
    assert caught.value.code == -32602


async def test_resource_of_no_server_is_resource_not_found(world: PortalUnderTest, era: str) -> None:
    async with client(world.mcp(), era) as c:
        for uri in ("memo://nowhere/1", "memo:1"):
            with pytest.raises(MCPError) as caught:
                await c.read_resource(uri)
            assert caught.value.code == -32602, uri


async def test_allow_list_exposes_only_the_allowed_tools(world: PortalUnderTest, era: str) -> None:
    async with client(world.mcp("picky"), era) as c:
        assert sorted(tool.name for tool in (await c.list_tools()).tools) == ["add", "whoami"]
        with pytest.raises(MCPError) as caught:
            await c.call_tool("secret", {})
        assert caught.value.code == -32602


async def test_deny_list_hides_the_denied_tools_on_both_endpoints(world: PortalUnderTest, era: str) -> None:
    async with client(world.mcp("guarded"), era) as c:
        names = {tool.name for tool in (await c.list_tools()).tools}
        assert names == set(TOOLS) - {"secret", "pid"}
        with pytest.raises(MCPError) as caught:
            await c.call_tool("secret", {})
        assert caught.value.code == -32602
    async with client(world.mcp(), era) as c:
        with pytest.raises(MCPError) as caught:
            await c.call_tool("guarded_secret", {})
        assert caught.value.code == -32602


async def test_a_tool_error_of_an_upstream_reaches_the_client_as_a_tool_error(world: PortalUnderTest, era: str) -> None:
    async with client(world.mcp(), era) as c:
        result = await c.call_tool("pipe26_add", {"a": "not a number", "b": 1})
    assert result.is_error
