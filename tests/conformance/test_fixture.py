"""The conformance fixture server checked with the Python SDK client, in both eras, without Node.

The conformance suite itself needs Node 22 (test_conformance.py); these tests keep the fixture honest when Node
is missing, and exercise it the way the portal hosts it: in-process, by importing the module's `server`. One
test also runs `python -m servers.conformance --http` as a real process.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from _suite import REPO_ROOT
from mcp.client import Client
from mcp.client.context import ClientRequestContext
from mcp.types import (
    CreateMessageRequestParams,
    CreateMessageResult,
    ElicitRequestParams,
    ElicitResult,
    PromptReference,
    TextContent,
    TextResourceContents,
)

from servers import conformance

pytestmark = pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")

# Client modes: the 2025-11-25 handshake and the 2026-07-28 stateless era.
MODES = ("legacy", "2026-07-28")

# Every fixture name the conformance suite calls (0.2.0-alpha.12, server mode).
SUITE_TOOLS = {
    "test_simple_text",
    "test_image_content",
    "test_audio_content",
    "test_embedded_resource",
    "test_multiple_content_types",
    "test_tool_with_logging",
    "test_logging_tool",
    "test_tool_with_progress",
    "test_error_handling",
    "test_sampling",
    "test_elicitation",
    "test_elicitation_sep1034_defaults",
    "test_elicitation_sep1330_enums",
    "test_reconnection",
    "test_streaming_elicitation",
    "test_missing_capability",
    "test_trigger_tool_change",
    "test_trigger_prompt_change",
    "json_schema_2020_12_tool",
    "test_input_required_result_elicitation",
    "test_input_required_result_sampling",
    "test_input_required_result_list_roots",
    "test_input_required_result_request_state",
    "test_input_required_result_multiple_inputs",
    "test_input_required_result_multi_round",
    "test_input_required_result_tampered_state",
    "test_input_required_result_capabilities",
}
SUITE_PROMPTS = {
    "test_simple_prompt",
    "test_prompt_with_arguments",
    "test_prompt_with_embedded_resource",
    "test_prompt_with_image",
    "test_input_required_result_prompt",
}


async def answer_elicitation(context: ClientRequestContext, params: ElicitRequestParams) -> ElicitResult:
    """Play the user: accept every form with plausible values for the fields the fixtures ask for."""
    values: dict[str, str | int | float | bool | list[str] | None] = {
        "username": "alice",
        "email": "alice@example.com",
        "name": "Alice",
        "context": "tests",
        "ok": True,
    }
    schema = getattr(params, "requested_schema", {}) or {}
    return ElicitResult(action="accept", content={k: v for k, v in values.items() if k in schema.get("properties", {})})


async def answer_sampling(context: ClientRequestContext, params: CreateMessageRequestParams) -> CreateMessageResult:
    """Play the model: always answer Paris."""
    return CreateMessageResult(role="assistant", content=TextContent(type="text", text="Paris"), model="test-model")


def text_of(result: object) -> str:
    """The text of the first content block of a tool result."""
    block = result.content[0]  # type: ignore[attr-defined]
    assert isinstance(block, TextContent), block
    return block.text


@pytest.mark.parametrize("mode", MODES)
async def test_catalogue(mode: str) -> None:
    """Every tool and prompt the suite calls is listed, and so are the test:// resources."""
    async with Client(conformance.server, mode=mode) as client:
        tools = {tool.name for tool in (await client.list_tools()).tools}
        assert tools >= SUITE_TOOLS, sorted(SUITE_TOOLS - tools)
        prompts = {prompt.name for prompt in (await client.list_prompts()).prompts}
        assert prompts >= SUITE_PROMPTS, sorted(SUITE_PROMPTS - prompts)
        resources = {str(resource.uri) for resource in (await client.list_resources()).resources}
        assert {"test://static-text", "test://static-binary", "test://watched-resource"} <= resources
        templates = (await client.list_resource_templates()).resource_templates
        assert [template.uri_template for template in templates] == ["test://template/{id}/data"]


@pytest.mark.parametrize("mode", MODES)
async def test_content_fixtures(mode: str) -> None:
    """Text, error, resource, template and prompt fixtures return exactly what the suite documents."""
    async with Client(conformance.server, mode=mode) as client:
        assert text_of(await client.call_tool("test_simple_text", {})) == "This is a simple text response for testing."
        error = await client.call_tool("test_error_handling", {})
        assert error.is_error and text_of(error) == "This tool intentionally returns an error for testing"
        audio = (await client.call_tool("test_audio_content", {})).content[0]
        assert audio.type == "audio" and audio.mime_type == "audio/wav"
        text = (await client.read_resource("test://static-text")).contents[0]
        assert isinstance(text, TextResourceContents)
        assert text.text == "This is the content of the static text resource."
        data = (await client.read_resource("test://template/123/data")).contents[0]
        assert isinstance(data, TextResourceContents) and json.loads(data.text)["id"] == "123"
        prompt = await client.get_prompt("test_prompt_with_arguments", {"arg1": "hello", "arg2": "world"})
        assert prompt.messages[0].content == TextContent(
            type="text", text="Prompt with arguments: arg1='hello', arg2='world'"
        )
        completion = await client.complete(
            PromptReference(type="ref/prompt", name="test_prompt_with_arguments"), {"name": "arg1", "value": "par"}
        )
        assert completion.completion.values == ["paris", "park", "party"]


@pytest.mark.parametrize("mode", MODES)
async def test_asking_the_client_works_in_both_eras(mode: str) -> None:
    """Sampling and elicitation are mid-call requests in the handshake era and input-required rounds after it."""
    async with Client(
        conformance.server,
        mode=mode,
        elicitation_callback=answer_elicitation,
        sampling_callback=answer_sampling,
    ) as client:
        sampled = await client.call_tool("test_sampling", {"prompt": "Capital of France?"})
        assert text_of(sampled) == "LLM response: Paris"
        elicited = await client.call_tool("test_elicitation", {"message": "Who are you?"})
        content = '{"username":"alice","email":"alice@example.com"}'
        assert text_of(elicited) == f"User response: action=accept, content={content}"


async def test_input_required_rounds() -> None:
    """The hand-rolled SEP-2322 fixtures converge when the client answers (stateless era only)."""
    async with Client(
        conformance.server,
        mode="2026-07-28",
        elicitation_callback=answer_elicitation,
        sampling_callback=answer_sampling,
    ) as client:
        greeting = await client.call_tool("test_input_required_result_elicitation", {})
        assert text_of(greeting) == "Hello, Alice!"
        state = await client.call_tool("test_input_required_result_request_state", {})
        assert text_of(state).startswith("state-ok")
        sampled = await client.call_tool("test_input_required_result_sampling", {})
        assert text_of(sampled) == "Model said: Paris"
        prompt = await client.get_prompt("test_input_required_result_prompt", {})
        assert prompt.messages[0].content == TextContent(type="text", text="Use the following context: tests")


async def test_event_store_replays_one_stream_and_forgets_the_oldest() -> None:
    """Resumption replays only later events of the same stream, skips priming events, and stays bounded."""
    from mcp.types import JSONRPCNotification

    store = conformance.ConformanceEventStore(max_events=3)

    def note(n: int) -> JSONRPCNotification:
        return JSONRPCNotification(jsonrpc="2.0", method="notifications/message", params={"n": n})

    first = await store.store_event("a", None)
    await store.store_event("a", note(1))
    await store.store_event("b", note(2))
    await store.store_event("a", note(3))
    replayed: list[object] = []

    async def collect(event: object) -> None:
        replayed.append(event)

    assert await store.replay_events_after(first, collect) is None  # evicted: the store keeps three events
    second = str(int(first) + 1)
    assert await store.replay_events_after(second, collect) == "a"
    assert [event.message.params for event in replayed] == [{"n": 3}]  # type: ignore[attr-defined]


@pytest.fixture
def http_process() -> Iterator[str]:
    """`python -m servers.conformance --http` on a free loopback port; yields its MCP URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "servers.conformance", "--http", "--port", str(port)],
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, f"server exited with {process.returncode}"
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "server did not start listening"
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.parametrize("mode", MODES)
async def test_runs_standalone_over_http(http_process: str, mode: str) -> None:
    """The module's own entry point serves streamable HTTP on 127.0.0.1, both eras on one endpoint."""
    async with Client(http_process, mode=mode) as client:
        assert text_of(await client.call_tool("test_simple_text", {})) == "This is a simple text response for testing."
