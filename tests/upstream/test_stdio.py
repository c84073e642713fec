"""StdioConnector against the MCP SDK's stdio server (the demo server run as a child process)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio
from upstream_support import DEMO_SCRIPT, ERAS, Era, LogWatch, Notes, expected_era

from portal.errors import UpstreamProtocolError, UpstreamRejected, UpstreamTimeout, UpstreamUnavailable
from portal.upstream.base import Connector
from portal.upstream.stdio import StdioConnector

Starter = Callable[..., Any]
Shared = Callable[[str], Awaitable[StdioConnector]]

# A hand-written server: answers `initialize`, then ignores stdin closing and SIGTERM.
STUBBORN = r"""
import json, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
if "--banner" in sys.argv:
    print("Starting stubborn server v0.1 ...", flush=True)
for line in sys.stdin:
    message = json.loads(line)
    if message.get("method") == "initialize" and "--mute" not in sys.argv:
        info = {"name": "stubborn", "version": "0"}
        result = {"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": info}
        print(json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result}), flush=True)
while True:
    time.sleep(1)
"""


# Starting a Python MCP server takes most of a second, so the tests that leave the process as
# they found it share one per era, on one event loop for the whole module.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared() -> AsyncIterator[Callable[[str], Awaitable[StdioConnector]]]:
    """`await shared(protocol)`: a running demo server for tests that do not stop it."""
    running: dict[str, StdioConnector] = {}

    async def get(protocol: Era) -> StdioConnector:
        connector = running.get(protocol)
        if connector is None or connector.closed:
            connector = running[protocol] = StdioConnector("demo", sys.executable, [DEMO_SCRIPT], protocol=protocol)
            await connector.start()
        connector.on_notification = None
        return connector

    yield get
    for connector in running.values():
        await connector.close()


@pytest_asyncio.fixture(loop_scope="module")
async def start() -> AsyncIterator[Starter]:
    """`await start(protocol, *script_args, **options)`: a connector of the test's own (`defer=True`: not started)."""
    connectors: list[StdioConnector] = []

    async def make(
        protocol: Era = "auto", *args: str, script: list[str] | None = None, **options: Any
    ) -> StdioConnector:
        argv = script if script is not None else [DEMO_SCRIPT, *args]
        defer = options.pop("defer", False)
        connector = StdioConnector("demo", sys.executable, argv, protocol=protocol, **options)
        connectors.append(connector)
        if not defer:
            await connector.start()
        return connector

    yield make
    for connector in connectors:
        await connector.close()


async def call_and_wait_until_running(connector: StdioConnector, timeout: float = 30) -> asyncio.Task[dict[str, Any]]:
    notes = Notes()
    call = asyncio.create_task(
        connector.request(
            "tools/call",
            {"name": "wait_for_cancel", "arguments": {}, "_meta": {"progressToken": "t"}},
            timeout=timeout,
            on_notification=notes,
        )
    )
    await notes.wait_for("notifications/progress")
    return call


# -- negotiation ------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ERAS)
async def test_start_negotiates_the_era_the_portal_asks_for(shared: Shared, protocol: Era) -> None:
    connector = await shared(protocol)

    assert isinstance(connector, Connector)
    assert connector.info is not None and connector.info.protocol_version == expected_era(protocol)
    assert connector.info.server_info["name"] == "demo"
    assert connector.pid is not None and connector.returncode is None


async def test_auto_falls_back_to_the_handshake_when_the_server_only_speaks_it(start: Starter) -> None:
    connector = await start("auto", "--legacy-only")

    assert connector.info is not None and connector.info.protocol_version == "2025-11-25"
    result = await connector.request("tools/call", {"name": "add", "arguments": {"a": 5, "b": 5}}, timeout=5)
    assert result["structuredContent"]["total"] == 10


async def test_a_2026_only_connector_refuses_a_handshake_only_server(start: Starter) -> None:
    connector = StdioConnector("demo", sys.executable, [DEMO_SCRIPT, "--legacy-only"], protocol="2026-07-28")

    with pytest.raises(UpstreamUnavailable, match="refused server/discover"):
        await connector.start()
    assert connector.closed and connector.returncode is not None


# -- requests -------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ERAS)
async def test_tools_are_listed_and_called_with_structured_output(shared: Shared, protocol: Era) -> None:
    connector = await shared(protocol)

    listed = await connector.request("tools/list", None, timeout=5)
    called = await connector.request("tools/call", {"name": "add", "arguments": {"a": 1, "b": 2}}, timeout=5)

    assert {"add", "count", "wait_for_cancel", "grow"} <= {tool["name"] for tool in listed["tools"]}
    assert called["structuredContent"] == {"total": 3, "terms": [1, 2]}


@pytest.mark.parametrize("protocol", ERAS)
async def test_resources_and_prompts_are_relayed(shared: Shared, protocol: Era) -> None:
    connector = await shared(protocol)

    read = await connector.request("resources/read", {"uri": "demo://greeting"}, timeout=5)
    prompt = await connector.request("prompts/get", {"name": "greet", "arguments": {"name": "Ada"}}, timeout=5)
    resources = await connector.request("resources/list", None, timeout=5)

    assert read["contents"][0]["text"] == "hello from demo"
    assert "Ada" in prompt["messages"][0]["content"]["text"]
    assert [resource["uri"] for resource in resources["resources"]] == ["demo://greeting"]


@pytest.mark.parametrize("protocol", ERAS)
async def test_json_rpc_errors_keep_their_code_and_message(shared: Shared, protocol: Era) -> None:
    connector = await shared(protocol)

    with pytest.raises(UpstreamRejected) as caught:
        await connector.request("nothing/here", {}, timeout=5)

    assert caught.value.rpc_code == -32601
    assert not connector.closed


@pytest.mark.parametrize("protocol", ERAS)
async def test_progress_notifications_reach_the_caller_with_its_own_token(shared: Shared, protocol: Era) -> None:
    connector = await shared(protocol)
    first, second = Notes(), Notes()
    params = {"name": "count", "arguments": {"steps": 3}, "_meta": {"progressToken": 7}}

    await asyncio.gather(
        connector.request("tools/call", params, timeout=5, on_notification=first),
        connector.request("tools/call", params, timeout=5, on_notification=second),
    )

    for notes in (first, second):
        progress = notes.of("notifications/progress")
        assert [note["progress"] for note in progress] == [1, 2, 3]
        assert {note["progressToken"] for note in progress} == {7}


@pytest.mark.parametrize("protocol", ERAS)
async def test_tool_list_changes_reach_on_notification(shared: Shared, protocol: Era) -> None:
    connector = await shared(protocol)
    notes = Notes()
    connector.on_notification = notes
    await asyncio.wait_for(connector.listening.wait(), 5)

    await connector.request("tools/call", {"name": "grow", "arguments": {"name": "sprout"}}, timeout=5)
    await notes.wait_for("notifications/tools/list_changed")

    listed = await connector.request("tools/list", None, timeout=5)
    assert "sprout" in {tool["name"] for tool in listed["tools"]}


@pytest.mark.parametrize("protocol", ERAS)
async def test_log_messages_reach_on_notification_since_a_pipe_cannot_tell_their_request(
    shared: Shared, protocol: Era
) -> None:
    connector = await shared(protocol)
    notes = Notes()
    connector.on_notification = notes
    params = {"name": "chatty", "arguments": {}, "_meta": {"io.modelcontextprotocol/logLevel": "info"}}

    await connector.request("tools/call", params, timeout=5, on_notification=Notes())

    [log] = await notes.wait_for("notifications/message")
    assert log["data"] == "working on it"


async def test_a_gracefully_ended_subscription_is_reopened_and_the_owner_told_to_refetch(shared: Shared) -> None:
    connector = await shared("2026-07-28")
    notes = Notes()
    connector.on_notification = notes
    await asyncio.wait_for(connector.listening.wait(), 5)

    await connector.request("tools/call", {"name": "drop_streams", "arguments": {}}, timeout=5)
    await notes.wait_for("notifications/prompts/list_changed")
    await asyncio.wait_for(connector.listening.wait(), 5)
    await connector.request("tools/call", {"name": "grow", "arguments": {"name": "late"}}, timeout=5)

    assert len(await notes.wait_for("notifications/tools/list_changed", count=2)) == 2


async def test_server_requests_are_refused_except_ping(shared: Shared) -> None:
    connector = await shared("2025-11-25")

    result = await connector.request("tools/call", {"name": "ask_client", "arguments": {}}, timeout=5)

    assert result["structuredContent"] == {"result": "pinged; roots refused with -32601"}


# -- cancellation and failure ---------------------------------------------------------------


@pytest.mark.parametrize("protocol", ERAS)
async def test_cancelling_the_caller_cancels_the_upstream_call(shared: Shared, protocol: Era) -> None:
    with LogWatch("portal.upstream.stdio") as log:
        connector = await shared(protocol)
        call = await call_and_wait_until_running(connector)

        call.cancel()

        await log.wait_for("tool wait_for_cancel was cancelled")
    with pytest.raises(asyncio.CancelledError):
        await call
    assert (await connector.request("tools/list", None, timeout=5))["tools"]


@pytest.mark.parametrize("protocol", ERAS)
async def test_a_call_that_takes_too_long_times_out_and_is_cancelled_upstream(shared: Shared, protocol: Era) -> None:
    with LogWatch("portal.upstream.stdio") as log:
        connector = await shared(protocol)

        with pytest.raises(UpstreamTimeout, match=r"server 'demo' did not answer within 0.3s"):
            await connector.request("tools/call", {"name": "wait_silently", "arguments": {}}, timeout=0.3)

        await log.wait_for("tool wait_silently was cancelled")
    assert not connector.closed


@pytest.mark.parametrize("protocol", ERAS)
async def test_an_upstream_killed_mid_call_fails_the_call_promptly(start: Starter, protocol: Era) -> None:
    connector = await start(protocol)
    call = await call_and_wait_until_running(connector)

    os.kill(connector.pid, signal.SIGKILL)

    with pytest.raises(UpstreamUnavailable, match="server 'demo' was killed by signal SIGKILL"):
        await asyncio.wait_for(call, 1)
    await asyncio.wait_for(connector.wait_closed(), 1)
    assert connector.closed
    with pytest.raises(UpstreamUnavailable, match="was killed by signal SIGKILL"):
        await connector.request("tools/list", None, timeout=5)


async def test_an_upstream_that_exits_reports_its_status(start: Starter) -> None:
    connector = await start("auto")

    with pytest.raises(UpstreamUnavailable, match="server 'demo' exited with status 3"):
        await connector.request("tools/call", {"name": "exit_now", "arguments": {"code": 3}}, timeout=5)

    assert connector.closed and connector.returncode == 3


async def test_a_missing_command_cannot_be_started() -> None:
    connector = StdioConnector("demo", "/nonexistent/mcp-server", [])

    with pytest.raises(UpstreamUnavailable, match="server 'demo' could not be started: command not found"):
        await connector.start()
    assert connector.closed


async def test_a_server_that_writes_only_junk_is_a_protocol_error(start: Starter) -> None:
    connector = await start(
        "2025-11-25", script=["-c", STUBBORN, "--banner", "--mute"], connect_timeout=0.5, grace=0.1, defer=True
    )

    with pytest.raises(UpstreamProtocolError, match="writes something that is not JSON-RPC to stdout"):
        await connector.start()


async def test_a_banner_on_stdout_before_the_handshake_is_ignored(start: Starter) -> None:
    connector = await start("2025-11-25", script=["-c", STUBBORN, "--banner"], grace=0.1)

    assert connector.info is not None and connector.info.server_info["name"] == "stubborn"


# -- lifecycle ------------------------------------------------------------------------------


async def test_close_stops_the_process_and_is_safe_twice(start: Starter) -> None:
    connector = await start("auto")

    await connector.close()
    await connector.close()

    assert connector.closed and connector.returncode == 0
    with pytest.raises(UpstreamUnavailable, match="is shut down"):
        await connector.request("tools/list", None, timeout=5)


async def test_a_server_ignoring_stdin_and_sigterm_is_killed(start: Starter) -> None:
    connector = await start("2025-11-25", script=["-c", STUBBORN], grace=0.2)
    began = time.monotonic()

    await connector.close()

    assert connector.returncode == -signal.SIGKILL
    assert time.monotonic() - began < 2


async def test_a_closed_connector_starts_a_new_process(start: Starter) -> None:
    connector = await start("auto")
    first = connector.pid
    await connector.close()

    await connector.start()

    assert connector.pid != first and not connector.closed
    assert (await connector.request("tools/list", None, timeout=5))["tools"]


async def test_stderr_is_kept_and_logged_but_the_environment_is_not(
    start: Starter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PORTAL_TEST_OWN_SECRET", "portal-secret")
    with LogWatch("portal.upstream.stdio") as log:
        connector = await start("auto", env={"GIVEN_TOKEN": "upstream-secret"})

        own = await connector.request(
            "tools/call", {"name": "has_env", "arguments": {"name": "PORTAL_TEST_OWN_SECRET"}}, timeout=5
        )
        given = await connector.request(
            "tools/call", {"name": "has_env", "arguments": {"name": "GIVEN_TOKEN"}}, timeout=5
        )
        call = await call_and_wait_until_running(connector, timeout=0.2)
        with pytest.raises(UpstreamTimeout):
            await call
        line = await log.wait_for("was cancelled")

    assert (own["structuredContent"], given["structuredContent"]) == ({"result": False}, {"result": True})
    assert "tool wait_for_cancel was cancelled" in connector.stderr_tail
    assert line == "demo stderr: tool wait_for_cancel was cancelled"
    assert not any("secret" in text for text in log.lines)
