"""Tools that send notifications during a call (log messages, progress) or close their stream mid-call (SEP-1699).

Also the handshake-era `logging/setLevel` handler the logging scenarios call first.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
from mcp.server import ServerRequestContext
from mcp.server.mcpserver import Context
from mcp.types import EmptyResult, SetLevelRequestParams

from .core import server

logger = logging.getLogger(__name__)


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


async def _set_level(ctx: ServerRequestContext[Any], params: SetLevelRequestParams) -> EmptyResult:
    """Accept `logging/setLevel` (handshake era).

    The level is not applied: every fixture logs at `info`, the suite only checks that the request succeeds,
    and the SDK exposes no per-connection handle to keep a level on.
    """
    logger.debug("client set log level to %s", params.level)
    return EmptyResult()


# MCPServer has no public hook for this handshake-era method; the low-level server does. Registering it also
# makes the server advertise `logging` in the handshake era.
server._lowlevel_server.add_request_handler("logging/setLevel", SetLevelRequestParams, _set_level)
