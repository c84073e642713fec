"""Tools that need something from the client: sampling, elicitation, a declared capability, a mirrored header.

Sampling and elicitation go through the SDK's resolvers, so the same tool sends a server-to-client request
mid-call in the handshake era (2025-11-25) and returns an `InputRequiredResult` in the stateless era
(2026-07-28). The SEP-1034/SEP-1330 elicitations send hand-written schemas and are handshake-era only.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from mcp.server.mcpserver import Context, Elicit, ElicitationResult, Resolve, Sample
from mcp.shared.exceptions import MCPError
from mcp.types import (
    MISSING_REQUIRED_CLIENT_CAPABILITY,
    CreateMessageResult,
    ElicitResult,
    SamplingMessage,
    TextContent,
)
from pydantic import BaseModel, Field

from .core import server


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
