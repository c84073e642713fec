"""The notes server, driven through the MCP client in both protocol eras."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError
from mcp.types import TextContent, TextResourceContents
from servers_testing import error_text, ok

from servers import notes as notes_module
from servers.notes import build_server
from servers.notes_store import NoteStore

TOOLS = {"create_note", "get_note", "search_notes", "update_note", "delete_note"}


Connect = Callable[[], Client]


@pytest.fixture
def connect(tmp_path: Path, era: str) -> Connect:
    """Opens a client on a notes server over a fresh database, in the test's era.

    Tests enter it themselves (`async with connect() as client`): the SDK's task
    groups must be entered and left in the same task.
    """
    server = build_server(NoteStore(tmp_path / "notes.db"))
    return lambda: Client(server, mode=era)


async def create(client: Client, title: str, body: str, tags: list[str] | None = None) -> dict[str, Any]:
    return ok(await client.call_tool("create_note", {"title": title, "body": body, "tags": tags or []}))


async def search(client: Client, query: str, **extra: Any) -> list[dict[str, Any]]:
    hits: list[dict[str, Any]] = ok(await client.call_tool("search_notes", {"query": query, **extra}))["hits"]
    return hits


async def test_every_tool_has_described_inputs_an_output_schema_and_annotations(connect: Connect) -> None:
    async with connect() as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert set(tools) == TOOLS
        for tool in tools.values():
            assert tool.description
            assert tool.output_schema is not None and tool.output_schema["type"] == "object"
            assert tool.annotations is not None and tool.annotations.open_world_hint is False
            for name, prop in tool.input_schema.get("properties", {}).items():
                assert prop.get("description"), f"{tool.name}.{name} has no description"
        assert tools["create_note"].input_schema["required"] == ["title", "body"]
        note_schema = tools["get_note"].output_schema
        assert note_schema is not None
        assert set(note_schema["properties"]) >= {"id", "title", "body", "tags", "uri"}


async def test_reads_are_read_only_and_delete_and_update_are_destructive(connect: Connect) -> None:
    async with connect() as client:
        tools = (await client.list_tools()).tools
    hints = {tool.name: tool.annotations for tool in tools if tool.annotations is not None}
    assert set(hints) == TOOLS
    for name in ("get_note", "search_notes"):
        assert hints[name].read_only_hint is True
    for name in ("create_note", "update_note", "delete_note"):
        assert hints[name].read_only_hint is False
    assert hints["delete_note"].destructive_hint is True and hints["delete_note"].idempotent_hint is True
    assert hints["update_note"].destructive_hint is True and hints["update_note"].idempotent_hint is True
    assert hints["create_note"].destructive_hint is False and hints["create_note"].idempotent_hint is False


async def test_a_created_note_comes_back_from_get_with_normalized_tags(connect: Connect) -> None:
    async with connect() as client:
        created = await create(client, "  Deploy checklist ", "Steps to ship **safely**.", ["Ops", "On Call", "ops"])
        assert created["title"] == "Deploy checklist"
        assert created["tags"] == ["ops", "on-call"]
        assert created["uri"] == f"note://{created['id']}"
        assert created["created_at"] == created["updated_at"] and created["created_at"].endswith("Z")
        assert ok(await client.call_tool("get_note", {"id": created["id"]})) == created


async def test_search_ranks_a_title_match_above_passing_mentions(connect: Connect) -> None:
    async with connect() as client:
        await create(client, "Lunch ideas", "We could deploy a pizza oven on Fridays.")
        await create(client, "Standup", "Nothing about releases here.")
        best = await create(client, "Deploy checklist", "Run the canary, then deploy everywhere.", ["deploy"])
        await create(client, "Retro", "The deploy was slow; nobody read the deploy docs.")
        hits = await search(client, "deploy")
        assert hits[0]["id"] == best["id"]
        assert len(hits) == 3
        assert hits[0]["score"] > hits[-1]["score"] > 0
        assert "deploy" in hits[0]["snippet"].lower()


async def test_search_finds_other_forms_of_a_word(connect: Connect) -> None:
    async with connect() as client:
        note = await create(client, "Release notes", "We are deploying the billing service on Tuesday.")
        assert [hit["id"] for hit in await search(client, "deploy")] == [note["id"]]


async def test_search_ranks_notes_matching_more_words_higher(connect: Connect) -> None:
    async with connect() as client:
        one = await create(client, "Postgres", "Postgres vacuum settings.")
        both = await create(client, "Failover", "Postgres failover drill, replica promoted.")
        hits = await search(client, "postgres failover")
        assert [hit["id"] for hit in hits] == [both["id"], one["id"]]


async def test_search_filters_by_tag_and_limits_results(connect: Connect) -> None:
    async with connect() as client:
        for n in range(5):
            await create(client, f"Incident {n}", "Database incident review.", ["incident"])
        other = await create(client, "Database tuning", "Database settings.", ["db"])
        tagged = await search(client, "database", tag="Incident", limit=3)
        assert len(tagged) == 3 and all(hit["tags"] == ["incident"] for hit in tagged)
        result = ok(await client.call_tool("search_notes", {"query": "database", "tag": "DB"}))
        assert result["tag"] == "db" and [hit["id"] for hit in result["hits"]] == [other["id"]]


async def test_an_empty_query_lists_the_most_recently_updated_notes_first(connect: Connect) -> None:
    async with connect() as client:
        first = await create(client, "First", "one")
        second = await create(client, "Second", "two")
        ok(await client.call_tool("update_note", {"id": first["id"], "body": "one, revised"}))
        assert [hit["id"] for hit in await search(client, "")] == [first["id"], second["id"]]


@pytest.mark.parametrize(
    "query", ['"unbalanced', "NEAR(a b", "title:x OR", "*", "a AND OR NOT", "'; DROP TABLE notes;--"]
)
async def test_search_reads_query_syntax_as_plain_words(connect: Connect, query: str) -> None:
    async with connect() as client:
        await create(client, "Drop table", "Never drop a table in production.")
        result = await client.call_tool("search_notes", {"query": query})
        assert not result.is_error
        assert ok(await client.call_tool("search_notes", {"query": ""}))["hits"]


async def test_the_like_fallback_searches_ranks_and_filters_too(tmp_path: Path, era: str) -> None:
    server = build_server(NoteStore(tmp_path / "like.db", fts=False))
    async with Client(server, mode=era) as client:
        await create(client, "Lunch", "We could deploy a pizza.", ["food"])
        best = await create(client, "Deploy checklist", "Deployment steps for the API.", ["ops"])
        result = ok(await client.call_tool("search_notes", {"query": "deploying"}))
        assert result["engine"] == "like"
        assert result["hits"][0]["id"] == best["id"]
        assert len(result["hits"]) == 2
        assert [hit["id"] for hit in await search(client, "deploy", tag="ops")] == [best["id"]]


async def test_concurrent_writes_from_a_cold_start_all_land(connect: Connect) -> None:
    # The first calls race to create the schema on worker threads; every note must still be stored once.
    async with connect() as client:
        created = await asyncio.gather(*(create(client, f"Note {n}", f"parallel body {n}") for n in range(20)))
        assert len({note["id"] for note in created}) == 20
        assert len(await search(client, "parallel", limit=50)) == 20


async def test_update_changes_only_the_fields_given(connect: Connect) -> None:
    async with connect() as client:
        note = await create(client, "Draft", "Old body", ["draft"])
        updated = ok(await client.call_tool("update_note", {"id": note["id"], "body": "New body"}))
        assert (updated["title"], updated["body"], updated["tags"]) == ("Draft", "New body", ["draft"])
        assert updated["updated_at"] >= note["updated_at"] and updated["created_at"] == note["created_at"]
        retagged = ok(await client.call_tool("update_note", {"id": note["id"], "tags": ["Final"]}))
        assert retagged["tags"] == ["final"] and retagged["body"] == "New body"


async def test_updated_words_and_tags_are_searchable_and_old_ones_are_not(connect: Connect) -> None:
    async with connect() as client:
        note = await create(client, "Plan", "kubernetes migration", ["infra"])
        ok(await client.call_tool("update_note", {"id": note["id"], "body": "terraform cleanup", "tags": ["cleanup"]}))
        assert await search(client, "kubernetes") == []
        assert [hit["id"] for hit in await search(client, "terraform", tag="cleanup")] == [note["id"]]
        assert await search(client, "terraform", tag="infra") == []


async def test_an_update_without_any_field_is_a_tool_error(connect: Connect) -> None:
    async with connect() as client:
        note = await create(client, "Note", "body")
        assert "nothing to update" in error_text(await client.call_tool("update_note", {"id": note["id"]}))


async def test_a_deleted_note_is_gone_from_get_search_and_resources(connect: Connect) -> None:
    async with connect() as client:
        note = await create(client, "Temporary", "ephemeral words")
        deleted = ok(await client.call_tool("delete_note", {"id": note["id"]}))
        assert deleted == {"id": note["id"], "title": "Temporary", "deleted": True}
        assert f"no note with id {note['id']}" in error_text(await client.call_tool("get_note", {"id": note["id"]}))
        assert await search(client, "ephemeral") == []
        with pytest.raises(MCPError):
            await client.read_resource(f"note://{note['id']}")


@pytest.mark.parametrize(("tool", "extra"), [("get_note", {}), ("update_note", {"title": "x"}), ("delete_note", {})])
async def test_an_unknown_id_is_a_tool_error_not_a_crash(connect: Connect, tool: str, extra: dict[str, Any]) -> None:
    async with connect() as client:
        assert "no note with id 424242" in error_text(await client.call_tool(tool, {"id": 424242, **extra}))


@pytest.mark.parametrize(
    ("tool", "arguments"),
    [
        ("get_note", {"id": 0}),
        ("get_note", {"id": "seven"}),
        ("create_note", {"title": "   ", "body": "x"}),
        ("create_note", {"title": "x" * 201, "body": "x"}),
        ("create_note", {"title": "t", "body": "b", "tags": ["x"] * 17}),
        ("search_notes", {"query": "x", "limit": 0}),
        ("search_notes", {"query": "x", "limit": 51}),
    ],
)
async def test_arguments_outside_the_input_schema_are_tool_errors(
    connect: Connect, tool: str, arguments: dict[str, Any]
) -> None:
    async with connect() as client:
        assert "validation error" in error_text(await client.call_tool(tool, arguments))


async def test_the_note_resource_is_markdown_and_a_missing_note_is_not_found(connect: Connect) -> None:
    async with connect() as client:
        note = await create(client, "Runbook", "Restart the *worker*.", ["ops"])
        templates = (await client.list_resource_templates()).resource_templates
        assert [t.uri_template for t in templates] == ["note://{id}"]
        contents = (await client.read_resource(note["uri"])).contents
        assert len(contents) == 1 and isinstance(contents[0], TextResourceContents)
        assert contents[0].mime_type == "text/markdown"
        assert contents[0].text.startswith("# Runbook\n") and "Restart the *worker*." in contents[0].text
        with pytest.raises(MCPError) as missing:
            await client.read_resource("note://999")
        assert "no note with id 999" in str(missing.value)


async def test_the_summary_prompt_quotes_every_note_with_the_tag(connect: Connect) -> None:
    async with connect() as client:
        first = await create(client, "Outage review", "The cache fell over.", ["q3-review"])
        second = await create(client, "Hiring", "Two new SREs.", ["Q3 review"])
        await create(client, "Unrelated", "Not in the prompt.", ["other"])
        prompts = (await client.list_prompts()).prompts
        assert [(p.name, [a.name for a in p.arguments or []]) for p in prompts] == [("summarize_notes", ["tag"])]
        result = await client.get_prompt("summarize_notes", {"tag": "q3-review"})
        assert len(result.messages) == 1 and isinstance(result.messages[0].content, TextContent)
        text = result.messages[0].content.text
        assert "2 notes tagged 'q3-review'" in text
        assert first["uri"] in text and second["uri"] in text and "The cache fell over." in text
        assert "Not in the prompt." not in text


async def test_the_summary_prompt_for_an_unused_tag_is_an_error(connect: Connect) -> None:
    async with connect() as client:
        with pytest.raises(MCPError) as error:
            await client.get_prompt("summarize_notes", {"tag": "nothing-here"})
        assert "no notes are tagged" in str(error.value)


def test_the_store_takes_its_path_from_notes_db_and_runs_in_wal_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "data" / "team-notes.db"
    monkeypatch.setenv("NOTES_DB", str(target))
    store = NoteStore()
    note = store.create("Hello", "World", ["x"])
    assert store.path == target and target.exists()
    with sqlite3.connect(target) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"notes", "note_tags", "notes_fts"} <= tables
    assert NoteStore(target).get(note.id) == note


def test_the_store_defaults_to_notes_db_in_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOTES_DB", raising=False)
    monkeypatch.chdir(tmp_path)
    NoteStore().create("t", "b")
    assert (tmp_path / "notes.db").exists()


def test_the_module_exposes_a_server_the_portal_can_host() -> None:
    assert isinstance(notes_module.server, MCPServer)
    assert notes_module.server.name == "notes"


async def test_notes_serves_streamable_http_with_its_database_from_the_environment(
    tmp_path: Path, http_server: Any, era: str
) -> None:
    database = tmp_path / "remote-notes.db"
    url = http_server("servers.notes", env={"NOTES_DB": str(database)})
    async with Client(url, mode=era) as client:
        created = await create(client, "Over HTTP", "Remote note", ["http"])
        assert [hit["id"] for hit in await search(client, "remote")] == [created["id"]]
    assert NoteStore(database).get(created["id"]).title == "Over HTTP"
