"""Naming rules of the aggregated endpoint (SPEC.md, Names) and catalog bookkeeping."""

from __future__ import annotations

import re

import pytest

from portal.catalog import Catalog, ServerCatalog, aggregate_name, aggregate_uri, fetch_server_catalog, split_uri

NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def test_tool_names_are_prefixed_with_their_server() -> None:
    assert aggregate_name("notes", "create_note") == "notes_create_note"


@pytest.mark.parametrize("tool", ["files.read", "weird name/with:chars", "x" * 80, "ünïcode"])
def test_names_that_do_not_fit_are_folded_into_the_client_safe_alphabet(tool: str) -> None:
    assert NAME.fullmatch(aggregate_name("srv", tool))


def test_folded_names_that_would_collide_stay_distinct() -> None:
    assert aggregate_name("srv", "a.b") != aggregate_name("srv", "a:b")


@pytest.mark.parametrize(
    "uri",
    ["note://7", "file:///etc/hosts", "https://example.com/a?b=c", "urn:isbn:0451450523", "note://{id}"],
)
def test_resource_uris_gain_the_server_and_come_back_unchanged(uri: str) -> None:
    mapped = aggregate_uri("docs", uri)
    assert mapped.split(":", 1)[0] == uri.split(":", 1)[0]
    assert split_uri(mapped) == ("docs", uri)


def test_a_uri_without_a_server_part_names_no_server() -> None:
    assert split_uri("note:7") is None
    assert split_uri("note://") is None


def test_aggregated_lists_rename_tools_and_resolve_back() -> None:
    catalog = Catalog()
    fresh = ServerCatalog("notes")
    fresh.items["tools"] = [{"name": "create_note", "title": "Create", "inputSchema": {"type": "object"}}]
    fresh.items["resources"] = [{"uri": "note://1", "name": "one"}]
    catalog.replace(fresh)
    tools = catalog.aggregated("tools", ["notes"])
    assert tools == [{"name": "notes_create_note", "title": "notes: Create", "inputSchema": {"type": "object"}}]
    assert catalog.resolve_tool("notes_create_note") == ("notes", "create_note")
    assert catalog.aggregated("resources", ["notes"])[0]["uri"] == "note://notes/1"
    generation = catalog.generation
    catalog.drop("notes")
    assert catalog.resolve_tool("notes_create_note") is None
    assert catalog.generation > generation


async def test_fetching_a_catalog_follows_pages_and_skips_malformed_entries() -> None:
    pages = {
        None: {"tools": [{"name": "a"}, {"nameless": True}], "nextCursor": "2"},
        "2": {"tools": [{"name": "b"}, {"name": "hidden"}]},
    }

    async def request(method: str, params: dict[str, str]) -> dict[str, object]:
        assert method == "tools/list"
        return pages[params.get("cursor")]

    catalog = await fetch_server_catalog("s", {"tools": {}}, request, allow=lambda name: name != "hidden")
    assert [t["name"] for t in catalog.items["tools"]] == ["a", "b"]
    assert catalog.items["prompts"] == []
