"""The MCP server the connector tests talk to, over HTTP (in process) and over stdio (as a script).

Run as a script it serves stdio: `python upstream_demo_server.py [--legacy-only]`; with
`--legacy-only` it speaks only the handshake era, like servers built on older SDKs.
"""

from __future__ import annotations

import asyncio
import os
import sys
import warnings
from dataclasses import dataclass, field
from typing import Annotated

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.subscriptions import ListenHandler
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel, Field

__all__ = ["DemoState", "Sum", "build_server"]


@dataclass
class DemoState:
    """What an in-process test can observe of the server."""

    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)


class Sum(BaseModel):
    total: int
    terms: list[int]


def build_server(state: DemoState | None = None) -> MCPServer:
    state = state or DemoState()
    server = MCPServer("demo", version="1.0.0", instructions="A server for the connector tests.")

    @server.tool()
    async def add(a: int, b: int) -> Sum:
        """Add two numbers."""
        return Sum(total=a + b, terms=[a, b])

    @server.tool()
    async def count(steps: int, ctx: Context) -> str:
        """Report progress `steps` times, then finish."""
        for step in range(1, steps + 1):
            await ctx.report_progress(step, steps, f"step {step}")
        return f"counted to {steps}"

    @server.tool()
    async def wait_for_cancel(ctx: Context) -> str:
        """Say it is waiting (as progress), then wait until released or cancelled."""
        await ctx.report_progress(0, message="waiting")
        try:
            await state.release.wait()
        except BaseException:
            state.cancelled.set()
            print("tool wait_for_cancel was cancelled", file=sys.stderr, flush=True)
            raise
        return "released"

    @server.tool()
    async def wait_silently() -> str:
        """Wait until released or cancelled, without a word (so no response has begun)."""
        try:
            await state.release.wait()
        except BaseException:
            state.cancelled.set()
            print("tool wait_silently was cancelled", file=sys.stderr, flush=True)
            raise
        return "released"

    @server.tool()
    async def chatty(ctx: Context) -> str:
        """Log a line about this request (in 2026 only when the request asked for logs)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MCPDeprecationWarning)  # logging: deprecated in 2026, still served
            await ctx.info("working on it")
        return "done"

    @server.tool()
    async def grow(name: str, ctx: Context) -> str:
        """Register a new tool called `name` and announce the change."""
        server.add_tool(lambda: name, name=name, description="grown at run time")
        if ctx.request_context.protocol_version in MODERN_PROTOCOL_VERSIONS:
            await ctx.notify_tools_changed()
        else:
            await ctx.request_context.session.send_tool_list_changed()
        return f"grew {name}"

    @server.tool()
    async def ask_client(ctx: Context) -> str:
        """Ping the client, then ask it for its roots (handshake era: the portal must refuse)."""
        session = ctx.request_context.session
        await session.send_ping()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", MCPDeprecationWarning)  # roots: deprecated in 2026, still 2025
                await session.list_roots()
        except MCPError as exc:
            return f"pinged; roots refused with {exc.error.code}"
        return "pinged; roots answered"

    @server.tool()
    async def has_env(name: str) -> bool:
        """Whether the process sees environment variable `name`."""
        return name in os.environ

    @server.tool()
    async def drop_streams(ctx: Context) -> str:
        """End the client's notification stream: the GET stream (2025) or every listen stream (2026)."""
        if ctx.request_context.protocol_version in MODERN_PROTOCOL_VERSIONS:
            entry = server._lowlevel_server.get_request_handler("subscriptions/listen")
            assert entry is not None and isinstance(entry.handler, ListenHandler)
            entry.handler.close()
        else:
            close = ctx.request_context.close_standalone_sse_stream
            assert close is not None, "the handshake era has a GET stream only over HTTP"
            await close()
        return "dropped"

    @server.tool()
    async def exit_now(code: int) -> str:
        """End the process at once (stdio only)."""
        os._exit(code)

    @server.tool()
    async def poll_me(ctx: Context) -> str:
        """Close this request's SSE stream mid-call, so the client must resume it."""
        close = ctx.request_context.close_sse_stream
        assert close is not None, "needs the handshake era over HTTP with an event store"
        await close()
        await anyio.sleep(0.05)
        await ctx.report_progress(1, 1, "after the break")
        return "resumed"

    @server.tool()
    async def regional(region: Annotated[str, Field(json_schema_extra={"x-mcp-header": "Region"})], size: int) -> str:
        """A tool whose `region` argument is mirrored into an Mcp-Param-Region header in 2026."""
        return f"{size} in {region}"

    @server.resource("demo://greeting", mime_type="text/plain")
    def greeting() -> str:
        return "hello from demo"

    @server.prompt()
    def greet(name: str) -> str:
        """Greet someone."""
        return f"Please greet {name} warmly."

    return server


async def _serve_legacy_stdio(server: MCPServer) -> None:
    from mcp.server.runner import serve_loop
    from mcp.server.stdio import stdio_server

    low = server._lowlevel_server
    async with stdio_server() as (read_stream, write_stream), low.lifespan(low) as state:
        await serve_loop(
            low, read_stream, write_stream, lifespan_state=state, init_options=low.create_initialization_options()
        )


if __name__ == "__main__":
    demo = build_server()
    if "--legacy-only" in sys.argv:
        anyio.run(_serve_legacy_stdio, demo)
    else:
        demo.run("stdio")
