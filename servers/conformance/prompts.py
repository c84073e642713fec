"""The `test_*` prompts, and argument completion for them and for the resource template."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.prompts.base import Message, UserMessage
from mcp.types import (
    Completion,
    CompletionArgument,
    CompletionContext,
    ElicitResult,
    EmbeddedResource,
    ImageContent,
    InputRequiredResult,
    PromptReference,
    ResourceTemplateReference,
    TextContent,
    TextResourceContents,
)
from pydantic import Field

from .content import PNG_BASE64
from .core import server
from .input_required import CONTEXT_SCHEMA, accepted_field, answer_to, elicit_request


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
    context = accepted_field(answer_to(ctx.input_responses, "user_context", ElicitResult), "context")
    if context is None:
        request = elicit_request("What context should the prompt use?", CONTEXT_SCHEMA)
        return InputRequiredResult(input_requests={"user_context": request})
    return [UserMessage(content=TextContent(type="text", text=f"Use the following context: {context}"))]


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
