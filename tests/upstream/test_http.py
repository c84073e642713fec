"""HttpConnector against the MCP SDK's own Streamable HTTP server, in both protocol eras."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from upstream_support import ERAS, Demo, Era, InMemoryEventStore, Notes, Recorder, Seen, expected_era, serve

from portal.errors import UpstreamProtocolError, UpstreamRejected, UpstreamTimeout, UpstreamUnavailable
from portal.upstream.base import Connector
from portal.upstream.http import HttpConnector

Closing = Callable[[HttpConnector], HttpConnector]

ENVELOPE_KEYS = {
    "io.modelcontextprotocol/protocolVersion",
    "io.modelcontextprotocol/clientCapabilities",
    "io.modelcontextprotocol/clientInfo",
}


async def started(closing: Closing, url: str, protocol: Era = "auto", **options: Any) -> HttpConnector:
    connector = closing(HttpConnector("demo", url, protocol=protocol, **options))
    await connector.start()
    return connector


def html_app(status: int = 200, content_type: str = "text/html") -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send(
            {"type": "http.response.start", "status": status, "headers": [(b"content-type", content_type.encode())]}
        )
        await send({"type": "http.response.body", "body": b"<html><body>Welcome to nginx!</body></html>"})

    return app


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- negotiation ------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ERAS)
async def test_start_negotiates_the_era_the_portal_asks_for(demo: Demo, closing: Closing, protocol: Era) -> None:
    connector = await started(closing, demo.url, protocol)

    assert isinstance(connector, Connector)
    assert connector.info is not None
    assert connector.info.protocol_version == expected_era(protocol)
    assert connector.info.server_info["name"] == "demo"
    assert connector.info.instructions == "A server for the connector tests."
    assert "tools" in connector.info.capabilities
    probed = bool(demo.recorder.rpc("server/discover"))
    assert probed == (protocol != "2025-11-25")
    assert bool(demo.recorder.rpc("initialize")) == (protocol == "2025-11-25")


async def test_auto_falls_back_to_the_handshake_when_the_server_only_speaks_it(demo: Demo, closing: Closing) -> None:
    # What a server built on a pre-2026 SDK answers a POST without a session: 400, missing session.
    refusal = {"jsonrpc": "2.0", "id": "server-error", "error": {"code": -32600, "message": "Missing session ID"}}

    def handshake_only(seen: Seen) -> tuple[int, str, bytes] | None:
        if seen.headers.get("mcp-protocol-version") == "2026-07-28":
            return 400, "application/json", json.dumps(refusal).encode()
        return None

    demo.recorder.intercept = handshake_only
    connector = await started(closing, demo.url, "auto")

    assert connector.info is not None and connector.info.protocol_version == "2025-11-25"
    assert [seen.rpc_method for seen in demo.recorder.seen[:3]] == [
        "server/discover",
        "initialize",
        "notifications/initialized",
    ]
    result = await connector.request("tools/call", {"name": "add", "arguments": {"a": 2, "b": 2}}, timeout=5)
    assert result["structuredContent"] == {"total": 4, "terms": [2, 2]}


async def test_a_2026_only_connector_refuses_a_handshake_only_server(demo: Demo, closing: Closing) -> None:
    demo.recorder.intercept = lambda seen: (
        (404, "application/json", b'{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"Method not found"}}')
        if seen.rpc_method == "server/discover"
        else None
    )
    with pytest.raises(UpstreamUnavailable, match="refused server/discover: Method not found"):
        await started(closing, demo.url, "2026-07-28")


def scripted_server(discover: dict[str, Any]) -> Recorder:
    """A server that answers `server/discover` with `discover` and speaks the handshake era otherwise."""
    initialized = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}}, "serverInfo": {"name": "old"}}

    def answer(seen: Seen) -> tuple[int, str, bytes]:
        if seen.method != "POST":
            return 405, "application/json", b""
        if "id" not in seen.body:
            return 202, "application/json", b""
        if seen.rpc_method == "initialize":
            reply = {"jsonrpc": "2.0", "id": seen.body["id"], "result": initialized}
        elif seen.rpc_method == "server/discover":
            reply = {"jsonrpc": "2.0", "id": seen.body["id"], **discover}
        else:
            reply = {"jsonrpc": "2.0", "id": seen.body["id"], "result": {"tools": []}}
        return 200, "application/json", json.dumps(reply).encode()

    return Recorder(app=None, intercept=answer)


def unsupported(*versions: str) -> dict[str, Any]:
    data = {"supported": list(versions), "requested": "2026-07-28"}
    return {"error": {"code": -32022, "message": "Unsupported protocol version", "data": data}}


@pytest.mark.parametrize(
    "discover",
    [
        {"result": {"supportedVersions": ["2025-06-18"], "capabilities": {}}},
        {"result": {"something": "else"}},
        unsupported("2025-11-25", "2099-01-01"),
        {"error": {"code": -32601, "message": "Method not found"}},
    ],
    ids=["advertises-only-handshake-versions", "not-a-discover-result", "unsupported-but-handshakes", "unknown-method"],
)
async def test_auto_takes_anything_but_modern_evidence_as_a_handshake_server(
    closing: Closing, discover: dict[str, Any]
) -> None:
    async with serve(scripted_server(discover)) as running:
        connector = await started(closing, running.url, "auto")

        assert connector.info is not None and connector.info.protocol_version == "2025-11-25"
        assert connector.info.server_info == {"name": "old"}


async def test_auto_gives_up_on_a_server_that_speaks_only_versions_the_portal_does_not(closing: Closing) -> None:
    async with serve(scripted_server(unsupported("2099-01-01"))) as running:
        with pytest.raises(UpstreamUnavailable, match="speaks only protocol versions 2099-01-01"):
            await started(closing, running.url, "auto")


# -- requests -------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ERAS)
async def test_tools_are_listed_and_called_with_structured_output(demo: Demo, closing: Closing, protocol: Era) -> None:
    connector = await started(closing, demo.url, protocol)

    listed = await connector.request("tools/list", None, timeout=5)
    called = await connector.request("tools/call", {"name": "add", "arguments": {"a": 1, "b": 2}}, timeout=5)

    assert {"add", "count", "wait_for_cancel", "grow"} <= {tool["name"] for tool in listed["tools"]}
    assert called["structuredContent"] == {"total": 3, "terms": [1, 2]}
    assert called["isError"] is False


@pytest.mark.parametrize("protocol", ERAS)
async def test_resources_and_prompts_are_relayed(demo: Demo, closing: Closing, protocol: Era) -> None:
    connector = await started(closing, demo.url, protocol)

    resources = await connector.request("resources/list", {}, timeout=5)
    read = await connector.request("resources/read", {"uri": "demo://greeting"}, timeout=5)
    prompts = await connector.request("prompts/list", None, timeout=5)
    prompt = await connector.request("prompts/get", {"name": "greet", "arguments": {"name": "Ada"}}, timeout=5)

    assert [resource["uri"] for resource in resources["resources"]] == ["demo://greeting"]
    assert read["contents"][0]["text"] == "hello from demo"
    assert [p["name"] for p in prompts["prompts"]] == ["greet"]
    assert "Ada" in prompt["messages"][0]["content"]["text"]


@pytest.mark.parametrize("protocol", ERAS)
async def test_json_rpc_errors_keep_their_code_and_message(demo: Demo, closing: Closing, protocol: Era) -> None:
    connector = await started(closing, demo.url, protocol)

    with pytest.raises(UpstreamRejected) as caught:
        await connector.request("nothing/here", {}, timeout=5)

    assert caught.value.rpc_code == -32601
    assert caught.value.server == "demo"


@pytest.mark.parametrize("protocol", ERAS)
async def test_progress_notifications_reach_the_caller_with_its_own_token(
    demo: Demo, closing: Closing, protocol: Era
) -> None:
    connector = await started(closing, demo.url, protocol)
    first, second = Notes(), Notes()
    # Two callers choose the same token: the upstream must see two distinct ones.
    params = {"name": "count", "arguments": {"steps": 3}, "_meta": {"progressToken": "mine"}}

    await asyncio.gather(
        connector.request("tools/call", params, timeout=5, on_notification=first),
        connector.request("tools/call", params, timeout=5, on_notification=second),
    )

    for notes in (first, second):
        progress = notes.of("notifications/progress")
        assert [note["progress"] for note in progress] == [1, 2, 3]
        assert {note["progressToken"] for note in progress} == {"mine"}
    upstream_tokens = {seen.body["params"]["_meta"]["progressToken"] for seen in demo.recorder.rpc("tools/call")}
    assert len(upstream_tokens) == 2 and "mine" not in upstream_tokens


@pytest.mark.parametrize("protocol", ERAS)
async def test_other_notifications_of_a_request_reach_that_request(demo: Demo, closing: Closing, protocol: Era) -> None:
    connector = closing(HttpConnector("demo", demo.url, protocol=protocol))
    unsolicited, mine = Notes(), Notes()
    connector.on_notification = unsolicited
    await connector.start()
    params = {"name": "chatty", "arguments": {}, "_meta": {"io.modelcontextprotocol/logLevel": "info"}}

    await connector.request("tools/call", params, timeout=5, on_notification=mine)

    [log] = mine.of("notifications/message")
    assert (log["level"], log["data"]) == ("info", "working on it")
    assert not unsolicited.of("notifications/message")


@pytest.mark.parametrize("protocol", ERAS)
async def test_tool_list_changes_reach_on_notification(demo: Demo, closing: Closing, protocol: Era) -> None:
    connector = closing(HttpConnector("demo", demo.url, protocol=protocol))
    notes = Notes()
    connector.on_notification = notes
    await connector.start()
    await asyncio.wait_for(connector.listening.wait(), 5)

    await connector.request("tools/call", {"name": "grow", "arguments": {"name": "sprout"}}, timeout=5)
    await notes.wait_for("notifications/tools/list_changed")

    listed = await connector.request("tools/list", None, timeout=5)
    assert "sprout" in {tool["name"] for tool in listed["tools"]}
    subscribed = demo.recorder.rpc("subscriptions/listen")
    assert bool(subscribed) == (expected_era(protocol) == "2026-07-28")


@pytest.mark.parametrize("protocol", ERAS)
async def test_the_liveness_probe_of_each_era_is_answered(demo: Demo, closing: Closing, protocol: Era) -> None:
    connector = await started(closing, demo.url, protocol)
    modern = expected_era(protocol) == "2026-07-28"

    answer = await connector.request("server/discover" if modern else "ping", None, timeout=5)

    assert ("supportedVersions" in answer) == modern


@pytest.mark.parametrize("protocol", ERAS)
async def test_a_dropped_notification_stream_is_reopened_and_the_owner_told_to_refetch(
    start_demo: Any, closing: Closing, protocol: Era
) -> None:
    demo = await start_demo(event_store=InMemoryEventStore())  # lets the server drop the GET stream
    connector = closing(HttpConnector("demo", demo.url, protocol=protocol))
    notes = Notes()
    connector.on_notification = notes
    await connector.start()
    await asyncio.wait_for(connector.listening.wait(), 5)

    await connector.request("tools/call", {"name": "drop_streams", "arguments": {}}, timeout=5)
    # Whatever changed while the stream was down is lost, so the owner hears of every list.
    await notes.wait_for("notifications/prompts/list_changed")
    await asyncio.wait_for(connector.listening.wait(), 5)
    await connector.request("tools/call", {"name": "grow", "arguments": {"name": "late"}}, timeout=5)

    assert len(await notes.wait_for("notifications/tools/list_changed", count=2)) == 2


# -- cancellation and failure ---------------------------------------------------------------


async def call_and_wait_until_running(connector: HttpConnector) -> asyncio.Task[dict[str, Any]]:
    notes = Notes()
    call = asyncio.create_task(
        connector.request(
            "tools/call",
            {"name": "wait_for_cancel", "arguments": {}, "_meta": {"progressToken": 1}},
            timeout=30,
            on_notification=notes,
        )
    )
    await notes.wait_for("notifications/progress")
    return call


@pytest.mark.parametrize("protocol", ERAS)
async def test_cancelling_the_caller_cancels_the_upstream_call(demo: Demo, closing: Closing, protocol: Era) -> None:
    connector = await started(closing, demo.url, protocol)
    call = await call_and_wait_until_running(connector)

    call.cancel()
    await asyncio.wait_for(demo.state.cancelled.wait(), 5)

    with pytest.raises(asyncio.CancelledError):
        await call
    if expected_era(protocol) == "2025-11-25":
        [cancel] = demo.recorder.rpc("notifications/cancelled")
        assert cancel.body["params"]["requestId"] == demo.recorder.rpc("tools/call")[0].body["id"]


@pytest.mark.parametrize("protocol", ERAS)
async def test_a_call_that_takes_too_long_times_out_and_is_cancelled_upstream(
    demo: Demo, closing: Closing, protocol: Era
) -> None:
    connector = await started(closing, demo.url, protocol)

    with pytest.raises(UpstreamTimeout, match=r"server 'demo' did not answer within 0.3s"):
        await connector.request("tools/call", {"name": "wait_silently", "arguments": {}}, timeout=0.3)

    await asyncio.wait_for(demo.state.cancelled.wait(), 5)
    assert not connector.closed


@pytest.mark.parametrize("protocol", ERAS)
async def test_an_upstream_dying_mid_call_fails_the_call_promptly(demo: Demo, closing: Closing, protocol: Era) -> None:
    connector = await started(closing, demo.url, protocol)
    call = await call_and_wait_until_running(connector)

    demo.running.crash()

    with pytest.raises(UpstreamUnavailable, match=r"server 'demo' (closed the connection|reset the connection)"):
        await asyncio.wait_for(call, 0.5)
    with pytest.raises(UpstreamUnavailable, match="is unreachable: connection refused"):
        await connector.request("tools/list", None, timeout=5)


@pytest.mark.parametrize("protocol", ERAS)
async def test_an_unreachable_server_is_reported_as_connection_refused(closing: Closing, protocol: Era) -> None:
    with pytest.raises(UpstreamUnavailable, match="server 'demo' is unreachable: connection refused"):
        await started(closing, f"http://127.0.0.1:{free_port()}/mcp", protocol)


@pytest.mark.parametrize("protocol", ERAS)
async def test_a_server_answering_html_is_a_protocol_error(closing: Closing, protocol: Era) -> None:
    async with serve(html_app()) as running:
        with pytest.raises(UpstreamProtocolError, match="answered text/html, not MCP"):
            await started(closing, running.url, protocol)


@pytest.mark.parametrize("protocol", ERAS)
async def test_html_in_place_of_an_answer_is_a_protocol_error(demo: Demo, closing: Closing, protocol: Era) -> None:
    connector = await started(closing, demo.url, protocol)
    demo.recorder.intercept = lambda seen: (
        (200, "text/html", b"<html>maintenance</html>") if seen.rpc_method == "tools/list" else None
    )

    with pytest.raises(UpstreamProtocolError, match="answered text/html, not MCP"):
        await connector.request("tools/list", None, timeout=5)
    demo.recorder.intercept = lambda seen: (
        (200, "application/json", b"{not json") if seen.rpc_method == "tools/list" else None
    )
    with pytest.raises(UpstreamProtocolError, match="not JSON"):
        await connector.request("tools/list", None, timeout=5)
    assert (await connector.request("prompts/list", None, timeout=5))["prompts"]


@pytest.mark.parametrize("status", [401, 403])
async def test_refused_credentials_make_the_server_unavailable_with_a_clear_cause(
    closing: Closing, status: int
) -> None:
    async with serve(html_app(status, "application/json")) as running:
        with pytest.raises(UpstreamUnavailable, match=f"refused the portal's credentials \\(HTTP {status}\\)"):
            await started(closing, running.url, "auto")


# -- handshake-era sessions -------------------------------------------------------------------


async def test_an_expired_session_is_renewed_transparently(demo: Demo, closing: Closing) -> None:
    connector = closing(HttpConnector("demo", demo.url, protocol="2025-11-25"))
    notes = Notes()
    connector.on_notification = notes
    await connector.start()
    expired = connector.session_id
    async with aiohttp.ClientSession() as http:  # the server forgets the session
        await http.delete(demo.url, headers={"Mcp-Session-Id": str(expired), "MCP-Protocol-Version": "2025-11-25"})

    result = await connector.request("tools/call", {"name": "add", "arguments": {"a": 1, "b": 1}}, timeout=5)

    assert result["structuredContent"]["total"] == 2
    assert connector.session_id not in (None, expired)
    assert len(demo.recorder.rpc("initialize")) == 2
    assert not connector.closed
    # The new session may serve other tools: the owner is told to refetch.
    await notes.wait_for("notifications/tools/list_changed")


async def test_a_session_that_cannot_be_renewed_closes_the_connector(demo: Demo, closing: Closing) -> None:
    connector = await started(closing, demo.url, "2025-11-25")
    demo.recorder.intercept = lambda seen: (404, "application/json", b"") if seen.method == "POST" else None

    with pytest.raises(UpstreamUnavailable, match="ended its session and refused a new one"):
        await connector.request("tools/list", None, timeout=5)

    assert connector.closed
    await asyncio.wait_for(connector.wait_closed(), 1)
    with pytest.raises(UpstreamUnavailable, match="ended its session"):
        await connector.request("tools/list", None, timeout=5)


async def test_an_interrupted_response_stream_is_resumed_from_the_last_event(start_demo: Any, closing: Closing) -> None:
    demo = await start_demo(event_store=InMemoryEventStore(), retry_interval=20)
    connector = await started(closing, demo.url, "2025-11-25")
    notes = Notes()

    result = await connector.request(
        "tools/call",
        {"name": "poll_me", "arguments": {}, "_meta": {"progressToken": "p"}},
        timeout=5,
        on_notification=notes,
    )

    assert result["structuredContent"] == {"result": "resumed"}
    assert notes.of("notifications/progress")[0]["message"] == "after the break"
    assert any(seen.method == "GET" and "last-event-id" in seen.headers for seen in demo.recorder.seen)


async def test_handshake_requests_carry_the_session_and_no_2026_envelope(demo: Demo, closing: Closing) -> None:
    connector = await started(closing, demo.url, "2025-11-25")
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "trace": "abc"}

    await connector.request("tools/call", {"name": "add", "arguments": {"a": 1, "b": 1}, "_meta": meta}, timeout=5)

    [call] = demo.recorder.rpc("tools/call")
    assert call.headers["mcp-session-id"] == connector.session_id
    assert call.headers["mcp-protocol-version"] == "2025-11-25"
    assert call.body["params"]["_meta"] == {"trace": "abc"}


async def test_server_requests_are_refused_except_ping(demo: Demo, closing: Closing) -> None:
    connector = await started(closing, demo.url, "2025-11-25")
    await asyncio.wait_for(connector.listening.wait(), 5)

    result = await connector.request("tools/call", {"name": "ask_client", "arguments": {}}, timeout=5)

    assert result["structuredContent"] == {"result": "pinged; roots refused with -32601"}


async def test_close_ends_the_session_and_is_safe_twice(demo: Demo, closing: Closing) -> None:
    connector = await started(closing, demo.url, "2025-11-25")
    session_id = connector.session_id

    await connector.close()
    await connector.close()

    assert connector.closed
    [delete] = [seen for seen in demo.recorder.seen if seen.method == "DELETE"]
    assert delete.headers["mcp-session-id"] == session_id
    with pytest.raises(UpstreamUnavailable, match="is shut down"):
        await connector.request("tools/list", None, timeout=5)


async def test_a_closed_connector_can_start_a_new_session(demo: Demo, closing: Closing) -> None:
    connector = await started(closing, demo.url, "2025-11-25")
    first = connector.session_id
    await connector.close()

    await connector.start()

    assert not connector.closed and connector.session_id not in (None, first)
    assert (await connector.request("tools/list", None, timeout=5))["tools"]


# -- 2026-era requests ------------------------------------------------------------------------


async def test_2026_requests_carry_the_envelope_and_routing_headers(demo: Demo, closing: Closing) -> None:
    connector = await started(closing, demo.url, "2026-07-28")

    await connector.request("tools/call", {"name": "add", "arguments": {"a": 1, "b": 1}}, timeout=5)
    await connector.request("resources/read", {"uri": "demo://greeting"}, timeout=5)

    call, read = demo.recorder.rpc("tools/call")[0], demo.recorder.rpc("resources/read")[0]
    assert set(call.body["params"]["_meta"]) >= ENVELOPE_KEYS
    assert call.body["params"]["_meta"]["io.modelcontextprotocol/clientInfo"]["name"] == "portal"
    assert (call.headers["mcp-method"], call.headers["mcp-name"]) == ("tools/call", "add")
    assert (read.headers["mcp-method"], read.headers["mcp-name"]) == ("resources/read", "demo://greeting")
    assert call.headers["mcp-protocol-version"] == "2026-07-28"
    assert "mcp-session-id" not in call.headers


async def test_annotated_arguments_are_mirrored_into_mcp_param_headers(demo: Demo, closing: Closing) -> None:
    connector = await started(closing, demo.url, "2026-07-28")
    arguments = {"name": "regional", "arguments": {"region": "eu-west", "size": 3}}

    await connector.request("tools/list", None, timeout=5)
    result = await connector.request("tools/call", arguments, timeout=5)

    assert result["structuredContent"] == {"result": "3 in eu-west"}
    assert demo.recorder.rpc("tools/call")[0].headers["mcp-param-region"] == "eu-west"


async def test_mcp_param_headers_can_come_from_an_input_schema_lookup(demo: Demo, closing: Closing) -> None:
    schema = {"type": "object", "properties": {"region": {"type": "string", "x-mcp-header": "Region"}}}
    connector = await started(closing, demo.url, "2026-07-28", input_schema=lambda tool: schema)

    result = await connector.request(
        "tools/call", {"name": "regional", "arguments": {"region": "ü", "size": 1}}, timeout=5
    )

    assert result["structuredContent"] == {"result": "1 in ü"}
    assert demo.recorder.rpc("tools/call")[0].headers["mcp-param-region"].startswith("=?base64?")


async def test_tools_with_invalid_header_annotations_are_dropped_in_2026(closing: Closing) -> None:
    bad = {
        "name": "bad",
        "inputSchema": {"type": "object", "properties": {"n": {"type": "number", "x-mcp-header": "N"}}},
    }
    good = {"name": "good", "inputSchema": {"type": "object"}}
    discover = {
        "supportedVersions": ["2026-07-28"],
        "capabilities": {"tools": {}},
        "resultType": "complete",
        "ttlMs": 0,
    }

    def scripted(seen: Seen) -> tuple[int, str, bytes]:
        result = discover if seen.rpc_method == "server/discover" else {"tools": [bad, good]}
        return 200, "application/json", json.dumps({"jsonrpc": "2.0", "id": seen.body["id"], "result": result}).encode()

    async with serve(Recorder(app=None, intercept=scripted)) as running:
        connector = await started(closing, running.url, "auto")
        listed = await connector.request("tools/list", None, timeout=5)

    assert [tool["name"] for tool in listed["tools"]] == ["good"]
