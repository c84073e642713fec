"""Helpers for the Code Mode tests: the schema corpus and a recording `call_tool`.

(A module of its own, not conftest, so test modules import it under a name no other test directory uses.)
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

SCHEMAS = Path(__file__).resolve().parent / "schemas"
Catalog = dict[str, list[dict[str, Any]]]
Handler = Callable[[dict[str, Any]], Awaitable[Mapping[str, Any]] | Mapping[str, Any]]


def load_catalog(*names: str) -> Catalog:
    """The corpus files named (all of them when none is), merged into one catalog."""
    files = [SCHEMAS / f"{name}.json" for name in names] if names else sorted(SCHEMAS.glob("*.json"))
    catalog: Catalog = {}
    for path in files:
        data = json.loads(path.read_text())
        if "catalog" in data:
            catalog.update(data["catalog"])
        else:
            catalog[data["server"]] = data["tools"]
    return catalog


def text_result(text: str, *, error: bool = False) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}], "isError": error}


def structured_result(value: Mapping[str, Any]) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": json.dumps(value)}], "structuredContent": dict(value)}


@dataclass
class FakeTools:
    """A `call_tool` that records every call and answers from per-tool handlers (or echoes the arguments)."""

    handlers: dict[str, Handler] = field(default_factory=dict)
    calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    def on(self, qualified: str, handler: Handler) -> None:
        """Answer calls of `server.tool` with `handler(arguments)` (sync or async)."""
        self.handlers[qualified] = handler

    async def __call__(self, server: str, tool: str, arguments: dict[str, Any]) -> Mapping[str, Any]:
        self.calls.append((server, tool, arguments))
        handler = self.handlers.get(f"{server}.{tool}")
        if handler is None:
            return text_result(json.dumps(arguments, sort_keys=True))
        answer = handler(arguments)
        if asyncio.iscoroutine(answer) or isinstance(answer, Awaitable):
            answer = await answer
        return answer
