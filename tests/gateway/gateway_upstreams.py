"""The upstream MCP servers the gateway tests put behind the portal.

`build_upstream(name)` makes one SDK `MCPServer`; the same server runs three ways:
over Streamable HTTP in the test's own event loop (`remote`), as a subprocess on
stdio (`python gateway_upstreams.py NAME`), and hosted in the portal's process
(`gateway_hosted`, which calls `build_upstream("hosted")`).

Its tools let a test observe the portal from the upstream's side, through the
portal itself, so that one test drives every kind of upstream the same way:

- `whoami` answers the server's name: which upstream a call was routed to.
- `steps(n)` reports `n` progress notifications before it answers.
- `wait(key)` reports one progress notification once it runs, then waits for ever
  (until cancelled); `was_cancelled(key, within)` answers whether that call was
  cancelled, waiting up to `within` seconds for it.
- `grow(tool)` adds a tool and announces the change on both eras' channels.
- `pid` is the serving process, for tests that kill it.
"""

from __future__ import annotations

import asyncio
import os
import sys

from mcp.server.mcpserver import Context, MCPServer

__all__ = ["build_upstream"]


def build_upstream(name: str) -> MCPServer:
    server = MCPServer(name, instructions=f"The {name} test upstream.")
    cancelled: dict[str, asyncio.Event] = {}

    def cancel_event(key: str) -> asyncio.Event:
        return cancelled.setdefault(key, asyncio.Event())

    @server.tool()
    def whoami() -> str:
        """The name of the upstream that answered."""
        return name

    @server.tool(title="Add")
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    @server.tool()
    def secret() -> str:
        """A tool the tests hide with allow and deny lists."""
        return "hidden"

    @server.tool()
    async def steps(n: int, ctx: Context) -> str:
        """Report `n` progress notifications, then answer."""
        for i in range(n):
            await ctx.report_progress(i + 1, n, f"step {i + 1}")
        return f"{n} steps"

    @server.tool()
    async def wait(key: str, ctx: Context) -> str:
        """Announce the start with one progress notification, then wait until cancelled."""
        event = cancel_event(key)
        await ctx.report_progress(0, None, "started")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            event.set()
            raise
        return "never"

    @server.tool()
    async def was_cancelled(key: str, within: float) -> bool:
        """Whether `wait(key)` was cancelled, waiting up to `within` seconds for it to be."""
        try:
            async with asyncio.timeout(within):
                await cancel_event(key).wait()
        except TimeoutError:
            return False
        return True

    @server.tool()
    async def grow(tool: str, ctx: Context) -> str:
        """Add a tool called `tool` and announce that the tool list changed."""

        def grown() -> str:
            return f"{tool} from {name}"

        server.add_tool(grown, name=tool, description=f"Grown on {name}.")
        if ctx.request_context.protocol_version >= "2026-07-28":
            await ctx.notify_tools_changed()  # to the `subscriptions/listen` streams
        else:
            await ctx.session.send_tool_list_changed()  # on the session's GET stream, or stdout
        return tool

    @server.tool()
    def pid() -> int:
        """The process serving this upstream."""
        return os.getpid()

    @server.resource("memo://1", name="first-memo", mime_type="text/plain")
    def first_memo() -> str:
        return f"memo 1 of {name}"

    @server.resource("memo://{memo_id}/text", name="memo", mime_type="text/plain")
    def memo(memo_id: str) -> str:
        return f"memo {memo_id} of {name}"

    @server.prompt()
    def greet(who: str) -> str:
        """Greet someone."""
        return f"{name} greets {who}"

    return server


if __name__ == "__main__":
    build_upstream(sys.argv[1] if len(sys.argv) > 1 else "stdio").run("stdio")
