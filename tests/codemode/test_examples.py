"""The programs in examples/codemode/, run against the real demo servers (in-process, through the MCP client)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from codemode_testing import REPO_ROOT
from mcp import Client

from codemode import CodeMode, Limits, Sandbox
from servers import clock, docs, notes
from servers.docs_index import DocsIndex
from servers.notes_store import NoteStore

EXAMPLES = REPO_ROOT / "examples" / "codemode"


class DemoServers:
    """MCP clients on the three demo servers, and a `call_tool` that goes through them."""

    def __init__(self, clients: dict[str, Client], catalog: dict[str, list[dict[str, Any]]]) -> None:
        self.clients = clients
        self.catalog = catalog
        self.calls: list[str] = []

    async def call_tool(self, server: str, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(f"{server}.{tool}")
        result = await self.clients[server].call_tool(tool, arguments)
        return result.model_dump(mode="json", by_alias=True, exclude_none=True)


@asynccontextmanager
async def open_demo_servers(data: Path) -> AsyncIterator[DemoServers]:
    """Clients on fresh demo servers; entered in the test's own task, as the MCP client's task groups require."""
    built = {
        "notes": notes.build_server(NoteStore(data / "notes.db")),
        "docs": docs.build_server(DocsIndex(REPO_ROOT / "examples" / "docs")),
        "clock": clock.build_server(),
    }
    async with AsyncExitStack() as stack:
        clients = {name: await stack.enter_async_context(Client(server)) for name, server in built.items()}
        catalog = {}
        for name, client in clients.items():
            listed = await client.list_tools()
            catalog[name] = [tool.model_dump(mode="json", by_alias=True, exclude_none=True) for tool in listed.tools]
        yield DemoServers(clients, catalog)


def _examples() -> list[Path]:
    return sorted(EXAMPLES.glob("*.py"))


def test_there_are_examples() -> None:
    assert len(_examples()) >= 4


@pytest.mark.parametrize("path", _examples(), ids=lambda path: path.stem)
async def test_example_runs_against_the_demo_servers(sandbox: Sandbox, tmp_path: Path, path: Path) -> None:
    async with open_demo_servers(tmp_path) as demo:
        codemode = CodeMode(demo.catalog, demo.call_tool, limits=Limits(timeout=20), sandbox=sandbox)
        result = await codemode.execute(path.read_text())
    assert result.ok, f"{path.name}: {result.error}\n{result.output}"
    assert result.calls
    CHECKS[path.stem](result.value, result.output, demo.calls)


def _meeting_planner(value: Any, output: str, calls: list[str]) -> None:
    assert calls == ["clock.convert_time"] * 5
    assert value["Asia/Tokyo"] == "Monday 22:00 JST"  # 15:00 CEST (UTC+2) on Monday 30 March 2026
    assert value["America/New_York"] == "Monday 09:00 EDT"
    assert "Asia/Tokyo" in output and "outside office hours" in output


def _docs_answer(value: Any, output: str, calls: list[str]) -> None:
    assert calls[0] == "docs.search_docs" and calls.count("docs.read_doc") == len(value["sources"])
    assert "guides/deploy.md" in value["sources"] and value["lines"] >= 1
    assert "guides/deploy.md:" in output


def _runbook_to_note(value: Any, output: str, calls: list[str]) -> None:
    assert sorted(calls[:2]) == ["clock.current_time", "docs.read_doc"]
    assert calls[2:] == ["notes.create_note", "notes.get_note"]
    assert value == ["on-call", "ops"]  # the server normalized the tags
    assert "3 escalation rules" in output


def _notes_cleanup(value: Any, output: str, calls: list[str]) -> None:
    # The four creates ran concurrently, so which duplicate got the higher id (and was removed) varies.
    assert len(value["removed"]) == 1 and value["removed"][0] in (1, 2, 3, 4)
    assert sorted([*value["removed"], *value["to_triage"]]) == [1, 2, 3, 4]
    assert "duplicate gone: notes.get_note failed:" in output
    assert calls.count("notes.delete_note") == 1


CHECKS = {
    "meeting_planner": _meeting_planner,
    "docs_answer": _docs_answer,
    "runbook_to_note": _runbook_to_note,
    "notes_cleanup": _notes_cleanup,
}


async def test_search_finds_the_demo_tools_by_their_real_descriptions(tmp_path: Path) -> None:
    async with open_demo_servers(tmp_path) as demo:
        codemode = CodeMode(demo.catalog, demo.call_tool)
    assert [hit.qualified for hit in codemode.search("what time is it in Tokyo", 1).hits] == ["clock.current_time"]
    assert [hit.qualified for hit in codemode.search("find documents about deploys", 1).hits] == ["docs.search_docs"]
    assert [hit.qualified for hit in codemode.search("change a note's tags", 1).hits] == ["notes.update_note"]
    assert json.dumps(codemode.search("", stubs=["notes"]).to_dict())  # serializable as structured content
