"""Bad input at the HTTP and JSON-RPC layers (`portal.gateway.transport`, `portal.gateway.body`).

Raw requests, sent with aiohttp, that no SDK client would send. Each gets the status
and JSON-RPC error it should, and the portal still serves a normal call after it. Every
request carries a valid token (`PortalUnderTest.post` adds it): what a missing or bad
token gets is in test_auth.py.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio
from gateway_support import MODERN_HEADERS, Launcher, PortalUnderTest, modern_body

from portal.settings import ServerConfig

pytestmark = pytest.mark.asyncio(loop_scope="module")

MAX_BODY = 4096
ADD = {"name": "hosted_add", "arguments": {"a": 2, "b": 3}}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PortalUnderTest]:
    launch = Launcher(Path(tmp_path_factory.mktemp("transport")))
    try:
        yield await launch.portal(ServerConfig(name="hosted", module="gateway_hosted"), max_body_bytes=MAX_BODY)
    finally:
        await launch.aclose()


@pytest_asyncio.fixture(loop_scope="module")
async def session(world: PortalUnderTest) -> dict[str, str]:
    """Headers of a fresh handshake-era session."""
    initialize = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
    }
    status, headers, body = await world.post(initialize)
    assert status == 200, body
    assert body["result"]["protocolVersion"] == "2025-11-25"
    return {"Mcp-Session-Id": headers["mcp-session-id"], "MCP-Protocol-Version": "2025-11-25"}


def modern_call(
    name: str = "hosted_add", arguments: dict[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    body = modern_body("tools/call", {"name": name, "arguments": arguments or {"a": 2, "b": 3}})
    return body, {**MODERN_HEADERS, "Mcp-Method": "tools/call", "Mcp-Name": name}


async def assert_still_serves(world: PortalUnderTest) -> None:
    body, headers = modern_call()
    status, _, answer = await world.post(body, headers=headers)
    assert status == 200, answer
    assert answer["result"]["structuredContent"] == {"result": 5}


def error_of(body: Any) -> dict[str, Any]:
    assert isinstance(body, dict) and "error" in body, body
    return body["error"]  # type: ignore[no-any-return]


async def test_a_well_formed_call_of_either_era_is_answered(world: PortalUnderTest, session: dict[str, str]) -> None:
    await assert_still_serves(world)
    status, _, body = await world.post(
        {"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": ADD}, headers=session
    )
    assert status == 200
    assert body == {
        "jsonrpc": "2.0",
        "id": 9,
        "result": {"content": [{"type": "text", "text": "5"}], "structuredContent": {"result": 5}, "isError": False},
    }


async def test_malformed_json_is_a_parse_error_with_400(world: PortalUnderTest) -> None:
    status, _, body = await world.post(b'{"jsonrpc": "2.0", "id": 1, "method": ', raw=True, headers=MODERN_HEADERS)
    assert status == 400
    assert error_of(body)["code"] == -32700
    await assert_still_serves(world)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/jsonx"])
async def test_a_body_that_is_not_declared_json_is_415(world: PortalUnderTest, content_type: str) -> None:
    body, headers = modern_call()
    status, _, answer = await world.post(body, headers={**headers, "Content-Type": content_type})
    assert status == 415
    assert error_of(answer)["code"] == -32600
    await assert_still_serves(world)


async def test_an_accept_header_without_json_or_sse_is_406(world: PortalUnderTest) -> None:
    body, headers = modern_call()
    status, _, _ = await world.post(body, headers={**headers, "Accept": "text/html"})
    assert status == 406
    await assert_still_serves(world)


@pytest.mark.parametrize(
    "body",
    [
        [{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}],
        [],
        {"id": 1, "method": "tools/list"},
        {"jsonrpc": "1.0", "id": 1, "method": "tools/list"},
        "tools/list",
        {"jsonrpc": "2.0", "id": 1, "method": 7},
        {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": [1, 2]},
        {"jsonrpc": "2.0", "id": None, "method": "tools/list"},
        {"jsonrpc": "2.0", "id": True, "method": "tools/list"},
    ],
    ids=[
        "batch",
        "empty-batch",
        "no-jsonrpc",
        "jsonrpc-1.0",
        "string",
        "method-number",
        "params-array",
        "id-null",
        "id-bool",
    ],
)
async def test_anything_but_one_json_rpc_message_is_an_invalid_request(
    world: PortalUnderTest, session: dict[str, str], body: Any
) -> None:
    status, _, answer = await world.post(body, headers=session)
    assert status == 400
    assert error_of(answer)["code"] == -32600
    await assert_still_serves(world)


async def test_a_body_over_the_limit_is_413(world: PortalUnderTest) -> None:
    body, headers = modern_call(arguments={"a": 1, "b": 2, "pad": "x" * MAX_BODY})
    status, _, answer = await world.post(body, headers=headers)
    assert status == 413
    assert error_of(answer)["data"]["code"] == "payload_too_large"
    await assert_still_serves(world)


async def test_a_streamed_body_over_the_limit_is_413_without_a_declared_length(world: PortalUnderTest) -> None:
    body, headers = modern_call(arguments={"a": 1, "b": 2, "pad": "x" * MAX_BODY})
    data = orjson.dumps(body)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(data), 1024):
            yield data[start : start + 1024]

    async with world.http.post(world.mcp(), data=chunks(), headers={**headers, **world.bearer()}) as response:
        assert "content-length" not in response.request_info.headers
        assert response.status == 413
        assert error_of(await response.json())["data"]["code"] == "payload_too_large"
    await assert_still_serves(world)


async def test_json_nested_deeper_than_the_limit_is_400(world: PortalUnderTest) -> None:
    deep: Any = 1
    for _ in range(200):
        deep = [deep]
    body, headers = modern_call(arguments={"a": 1, "b": 2, "deep": deep})
    status, _, answer = await world.post(body, headers=headers)
    assert status == 400
    assert error_of(answer)["code"] == -32600
    assert "nesting" in error_of(answer)["message"]
    await assert_still_serves(world)


async def test_an_unknown_method_is_method_not_found_in_both_eras(
    world: PortalUnderTest, session: dict[str, str]
) -> None:
    status, _, answer = await world.post({"jsonrpc": "2.0", "id": 3, "method": "tools/frobnicate"}, headers=session)
    assert (status, error_of(answer)["code"]) == (200, -32601)
    headers = {**MODERN_HEADERS, "Mcp-Method": "tools/frobnicate"}
    status, _, answer = await world.post(modern_body("tools/frobnicate"), headers=headers)
    assert (status, error_of(answer)["code"]) == (404, -32601)
    await assert_still_serves(world)


async def test_a_handshake_era_request_without_a_session_is_400(world: PortalUnderTest) -> None:
    status, _, answer = await world.post(
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": ADD},
        headers={"MCP-Protocol-Version": "2025-11-25"},
    )
    assert status == 400
    assert "Mcp-Session-Id" in error_of(answer)["message"]
    await assert_still_serves(world)


@pytest.mark.parametrize("forged", ["abc", "a.2025-11-25.1700000000.AAAAAAAAAAAAAAAAAAAAAAAA", "..", "x.y.z.w"])
async def test_a_forged_session_id_is_404(world: PortalUnderTest, session: dict[str, str], forged: str) -> None:
    headers = {**session, "Mcp-Session-Id": forged}
    status, _, answer = await world.post(
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": ADD}, headers=headers
    )
    assert status == 404
    assert error_of(answer)["data"]["code"] == "session_not_found"
    await assert_still_serves(world)


async def test_a_deleted_session_is_404_afterwards(world: PortalUnderTest, session: dict[str, str]) -> None:
    async with world.http.delete(world.mcp(), headers={**session, **world.bearer()}) as response:
        assert response.status == 200
    status, _, _ = await world.post({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers=session)
    assert status == 404
    await assert_still_serves(world)


async def test_a_method_header_that_disagrees_with_the_body_is_header_mismatch(world: PortalUnderTest) -> None:
    body, headers = modern_call()
    status, _, answer = await world.post(body, headers={**headers, "Mcp-Method": "tools/list"})
    assert (status, error_of(answer)["code"]) == (400, -32020)
    await assert_still_serves(world)


async def test_a_name_header_that_disagrees_with_the_body_is_header_mismatch(world: PortalUnderTest) -> None:
    body, headers = modern_call()
    status, _, answer = await world.post(body, headers={**headers, "Mcp-Name": "hosted_secret"})
    assert (status, error_of(answer)["code"]) == (400, -32020)
    await assert_still_serves(world)


async def test_a_version_header_that_disagrees_with_the_envelope_is_header_mismatch(world: PortalUnderTest) -> None:
    body, headers = modern_call()
    body["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] = "2025-11-25"
    status, _, answer = await world.post(body, headers=headers)
    assert (status, error_of(answer)["code"]) == (400, -32020)
    await assert_still_serves(world)


async def test_a_modern_request_without_its_envelope_is_invalid_params(world: PortalUnderTest) -> None:
    body, headers = modern_call()
    del body["params"]["_meta"]
    status, _, answer = await world.post(body, headers=headers)
    assert (status, error_of(answer)["code"]) == (400, -32602)
    await assert_still_serves(world)


async def test_an_unknown_protocol_version_header_is_unsupported_protocol_version(world: PortalUnderTest) -> None:
    body, headers = modern_call()
    status, _, answer = await world.post(body, headers={**headers, "MCP-Protocol-Version": "1999-01-01"})
    assert status == 400
    error = error_of(answer)
    assert error["code"] == -32022
    assert error["data"]["requested"] == "1999-01-01"
    assert "2026-07-28" in error["data"]["supported"]
    await assert_still_serves(world)


async def test_a_repeated_routing_header_is_header_mismatch(world: PortalUnderTest) -> None:
    body, headers = modern_call()
    raw_headers = [*{**headers, **world.bearer()}.items(), ("Mcp-Method", "tools/call")]
    async with world.http.post(world.mcp(), data=orjson.dumps(body), headers=raw_headers) as response:
        assert response.status == 400
        assert error_of(await response.json())["code"] == -32020
    await assert_still_serves(world)


async def test_the_2026_era_has_no_standalone_get_stream(world: PortalUnderTest) -> None:
    headers = {"Accept": "text/event-stream", "MCP-Protocol-Version": "2026-07-28", **world.bearer()}
    async with world.http.get(world.mcp(), headers=headers) as response:
        assert response.status == 405
    await assert_still_serves(world)


async def test_notifications_and_stray_responses_are_accepted_with_202(
    world: PortalUnderTest, session: dict[str, str]
) -> None:
    status, _, _ = await world.post({"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=session)
    assert status == 202
    status, _, _ = await world.post({"jsonrpc": "2.0", "id": 77, "result": {}}, headers=session)
    assert status == 202
    await assert_still_serves(world)


async def test_a_server_endpoint_turns_away_requests_for_other_servers_tools(world: PortalUnderTest) -> None:
    body, headers = modern_call("hosted_add")
    status, _, answer = await world.post(body, server="hosted", headers=headers)
    assert (status, error_of(answer)["code"]) == (400, -32602)
    await assert_still_serves(world)


async def test_a_call_cancelled_with_a_notification_ends_with_request_cancelled(
    world: PortalUnderTest, session: dict[str, str]
) -> None:
    call = {
        "jsonrpc": "2.0",
        "id": "slow-1",
        "method": "tools/call",
        "params": {"name": "hosted_wait", "arguments": {"key": uuid.uuid4().hex}, "_meta": {"progressToken": "p"}},
    }
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream", **session}
    headers.update(world.bearer())
    async with world.http.post(world.mcp(), data=orjson.dumps(call), headers=headers) as response:
        assert response.status == 200
        assert response.content_type == "text/event-stream"
        events = sse_messages(response)
        started = await anext(events)  # the tool runs: its first progress notification
        assert started["method"] == "notifications/progress"
        cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "slow-1"}}
        status, _, _ = await world.post(cancel, headers=session)
        assert status == 202
        async with asyncio.timeout(10):
            rest = [message async for message in events]
    assert rest == [{"jsonrpc": "2.0", "id": "slow-1", "error": {"code": -32800, "message": "Request cancelled"}}]
    await assert_still_serves(world)


async def sse_messages(response: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    """The JSON-RPC messages of an SSE response, as they arrive."""
    buffer = b""
    async for chunk in response.content.iter_any():
        buffer += chunk.replace(b"\r\n", b"\n")
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            data = b"".join(line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:"))
            if data:
                yield orjson.loads(data)


async def test_a_handshake_era_request_with_an_unknown_version_header_is_told_every_supported_version(
    world: PortalUnderTest, session: dict[str, str]
) -> None:
    headers = {**session, "MCP-Protocol-Version": "2099-01-01"}
    status, _, answer = await world.post({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers=headers)
    assert status == 400
    error = error_of(answer)
    assert error["code"] == -32022
    assert error["data"]["requested"] == "2099-01-01"
    assert {"2025-11-25", "2026-07-28"} <= set(error["data"]["supported"])
    await assert_still_serves(world)


@pytest.mark.parametrize(
    ("method", "params", "ttl"),
    [
        ("tools/list", {}, 30_000),
        ("resources/list", {}, 30_000),
        ("resources/templates/list", {}, 30_000),
        ("prompts/list", {}, 30_000),
        ("resources/read", {"uri": "memo://hosted/1"}, 0),
    ],
)
async def test_2026_lists_and_reads_carry_a_private_cache_scope_and_a_ttl(
    world: PortalUnderTest, session: dict[str, str], method: str, params: dict[str, Any], ttl: int
) -> None:
    headers = {**MODERN_HEADERS, "Mcp-Method": method}
    if method == "resources/read":
        headers["Mcp-Name"] = params["uri"]
    status, _, answer = await world.post(modern_body(method, params), headers=headers)
    assert status == 200, answer
    assert answer["result"]["cacheScope"] == "private"
    assert answer["result"]["ttlMs"] == ttl
    assert answer["result"]["resultType"] == "complete"
    # The handshake era knows nothing of them.
    status, _, answer = await world.post(
        {"jsonrpc": "2.0", "id": 2, "method": method, "params": params}, headers=session
    )
    assert status == 200, answer
    assert not {"cacheScope", "ttlMs", "resultType"} & set(answer["result"])


async def test_lifecycle_requests_are_answered_by_the_portal_itself(
    world: PortalUnderTest, session: dict[str, str]
) -> None:
    status, _, answer = await world.post({"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers=session)
    assert (status, answer["result"]) == (200, {})
    headers = {**MODERN_HEADERS, "Mcp-Method": "server/discover"}
    status, _, answer = await world.post(modern_body("server/discover"), headers=headers)
    assert status == 200
    result = answer["result"]
    assert "2026-07-28" in result["supportedVersions"]
    assert result["capabilities"]["tools"] == {"listChanged": True}
    assert result["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "portal"
