"""Tools that really change the tool or prompt catalogue and announce it (`notifications/*/list_changed`).

In the stateless era the announcement is delivered on `subscriptions/listen` streams; a handshake-era session
hears of it on its own stream.
"""

from __future__ import annotations

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from .core import server


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
