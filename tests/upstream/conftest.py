"""Fixtures for the connector tests; the helpers they use live in `upstream_support.py`."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from upstream_demo_server import DemoState, build_server
from upstream_support import Demo, Recorder, serve

DemoFactory = Callable[..., Awaitable[Demo]]


@pytest.fixture
async def start_demo() -> AsyncIterator[DemoFactory]:
    """Start demo servers: `await start_demo(event_store=..., retry_interval=...)`."""
    stack: list[Any] = []

    async def start(**app_options: Any) -> Demo:
        state = DemoState()
        recorder = Recorder(build_server(state).streamable_http_app(**app_options))
        context = serve(recorder)
        running = await context.__aenter__()
        stack.append(context)
        return Demo(state=state, recorder=recorder, running=running)

    yield start
    for context in reversed(stack):
        await context.__aexit__(None, None, None)


@pytest.fixture
async def demo(start_demo: DemoFactory) -> Demo:
    return await start_demo()


@pytest.fixture
async def closing(start_demo: DemoFactory) -> AsyncIterator[Callable[[Any], Any]]:
    """`closing(connector)` closes it at the end of the test, before the servers stop."""
    connectors: list[Any] = []

    def register(connector: Any) -> Any:
        connectors.append(connector)
        return connector

    yield register
    for connector in connectors:
        await connector.close()
