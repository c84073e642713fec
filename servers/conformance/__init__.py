"""The conformance fixture: an MCP server with every tool, resource and prompt the official suite expects.

The MCP conformance suite (`@modelcontextprotocol/conformance`, `server` mode) connects to a server as a
client and exercises a fixed catalogue of test fixtures by name: `test_simple_text`, `test://static-text`,
`test_prompt_with_arguments` and so on, each with an exact expected shape. This module implements that
catalogue so the suite can be pointed at it, directly or through the portal (per-server endpoint
`/servers/{name}/mcp` and the aggregated `/mcp`).

It is hosted in-process by the portal, which imports this module and takes `server`, and it also runs on its
own for testing the fixture itself:

    python -m servers.conformance --http --port 8765     # streamable HTTP on http://127.0.0.1:8765/mcp
    python -m servers.conformance                        # stdio

Every fixture works in both protocol eras on one endpoint. Where a fixture needs something from the client
(sampling, elicitation, roots) it uses the SDK's resolvers, so the same tool sends a server-to-client request
mid-call in the handshake era (2025-11-25) and returns an `InputRequiredResult` in the stateless era
(2026-07-28). The `test_input_required_result_*` fixtures hand-roll that result, because the suite checks its
exact keys, and their retries arrive as `input_responses` / `request_state`.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import logging
import re
import struct
import warnings
import wave
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Annotated, Any

import anyio
from mcp.server import ServerRequestContext
from mcp.server.lowlevel.server import NotificationOptions
from mcp.server.mcpserver import Context, Elicit, ElicitationResult, MCPServer, Resolve, Sample
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.prompts.base import Message, UserMessage
from mcp.server.mcpserver.tools import Tool
from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from mcp.types import (
    MISSING_REQUIRED_CLIENT_CAPABILITY,
    CallToolResult,
    Completion,
    CompletionArgument,
    CompletionContext,
    CreateMessageRequest,
    CreateMessageRequestParams,
    CreateMessageResult,
    ElicitRequest,
    ElicitRequestFormParams,
    ElicitResult,
    EmbeddedResource,
    EmptyResult,
    ImageContent,
    InputRequest,
    InputRequiredResult,
    InputResponses,
    JSONRPCMessage,
    ListRootsRequest,
    ListRootsResult,
    PromptReference,
    ResourceTemplateReference,
    SamplingMessage,
    SetLevelRequestParams,
    SubscribeRequestParams,
    TextContent,
    TextResourceContents,
    UnsubscribeRequestParams,
)
from mcp.types import AudioContent as AudioBlock
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel, Field
from starlette.applications import Starlette

__all__ = ["ConformanceEventStore", "create_app", "main", "server"]

logger = logging.getLogger(__name__)

# Logging, sampling and roots are deprecated in the 2026-07-28 revision, and the SDK warns on every use. This
# server exists to exercise exactly those features for handshake-era clients, so the warnings it raises itself
# are noise; the filter is scoped to this module so nothing else in the process is silenced.
warnings.filterwarnings("ignore", category=MCPDeprecationWarning, module=re.escape(__name__))

SERVER_NAME = "portal-conformance"
SERVER_VERSION = "1.0.0"

# How long a client waits before reconnecting to an SSE stream the server closed (SEP-1699 polling). Short,
# because the suite's polling scenario waits for the reconnect in real time.
SSE_RETRY_INTERVAL_MS = 100


def _png_1x1_red() -> bytes:
    """Build a minimal valid PNG: one opaque red pixel (the suite asks for "a minimal test image")."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)  # 1x1, 8-bit depth, truecolour RGB
    scanline = b"\x00\xff\x00\x00"  # filter byte 0, then R G B
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(scanline)) + chunk(b"IEND", b"")


def _wav_silence() -> bytes:
    """Build a minimal valid WAV: 10 ms of 8 kHz mono 16-bit silence (the suite checks `audio/wav`)."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(b"\x00\x00" * 80)
    return buffer.getvalue()


PNG_BYTES = _png_1x1_red()
PNG_BASE64 = base64.b64encode(PNG_BYTES).decode()
WAV_BASE64 = base64.b64encode(_wav_silence()).decode()


class ConformanceEventStore(EventStore):
    """A bounded in-memory event store, so SSE streams can be resumed with `Last-Event-ID` (SEP-1699).

    The suite's polling scenarios close a response stream mid-call and expect the client to reconnect and
    receive what it missed. Events live in one insertion-ordered map capped at `max_events`, so a long-lived
    process (the portal hosts this server indefinitely) cannot grow without bound; a client asking to resume
    from an evicted event simply gets nothing replayed.
    """

    def __init__(self, max_events: int = 10_000) -> None:
        """Create an empty store holding at most `max_events` events across all streams."""
        self._max_events = max_events
        self._events: OrderedDict[int, tuple[StreamId, JSONRPCMessage | None]] = OrderedDict()
        self._next_id = 1

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        """Record one event (or a priming event when `message` is None) and return its id."""
        event_id = self._next_id
        self._next_id += 1
        self._events[event_id] = (stream_id, message)
        while len(self._events) > self._max_events:
            self._events.popitem(last=False)
        return str(event_id)

    async def replay_events_after(self, last_event_id: EventId, send_callback: EventCallback) -> StreamId | None:
        """Send every later event of the stream `last_event_id` belongs to; return that stream, or None."""
        try:
            after = int(last_event_id)
        except ValueError:
            return None
        entry = self._events.get(after)
        if entry is None:
            return None
        stream_id = entry[0]
        # Snapshot first: the callback awaits, and new events may be stored meanwhile.
        later = [(eid, msg) for eid, (sid, msg) in self._events.items() if eid > after and sid == stream_id]
        for event_id, message in later:
            if message is not None:  # priming events carry no message and are not re-sent
                await send_callback(EventMessage(message, str(event_id)))
        return stream_id


# The one JSON Schema 2020-12 document the `json-schema-2020-12` scenario looks for, keyword for keyword: the
# scenario checks that `$schema`, `$defs` (with an `$anchor`), `$ref`, `allOf`/`anyOf`, `if`/`then`/`else` and
# `additionalProperties` survive into `tools/list` untouched (SEP-1613, SEP-2106).
JSON_SCHEMA_2020_12: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {
        "address": {
            "$anchor": "addressDef",
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
        }
    },
    "properties": {
        "name": {"type": "string"},
        "address": {"$ref": "#/$defs/address"},
        "contactMethod": {"type": "string", "enum": ["phone", "email"]},
        "phone": {"type": "string"},
        "email": {"type": "string"},
    },
    "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
    "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
    "then": {"required": ["phone"]},
    "else": {"required": ["email"]},
    "additionalProperties": False,
}


def json_schema_2020_12_tool(
    name: str | None = None,
    address: dict[str, str] | None = None,
    contactMethod: str | None = None,
    phone: str | None = None,
    email: str | None = None,
) -> str:
    """Tests JSON Schema 2020-12 keyword preservation in tools/list; echoes how to reach the caller."""
    how = phone if contactMethod == "phone" else email
    return f"json_schema_2020_12_tool: {name or 'anonymous'} via {contactMethod or 'email'} at {how or 'unknown'}"


def _tool_with_schema(fn: Any, schema: dict[str, Any]) -> Tool:
    """Register `fn` as a tool whose advertised inputSchema is `schema` instead of the derived one.

    The SDK derives schemas from signatures, which cannot express `if`/`then`/`else` or `$anchor`; the
    function's own signature still validates the arguments it receives.
    """
    return Tool.from_function(fn).model_copy(update={"parameters": schema})


server: MCPServer[Any] = MCPServer(
    name=SERVER_NAME,
    version=SERVER_VERSION,
    instructions="Fixtures for the MCP conformance suite: test_* tools, test:// resources and test_* prompts.",
    tools=[_tool_with_schema(json_schema_2020_12_tool, JSON_SCHEMA_2020_12)],
)


def _announce_list_changes(notification_options: NotificationOptions | None = None, *args: Any, **kwargs: Any) -> Any:
    """The handshake-era `initialize` options, declaring `listChanged` for tools, prompts and resources.

    `test_trigger_tool_change` and `test_trigger_prompt_change` do change the lists, and a client (such as the
    portal, which re-lists a server when told) only listens for changes a server declares. The SDK takes
    these flags from `NotificationOptions`, which `streamable_http_app` leaves at "none"; at 2026-07-28 it
    derives them from `subscriptions/listen` instead.
    """
    options = notification_options or NotificationOptions(
        prompts_changed=True, resources_changed=True, tools_changed=True
    )
    return _lowlevel_initialization_options(options, *args, **kwargs)


_lowlevel_initialization_options = server._lowlevel_server.create_initialization_options
server._lowlevel_server.create_initialization_options = _announce_list_changes  # type: ignore[method-assign]


# --------------------------------------------------------------------------------------------------------------
# Tools: content shapes
# --------------------------------------------------------------------------------------------------------------


@server.tool()
def test_simple_text() -> str:
    """Tests simple text content response."""
    return "This is a simple text response for testing."


@server.tool()
def test_image_content() -> list[ImageContent]:
    """Tests image content response (a 1x1 PNG)."""
    return [ImageContent(type="image", data=PNG_BASE64, mime_type="image/png")]


@server.tool()
def test_audio_content() -> list[AudioBlock]:
    """Tests audio content response (a short WAV)."""
    return [AudioBlock(type="audio", data=WAV_BASE64, mime_type="audio/wav")]


@server.tool()
def test_embedded_resource() -> list[EmbeddedResource]:
    """Tests embedded resource content response."""
    resource = TextResourceContents(
        uri="test://embedded-resource", mime_type="text/plain", text="This is an embedded resource content."
    )
    return [EmbeddedResource(type="resource", resource=resource)]


@server.tool()
def test_multiple_content_types() -> list[TextContent | ImageContent | EmbeddedResource]:
    """Tests a response mixing text, image and embedded resource content."""
    resource = TextResourceContents(
        uri="test://mixed-content-resource",
        mime_type="application/json",
        text=json.dumps({"test": "data", "value": 123}),
    )
    return [
        TextContent(type="text", text="Multiple content types test:"),
        ImageContent(type="image", data=PNG_BASE64, mime_type="image/png"),
        EmbeddedResource(type="resource", resource=resource),
    ]


@server.tool()
def test_error_handling() -> CallToolResult:
    """Tests error reporting: always fails, with a result carrying isError true and the message.

    Returned rather than raised so the text is exactly what the suite documents; a raised `ToolError` would
    arrive prefixed with "Error executing tool ...".
    """
    message = TextContent(type="text", text="This tool intentionally returns an error for testing")
    return CallToolResult(content=[message], is_error=True)


# --------------------------------------------------------------------------------------------------------------
# Tools: notifications during a call
# --------------------------------------------------------------------------------------------------------------


async def _log(ctx: Context, message: str) -> None:
    """Send an info-level log notification on the calling request's stream.

    Goes to the session directly rather than through `Context.log`, which forwards to the same deprecated call
    and so would warn twice per message. In the stateless era the session drops the message unless the
    request's `_meta` opted into a log level.
    """
    await ctx.session.send_log_message("info", message, related_request_id=ctx.request_context.request_id)


async def _pause() -> None:
    """Space notifications out (~50 ms), as the suite asks, so a client sees them arrive one by one."""
    await anyio.sleep(0.05)


async def test_tool_with_logging(ctx: Context) -> str:
    """Tests log notifications during execution: three info messages, ~50 ms apart.

    In the stateless era the SDK delivers them only when the request's `_meta` opted into a log level, which
    is exactly what the `server-stateless` scenario's `test_logging_tool` probe checks.
    """
    await _log(ctx, "Tool execution started")
    await _pause()
    await _log(ctx, "Tool processing data")
    await _pause()
    await _log(ctx, "Tool execution completed")
    return "Tool with logging executed successfully"


server.add_tool(test_tool_with_logging)
# The stateless-era scenario probes the same behaviour under another name.
server.add_tool(test_tool_with_logging, name="test_logging_tool", description="Emits log messages when called.")


@server.tool()
async def test_tool_with_progress(ctx: Context) -> str:
    """Tests progress notifications: 0/100, 50/100, 100/100, ~50 ms apart, against the caller's token."""
    for step in (0, 50, 100):
        await ctx.report_progress(progress=step, total=100, message=f"Completed step {step} of 100")
        if step < 100:
            await _pause()
    meta = ctx.request_context.meta
    token = meta.get("progress_token") if meta else None
    return f"Progress reported for token {token}" if token is not None else "Progress reported"


@server.tool()
async def test_reconnection(ctx: Context) -> str:
    """Tests SSE polling (SEP-1699): closes the response stream mid-call; the client resumes with Last-Event-ID."""
    await _log(ctx, "Before disconnect")
    await ctx.close_sse_stream()
    await anyio.sleep(0.2)  # long enough for the client to notice and reconnect (retry is 100 ms)
    await _log(ctx, "After reconnect")
    return "Reconnection test completed"


# --------------------------------------------------------------------------------------------------------------
# Tools: asking the client (sampling, elicitation), era-agnostic through resolvers
# --------------------------------------------------------------------------------------------------------------


def _ask_model(prompt: str) -> Sample:
    """Resolver for `test_sampling`: sample the client's model with the caller's prompt."""
    message = SamplingMessage(role="user", content=TextContent(type="text", text=prompt))
    return Sample([message], max_tokens=100)


@server.tool()
def test_sampling(prompt: str, reply: Annotated[CreateMessageResult, Resolve(_ask_model)]) -> str:
    """Tests server-initiated sampling: asks the client's LLM to answer `prompt` and returns what it said."""
    content = reply.content
    text = content.text if isinstance(content, TextContent) else f"<{content.type} content>"
    return f"LLM response: {text}"


class UserInfo(BaseModel):
    """What `test_elicitation` asks the user for."""

    username: str = Field(description="User's response")
    email: str = Field(description="User's email address")


def _ask_user(message: str) -> Elicit[UserInfo]:
    """Resolver for `test_elicitation`: show the caller's message and ask for a username and email."""
    return Elicit(message, UserInfo)


@server.tool()
def test_elicitation(message: str, answer: Annotated[ElicitationResult[UserInfo], Resolve(_ask_user)]) -> str:
    """Tests server-initiated elicitation: asks the user for input and reports what they answered."""
    content = answer.data.model_dump_json() if answer.action == "accept" else "{}"
    return f"User response: action={answer.action}, content={content}"


def _elicit_text(result: ElicitResult) -> str:
    """Render an elicitation outcome the way the SEP-1034/SEP-1330 scenarios expect to read it."""
    content = json.dumps(result.content, sort_keys=True) if result.action == "accept" and result.content else "{}"
    return f"Elicitation completed: action={result.action}, content={content}"


async def _elicit_raw(ctx: Context, message: str, schema: dict[str, Any]) -> ElicitResult:
    """Send `elicitation/create` with a hand-written schema, on the calling request's stream.

    Used where the suite inspects schema keywords a Pydantic model would not emit as-is (`enumNames`, titled
    `oneOf`/`anyOf` options, per-field defaults). Handshake era only: those scenarios are removed in 2026.
    """
    return await ctx.session.elicit_form(message, schema, related_request_id=ctx.request_context.request_id)


SEP1034_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "description": "User name", "default": "John Doe"},
        "age": {"type": "integer", "description": "User age", "default": 30},
        "score": {"type": "number", "description": "User score", "default": 95.5},
        "status": {
            "type": "string",
            "description": "User status",
            "enum": ["active", "inactive", "pending"],
            "default": "active",
        },
        "verified": {"type": "boolean", "description": "Verification status", "default": True},
    },
}


@server.tool()
async def test_elicitation_sep1034_defaults(ctx: Context) -> str:
    """Tests elicitation whose schema gives a default for every primitive type (SEP-1034)."""
    result = await _elicit_raw(ctx, "Please provide user information", SEP1034_SCHEMA)
    return _elicit_text(result)


SEP1330_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "untitledSingle": {
            "type": "string",
            "description": "Untitled single-select",
            "enum": ["option1", "option2", "option3"],
        },
        "titledSingle": {
            "type": "string",
            "description": "Titled single-select",
            "oneOf": [
                {"const": "value1", "title": "First Option"},
                {"const": "value2", "title": "Second Option"},
                {"const": "value3", "title": "Third Option"},
            ],
        },
        "legacyEnum": {
            "type": "string",
            "description": "Legacy titled enum (deprecated enumNames)",
            "enum": ["opt1", "opt2", "opt3"],
            "enumNames": ["Option One", "Option Two", "Option Three"],
        },
        "untitledMulti": {
            "type": "array",
            "description": "Untitled multi-select",
            "items": {"type": "string", "enum": ["option1", "option2", "option3"]},
        },
        "titledMulti": {
            "type": "array",
            "description": "Titled multi-select",
            "items": {
                "anyOf": [
                    {"const": "value1", "title": "First Choice"},
                    {"const": "value2", "title": "Second Choice"},
                    {"const": "value3", "title": "Third Choice"},
                ]
            },
        },
    },
}


@server.tool()
async def test_elicitation_sep1330_enums(ctx: Context) -> str:
    """Tests elicitation with all five enum schema variants (SEP-1330)."""
    result = await _elicit_raw(ctx, "Please select values using different enum schema types", SEP1330_SCHEMA)
    return _elicit_text(result)


class NameAnswer(BaseModel):
    """A single required name, as `test_streaming_elicitation` asks for."""

    name: str = Field(description="Your name")


def _ask_for_name() -> Elicit[NameAnswer]:
    """Resolver for `test_streaming_elicitation`."""
    return Elicit("What is your name?", NameAnswer)


@server.tool()
def test_streaming_elicitation(answer: Annotated[NameAnswer, Resolve(_ask_for_name)]) -> str:
    """Asks for the caller's name; in the stateless era this must come back as an InputRequiredResult.

    The `server-stateless` scenario checks that the response stream of such a call carries no independent
    JSON-RPC request, only the result asking for input.
    """
    return f"Hello, {answer.name}!"


@server.tool()
async def test_missing_capability(ctx: Context) -> str:
    """Requires the client's `sampling` capability and fails with -32021 when it was not declared (SEP-2575).

    Raised as `MCPError` so it surfaces as a JSON-RPC error (HTTP 400 in the stateless era), not as a tool
    result with isError.
    """
    capabilities = ctx.client_capabilities
    if capabilities is None or capabilities.sampling is None:
        raise MCPError(
            code=MISSING_REQUIRED_CLIENT_CAPABILITY,
            message="This tool requires the client 'sampling' capability",
            data={"requiredCapabilities": {"sampling": {}}},
        )
    return "Client declared the sampling capability."


@server.tool()
def test_mcp_param_header(
    region: Annotated[
        str,
        Field(description="Mirrored into the Mcp-Param-Region header", json_schema_extra={"x-mcp-header": "Region"}),
    ] = "unset",
) -> str:
    """Tests SEP-2243 custom headers: `region` is mirrored into `Mcp-Param-Region`, which the server checks."""
    return f"region={region}"


# --------------------------------------------------------------------------------------------------------------
# Tools: list-changed triggers (stateless era: delivered on subscriptions/listen streams)
# --------------------------------------------------------------------------------------------------------------


def _dynamic() -> str:
    """Briefly registered by the change triggers, so the catalogue really changes."""
    return "dynamic"


@server.tool()
async def test_trigger_tool_change(ctx: Context) -> str:
    """Adds `test_dynamic_tool` (or removes it, if an earlier call added it), then announces the change.

    The change is real, one call adding and the next removing, so an intermediary that re-lists before passing
    the notification on (the portal does) sees a different list and passes it on.
    """
    try:
        server.remove_tool("test_dynamic_tool")
    except ToolError:
        server.add_tool(_dynamic, name="test_dynamic_tool", description="Short-lived dynamic tool.")
    await ctx.notify_tools_changed()
    if ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
        # The context's notify reaches `subscriptions/listen` streams only; a handshake-era session hears
        # of the change on its own stream.
        await ctx.session.send_tool_list_changed()
    return "tool list changed"


@server.tool()
async def test_trigger_prompt_change(ctx: Context) -> str:
    """Adds `test_dynamic_prompt` (or removes it, if an earlier call added it), then announces the change."""
    from mcp.server.mcpserver.prompts import Prompt

    try:
        server.remove_prompt("test_dynamic_prompt")
    except ValueError:
        server.add_prompt(Prompt.from_function(_dynamic, name="test_dynamic_prompt", description="Short-lived prompt."))
    await ctx.notify_prompts_changed()
    if ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
        await ctx.session.send_prompt_list_changed()
    return "prompt list changed"


# --------------------------------------------------------------------------------------------------------------
# Tools: hand-rolled InputRequiredResult flows (SEP-2322), whose wire keys the suite checks
# --------------------------------------------------------------------------------------------------------------

NAME_SCHEMA: dict[str, Any] = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
CONFIRM_SCHEMA: dict[str, Any] = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
COLOR_SCHEMA: dict[str, Any] = {"type": "object", "properties": {"color": {"type": "string"}}, "required": ["color"]}
CONTEXT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"context": {"type": "string"}},
    "required": ["context"],
}


def _elicit_request(message: str, schema: dict[str, Any]) -> ElicitRequest:
    """An `elicitation/create` input request."""
    return ElicitRequest(params=ElicitRequestFormParams(message=message, requested_schema=schema))


def _sample_request(text: str, max_tokens: int) -> CreateMessageRequest:
    """A `sampling/createMessage` input request with one user message."""
    message = SamplingMessage(role="user", content=TextContent(type="text", text=text))
    return CreateMessageRequest(params=CreateMessageRequestParams(messages=[message], max_tokens=max_tokens))


def _answer(responses: InputResponses | None, key: str, expected: type[Any]) -> Any | None:
    """The client's response under `key` if it is there and of the expected result type, else None.

    Anything else (missing, wrong key, wrong shape) counts as "not answered yet", so the tool asks again with a
    fresh InputRequiredResult rather than failing: the suite's missing-input and validate-input scenarios accept
    exactly that, and extra keys are ignored.
    """
    if not responses:
        return None
    value = responses.get(key)
    return value if isinstance(value, expected) else None


def _accepted_field(result: ElicitResult | None, field: str) -> str | None:
    """A string field of an accepted elicitation, or None."""
    if result is None or result.action != "accept" or not result.content:
        return None
    value = result.content.get(field)
    return str(value) if value is not None else None


@server.tool()
async def test_input_required_result_elicitation(ctx: Context) -> str | InputRequiredResult:
    """Round 1: asks for the user's name (key `user_name`). Round 2: greets them."""
    name = _accepted_field(_answer(ctx.input_responses, "user_name", ElicitResult), "name")
    if name is None:
        return InputRequiredResult(input_requests={"user_name": _elicit_request("What is your name?", NAME_SCHEMA)})
    return f"Hello, {name}!"


@server.tool()
async def test_input_required_result_sampling(ctx: Context) -> str | InputRequiredResult:
    """Round 1: asks the client's model a question (key `capital_question`). Round 2: returns its answer."""
    answer = _answer(ctx.input_responses, "capital_question", CreateMessageResult)
    if answer is None:
        request = _sample_request("What is the capital of France?", 100)
        return InputRequiredResult(input_requests={"capital_question": request})
    text = answer.content.text if isinstance(answer.content, TextContent) else f"<{answer.content.type} content>"
    return f"Model said: {text}"


@server.tool()
async def test_input_required_result_list_roots(ctx: Context) -> str | InputRequiredResult:
    """Round 1: asks for the client's roots (key `client_roots`). Round 2: names them."""
    answer = _answer(ctx.input_responses, "client_roots", ListRootsResult)
    if answer is None:
        return InputRequiredResult(input_requests={"client_roots": ListRootsRequest()})
    uris = ", ".join(str(root.uri) for root in answer.roots) or "none"
    return f"Client exposed {len(answer.roots)} root(s): {uris}"


# Opaque state the request-state fixture hands out. The SDK seals every `request_state` (AES-GCM, bound to the
# request and this server) before it leaves, and rejects a tampered echo before the tool runs.
REQUEST_STATE_NONCE = "request-state-nonce"


@server.tool()
async def test_input_required_result_request_state(ctx: Context) -> str | InputRequiredResult:
    """Round 1: asks for confirmation with opaque state. Round 2: "state-ok" once the state came back intact."""
    confirmed = _answer(ctx.input_responses, "confirm", ElicitResult)
    if confirmed is not None and ctx.request_state == REQUEST_STATE_NONCE:
        return "state-ok: confirmation received"
    return InputRequiredResult(
        input_requests={"confirm": _elicit_request("Please confirm", CONFIRM_SCHEMA)},
        request_state=REQUEST_STATE_NONCE,
    )


@server.tool()
async def test_input_required_result_multiple_inputs(ctx: Context) -> str | InputRequiredResult:
    """Round 1: asks for an elicitation, a sample and the roots at once. Round 2: done once all three came back."""
    responses = ctx.input_responses
    if (
        _answer(responses, "user_name", ElicitResult) is not None
        and _answer(responses, "greeting", CreateMessageResult) is not None
        and _answer(responses, "client_roots", ListRootsResult) is not None
    ):
        return "All inputs received."
    requests: dict[str, InputRequest] = {
        "user_name": _elicit_request("What is your name?", NAME_SCHEMA),
        "greeting": _sample_request("Generate a greeting", 50),
        "client_roots": ListRootsRequest(),
    }
    return InputRequiredResult(input_requests=requests, request_state="multiple-inputs")


@server.tool()
async def test_input_required_result_multi_round(ctx: Context) -> str | InputRequiredResult:
    """Three rounds: name (`step1`), then favourite colour (`step2`), then the answer; state carries the round."""
    state: dict[str, Any] = json.loads(ctx.request_state) if ctx.request_state else {"round": 0}
    responses = ctx.input_responses
    if state.get("round") == 1:
        name = _accepted_field(_answer(responses, "step1", ElicitResult), "name")
        if name is not None:
            return InputRequiredResult(
                input_requests={"step2": _elicit_request("Step 2: What is your favorite color?", COLOR_SCHEMA)},
                request_state=json.dumps({"round": 2, "name": name}),
            )
    elif state.get("round") == 2:
        color = _accepted_field(_answer(responses, "step2", ElicitResult), "color")
        if color is not None:
            return f"{state.get('name')} likes {color}."
    # First round, or an answer missing or out of order: start over.
    return InputRequiredResult(
        input_requests={"step1": _elicit_request("Step 1: What is your name?", NAME_SCHEMA)},
        request_state=json.dumps({"round": 1}),
    )


@server.tool()
async def test_input_required_result_tampered_state(ctx: Context) -> str | InputRequiredResult:
    """Round 1: hands out state. Round 2: echoes it; a tampered echo never gets here (the SDK rejects it)."""
    if ctx.request_state is None:
        return InputRequiredResult(
            input_requests={"confirm": _elicit_request("Please confirm", CONFIRM_SCHEMA)},
            request_state="round-1",
        )
    return f"state-ok: {ctx.request_state}"


@server.tool()
async def test_input_required_result_capabilities(ctx: Context) -> InputRequiredResult:
    """Asks only for what the client declared it can do: sampling and/or elicitation."""
    capabilities = ctx.client_capabilities
    requests: dict[str, InputRequest] = {}
    if capabilities is not None and capabilities.sampling is not None:
        requests["sample"] = _sample_request("Say hello", 50)
    if capabilities is not None and capabilities.elicitation is not None:
        requests["ask"] = _elicit_request("What is your name?", NAME_SCHEMA)
    return InputRequiredResult(input_requests=requests, request_state="capability-gated")


# --------------------------------------------------------------------------------------------------------------
# Resources
# --------------------------------------------------------------------------------------------------------------

# URIs a client subscribed to through `resources/subscribe` (handshake era). Kept so unsubscribe has something
# to remove; the fixtures never change on their own, so no update is ever due.
_subscriptions: set[str] = set()


@server.resource("test://static-text", name="static-text", mime_type="text/plain")
def static_text() -> str:
    """A static text resource for testing."""
    return "This is the content of the static text resource."


@server.resource("test://static-binary", name="static-binary", mime_type="image/png")
def static_binary() -> bytes:
    """A static binary resource (a 1x1 PNG) for testing."""
    return PNG_BYTES


@server.resource("test://template/{id}/data", name="template-data", mime_type="application/json")
def template_data(id: str) -> str:
    """A resource template: substitutes `{id}` into the returned JSON."""
    return json.dumps({"id": id, "templateTest": True, "data": f"Data for ID: {id}"})


@server.resource("test://watched-resource", name="watched-resource", mime_type="text/plain")
def watched_resource() -> str:
    """A resource clients can subscribe to."""
    return "Watched resource content"


async def _subscribe(ctx: ServerRequestContext[Any], params: SubscribeRequestParams) -> EmptyResult:
    """Handle `resources/subscribe` (handshake era; the stateless era uses subscriptions/listen)."""
    _subscriptions.add(str(params.uri))
    return EmptyResult()


async def _unsubscribe(ctx: ServerRequestContext[Any], params: UnsubscribeRequestParams) -> EmptyResult:
    """Handle `resources/unsubscribe`."""
    _subscriptions.discard(str(params.uri))
    return EmptyResult()


async def _set_level(ctx: ServerRequestContext[Any], params: SetLevelRequestParams) -> EmptyResult:
    """Accept `logging/setLevel` (handshake era).

    The level is not applied: every fixture logs at `info`, the suite only checks that the request succeeds,
    and the SDK exposes no per-connection handle to keep a level on.
    """
    logger.debug("client set log level to %s", params.level)
    return EmptyResult()


# MCPServer has no public hook for these three handshake-era methods; the low-level server does. Registering
# them also makes the server advertise `resources.subscribe` and `logging` in the handshake era.
server._lowlevel_server.add_request_handler("resources/subscribe", SubscribeRequestParams, _subscribe)
server._lowlevel_server.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, _unsubscribe)
server._lowlevel_server.add_request_handler("logging/setLevel", SetLevelRequestParams, _set_level)


# --------------------------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------------------------


@server.prompt()
def test_simple_prompt() -> list[Message]:
    """A simple prompt without arguments."""
    return [UserMessage(content=TextContent(type="text", text="This is a simple prompt for testing."))]


@server.prompt()
def test_prompt_with_arguments(
    arg1: Annotated[str, Field(description="First test argument")],
    arg2: Annotated[str, Field(description="Second test argument")],
) -> list[Message]:
    """A prompt with two required arguments."""
    text = f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'"
    return [UserMessage(content=TextContent(type="text", text=text))]


@server.prompt()
def test_prompt_with_embedded_resource(
    resourceUri: Annotated[str, Field(description="URI of the resource to embed")],
) -> list[Message]:
    """A prompt that embeds a resource."""
    resource = TextResourceContents(
        uri=resourceUri, mime_type="text/plain", text="Embedded resource content for testing."
    )
    return [
        UserMessage(content=EmbeddedResource(type="resource", resource=resource)),
        UserMessage(content=TextContent(type="text", text="Please process the embedded resource above.")),
    ]


@server.prompt()
def test_prompt_with_image() -> list[Message]:
    """A prompt that includes an image."""
    return [
        UserMessage(content=ImageContent(type="image", data=PNG_BASE64, mime_type="image/png")),
        UserMessage(content=TextContent(type="text", text="Please analyze the image above.")),
    ]


@server.prompt()
async def test_input_required_result_prompt(ctx: Context) -> list[Message] | InputRequiredResult:
    """A prompt that first asks the user what context to use (SEP-2322 on prompts/get)."""
    context = _accepted_field(_answer(ctx.input_responses, "user_context", ElicitResult), "context")
    if context is None:
        request = _elicit_request("What context should the prompt use?", CONTEXT_SCHEMA)
        return InputRequiredResult(input_requests={"user_context": request})
    return [UserMessage(content=TextContent(type="text", text=f"Use the following context: {context}"))]


# --------------------------------------------------------------------------------------------------------------
# Completion
# --------------------------------------------------------------------------------------------------------------

# Candidate values per (reference, argument); completion returns those starting with what was typed so far.
_COMPLETIONS: dict[tuple[str, str], Sequence[str]] = {
    ("test_prompt_with_arguments", "arg1"): ("paris", "park", "party", "test", "testing", "hello"),
    ("test_prompt_with_arguments", "arg2"): ("world", "word", "work", "test"),
    ("test_prompt_with_embedded_resource", "resourceUri"): ("test://static-text", "test://static-binary"),
    ("test://template/{id}/data", "id"): ("1", "2", "3", "42", "123"),
}


@server.completion()
async def complete(
    ref: PromptReference | ResourceTemplateReference,
    argument: CompletionArgument,
    context: CompletionContext | None,
) -> Completion:
    """Suggest values for prompt and resource-template arguments by prefix."""
    key = ref.name if isinstance(ref, PromptReference) else ref.uri
    candidates = _COMPLETIONS.get((key, argument.name), ())
    values = [value for value in candidates if value.startswith(argument.value)]
    return Completion(values=values, total=len(values), has_more=False)


# --------------------------------------------------------------------------------------------------------------
# Running it alone
# --------------------------------------------------------------------------------------------------------------


def create_app(host: str = "127.0.0.1") -> Starlette:
    """The streamable-HTTP app serving `server` at `/mcp`, both protocol eras on the one endpoint.

    Resumable streams (an event store and a short retry interval) are switched on because the suite's SSE
    polling scenarios need them. DNS-rebinding protection (Host/Origin checks) is on whenever `host` is a
    loopback address, which the suite's `dns-rebinding-protection` scenario checks.
    """
    return server.streamable_http_app(
        event_store=ConformanceEventStore(),
        retry_interval=SSE_RETRY_INTERVAL_MS,
        host=host,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Run the fixture server over stdio, or over streamable HTTP on 127.0.0.1 with `--http`."""
    parser = argparse.ArgumentParser(prog="python -m servers.conformance", description=__doc__.splitlines()[0])
    parser.add_argument("--http", action="store_true", help="serve streamable HTTP instead of stdio")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind with --http (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="port to bind with --http (default 8765)")
    parser.add_argument("--log-level", default="warning", help="uvicorn log level with --http (default warning)")
    args = parser.parse_args(argv)
    if not args.http:
        server.run("stdio")
        return
    import uvicorn

    uvicorn.run(create_app(args.host), host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
