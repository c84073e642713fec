"""Tools with hand-rolled `InputRequiredResult` flows (SEP-2322), whose exact wire keys the suite checks.

Their retries arrive as `input_responses` / `request_state`. The helpers here are shared with the
`test_input_required_result_prompt` prompt.
"""

from __future__ import annotations

import json
from typing import Any

from mcp.server.mcpserver import Context
from mcp.types import (
    CreateMessageRequest,
    CreateMessageRequestParams,
    CreateMessageResult,
    ElicitRequest,
    ElicitRequestFormParams,
    ElicitResult,
    InputRequest,
    InputRequiredResult,
    InputResponses,
    ListRootsRequest,
    ListRootsResult,
    SamplingMessage,
    TextContent,
)

from .core import server

NAME_SCHEMA: dict[str, Any] = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
CONFIRM_SCHEMA: dict[str, Any] = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
COLOR_SCHEMA: dict[str, Any] = {"type": "object", "properties": {"color": {"type": "string"}}, "required": ["color"]}
CONTEXT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"context": {"type": "string"}},
    "required": ["context"],
}


def elicit_request(message: str, schema: dict[str, Any]) -> ElicitRequest:
    """An `elicitation/create` input request."""
    return ElicitRequest(params=ElicitRequestFormParams(message=message, requested_schema=schema))


def sample_request(text: str, max_tokens: int) -> CreateMessageRequest:
    """A `sampling/createMessage` input request with one user message."""
    message = SamplingMessage(role="user", content=TextContent(type="text", text=text))
    return CreateMessageRequest(params=CreateMessageRequestParams(messages=[message], max_tokens=max_tokens))


def answer_to(responses: InputResponses | None, key: str, expected: type[Any]) -> Any | None:
    """The client's response under `key` if it is there and of the expected result type, else None.

    Anything else (missing, wrong key, wrong shape) counts as "not answered yet", so the tool asks again with a
    fresh InputRequiredResult rather than failing: the suite's missing-input and validate-input scenarios accept
    exactly that, and extra keys are ignored.
    """
    if not responses:
        return None
    value = responses.get(key)
    return value if isinstance(value, expected) else None


def accepted_field(result: ElicitResult | None, field: str) -> str | None:
    """A string field of an accepted elicitation, or None."""
    if result is None or result.action != "accept" or not result.content:
        return None
    value = result.content.get(field)
    return str(value) if value is not None else None


@server.tool()
async def test_input_required_result_elicitation(ctx: Context) -> str | InputRequiredResult:
    """Round 1: asks for the user's name (key `user_name`). Round 2: greets them."""
    name = accepted_field(answer_to(ctx.input_responses, "user_name", ElicitResult), "name")
    if name is None:
        return InputRequiredResult(input_requests={"user_name": elicit_request("What is your name?", NAME_SCHEMA)})
    return f"Hello, {name}!"


@server.tool()
async def test_input_required_result_sampling(ctx: Context) -> str | InputRequiredResult:
    """Round 1: asks the client's model a question (key `capital_question`). Round 2: returns its answer."""
    answer = answer_to(ctx.input_responses, "capital_question", CreateMessageResult)
    if answer is None:
        request = sample_request("What is the capital of France?", 100)
        return InputRequiredResult(input_requests={"capital_question": request})
    text = answer.content.text if isinstance(answer.content, TextContent) else f"<{answer.content.type} content>"
    return f"Model said: {text}"


@server.tool()
async def test_input_required_result_list_roots(ctx: Context) -> str | InputRequiredResult:
    """Round 1: asks for the client's roots (key `client_roots`). Round 2: names them."""
    answer = answer_to(ctx.input_responses, "client_roots", ListRootsResult)
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
    confirmed = answer_to(ctx.input_responses, "confirm", ElicitResult)
    if confirmed is not None and ctx.request_state == REQUEST_STATE_NONCE:
        return "state-ok: confirmation received"
    return InputRequiredResult(
        input_requests={"confirm": elicit_request("Please confirm", CONFIRM_SCHEMA)},
        request_state=REQUEST_STATE_NONCE,
    )


@server.tool()
async def test_input_required_result_multiple_inputs(ctx: Context) -> str | InputRequiredResult:
    """Round 1: asks for an elicitation, a sample and the roots at once. Round 2: done once all three came back."""
    responses = ctx.input_responses
    if (
        answer_to(responses, "user_name", ElicitResult) is not None
        and answer_to(responses, "greeting", CreateMessageResult) is not None
        and answer_to(responses, "client_roots", ListRootsResult) is not None
    ):
        return "All inputs received."
    requests: dict[str, InputRequest] = {
        "user_name": elicit_request("What is your name?", NAME_SCHEMA),
        "greeting": sample_request("Generate a greeting", 50),
        "client_roots": ListRootsRequest(),
    }
    return InputRequiredResult(input_requests=requests, request_state="multiple-inputs")


@server.tool()
async def test_input_required_result_multi_round(ctx: Context) -> str | InputRequiredResult:
    """Three rounds: name (`step1`), then favourite colour (`step2`), then the answer; state carries the round."""
    state: dict[str, Any] = json.loads(ctx.request_state) if ctx.request_state else {"round": 0}
    responses = ctx.input_responses
    if state.get("round") == 1:
        name = accepted_field(answer_to(responses, "step1", ElicitResult), "name")
        if name is not None:
            return InputRequiredResult(
                input_requests={"step2": elicit_request("Step 2: What is your favorite color?", COLOR_SCHEMA)},
                request_state=json.dumps({"round": 2, "name": name}),
            )
    elif state.get("round") == 2:
        color = accepted_field(answer_to(responses, "step2", ElicitResult), "color")
        if color is not None:
            return f"{state.get('name')} likes {color}."
    # First round, or an answer missing or out of order: start over.
    return InputRequiredResult(
        input_requests={"step1": elicit_request("Step 1: What is your name?", NAME_SCHEMA)},
        request_state=json.dumps({"round": 1}),
    )


@server.tool()
async def test_input_required_result_tampered_state(ctx: Context) -> str | InputRequiredResult:
    """Round 1: hands out state. Round 2: echoes it; a tampered echo never gets here (the SDK rejects it)."""
    if ctx.request_state is None:
        return InputRequiredResult(
            input_requests={"confirm": elicit_request("Please confirm", CONFIRM_SCHEMA)},
            request_state="round-1",
        )
    return f"state-ok: {ctx.request_state}"


@server.tool()
async def test_input_required_result_capabilities(ctx: Context) -> InputRequiredResult:
    """Asks only for what the client declared it can do: sampling and/or elicitation."""
    capabilities = ctx.client_capabilities
    requests: dict[str, InputRequest] = {}
    if capabilities is not None and capabilities.sampling is not None:
        requests["sample"] = sample_request("Say hello", 50)
    if capabilities is not None and capabilities.elicitation is not None:
        requests["ask"] = elicit_request("What is your name?", NAME_SCHEMA)
    return InputRequiredResult(input_requests=requests, request_state="capability-gated")
