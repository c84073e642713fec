"""Stopping the uvicorn servers tests start: cleanly, or as a crashed process would.

At the root of `tests/`, whose folder pytest puts on `sys.path` for `tests/conftest.py`, so every test
folder's helpers can import it.
"""

from __future__ import annotations

import asyncio

import uvicorn

__all__ = ["crash", "stop"]


def crash(server: uvicorn.Server) -> None:
    """Stop listening and reset every open connection, as a crashed server process would."""
    for listener in server.servers:
        listener.close()
    for connection in list(server.server_state.connections):
        transport = getattr(connection, "transport", None)
        if transport is not None:
            transport.abort()


async def stop(server: uvicorn.Server, task: asyncio.Task[None]) -> None:
    """Shut the server down and wait for it, unless it has already ended."""
    if task.done():
        return
    server.should_exit = True
    await task
