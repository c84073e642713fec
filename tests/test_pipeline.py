"""The request pipeline runs its stages in order around the forwarder."""

from __future__ import annotations

from typing import Any

import pytest

from portal.errors import InvalidParams
from portal.pipeline import Endpoint, Handler, McpRequest, Pipeline


def _request() -> McpRequest:
    return McpRequest(Endpoint("aggregated", "/mcp"), "tools/call", {"name": "x"}, 1, "2026-07-28")


class Recorder:
    def __init__(self, name: str, seen: list[str]) -> None:
        self.name, self.seen = name, seen

    async def __call__(self, request: McpRequest, call_next: Handler) -> dict[str, Any]:
        self.seen.append(f"{self.name}>")
        result = await call_next(request)
        self.seen.append(f"<{self.name}")
        return {**result, self.name: True}


async def test_stages_run_in_order_around_the_endpoint() -> None:
    seen: list[str] = []

    async def endpoint(request: McpRequest) -> dict[str, Any]:
        seen.append("forward")
        return {}

    pipeline = Pipeline([Recorder("a", seen), Recorder("b", seen)], endpoint)
    assert await pipeline(_request()) == {"a": True, "b": True}
    assert seen == ["a>", "b>", "forward", "<b", "<a"]


async def test_a_stage_that_refuses_stops_the_request_before_it_is_forwarded() -> None:
    forwarded = False

    async def refuse(request: McpRequest, call_next: Handler) -> dict[str, Any]:
        raise InvalidParams("no")

    async def endpoint(request: McpRequest) -> dict[str, Any]:
        nonlocal forwarded
        forwarded = True
        return {}

    with pytest.raises(InvalidParams):
        await Pipeline([refuse], endpoint)(_request())
    assert not forwarded
