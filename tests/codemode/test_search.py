"""Search ranking over the corpus, full stubs on request, and the size of what a client loads."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from codemode_testing import load_catalog

from codemode import CodeMode, Limits, SearchIndex, build_sdk
from codemode.search import tokenize


@pytest.fixture(scope="module")
def index() -> SearchIndex:
    return SearchIndex(build_sdk(load_catalog()))


def _top(index: SearchIndex, query: str, n: int = 1) -> list[str]:
    return [hit.qualified for hit in index.search(query, n)]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("create a note", "notes.create_note"),
        ("delete note", "notes.delete_note"),
        ("full-text search notes", "notes.search_notes"),
        ("convert a time between time zones", "clock.convert_time"),
        ("list time zones", "clock.list_timezones"),
        ("read a document", "docs.read_doc"),
        ("open a github issue", "github.create_issue"),
        ("merge pull request", "github.merge_pull_request"),
        ("refund a charge", "payments.refund"),
        ("post a message to a slack channel", "slack.post_message"),
        ("emoji reaction", "slack.add_reaction"),
        ("overwrite a file", "filesystem.write_file"),
        ("edit lines in a text file", "filesystem.edit_file"),
        ("file size and permissions", "filesystem.get_file_info"),
    ],
)
def test_the_right_tool_ranks_first(index: SearchIndex, query: str, expected: str) -> None:
    assert _top(index, query) == [expected]


def test_server_names_and_parameter_names_count(index: SearchIndex) -> None:
    assert set(_top(index, "github", 4)) == {
        "github.create_issue",
        "github.list_issues",
        "github.merge_pull_request",
        "github.search_code",
    }
    assert _top(index, "thread_ts") == ["slack.post_message"]  # only a parameter has this name
    assert _top(index, "pull_number") == ["github.merge_pull_request"]


def test_an_exact_tool_name_wins_in_any_spelling(index: SearchIndex) -> None:
    for spelling in ("notes.get_note", "notes_get_note", "get_note"):
        assert _top(index, spelling) == ["notes.get_note"]
    assert _top(index, "odd-names.get-user") == ["odd_names.get_user"]


def test_results_are_ranked_limited_and_carry_signatures(index: SearchIndex) -> None:
    hits = index.search("search", 3)
    assert len(hits) == 3
    assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)
    assert all(hit.signature.startswith("async def ") for hit in hits)
    hit = index.search("create a note", 1)[0]
    assert hit.line() == (
        "notes.create_note(*, title: str, body: str, tags: list[str] = []) -> Note"
        "  # Create a note and return it with its id."
    )
    assert index.search("zzzz qqqq", 5) == []


def test_tokenizer_splits_names_and_folds_word_forms() -> None:
    assert tokenize("listTimeZones") == tokenize("list time zones")
    assert tokenize("created notes") == tokenize("create note")
    assert tokenize("get_HTTPResponse") == ["get", "http", "respons"]


def test_search_returns_full_stubs_of_servers_and_tools(make_codemode: Callable[..., CodeMode]) -> None:
    codemode = make_codemode()
    found = codemode.search("", stubs=["notes.create_note", "clock", "tools.docs.read_doc", "nope.nothing"])
    assert set(found.stubs) == {"notes.create_note", "clock", "tools.docs.read_doc"}
    assert found.unknown == ("nope.nothing",)
    assert "class Note(TypedDict):" in found.stubs["notes.create_note"]
    assert "class NoteSearchResult" not in found.stubs["notes.create_note"]  # only the types it needs
    assert found.stubs["clock"].startswith('"""Tools of server `clock`."""')
    text = found.to_text()
    assert "# unknown names: nope.nothing" in text
    assert "async def read_doc(*, path: str) -> DocContent:" in text


def test_an_empty_query_lists_the_servers(make_codemode: Callable[..., CodeMode]) -> None:
    found = make_codemode().search("")
    assert ("notes", "notes", 5) in found.servers
    assert ("odd-names", "odd_names", 9) in found.servers
    assert found.hits == ()
    assert "odd_names  # server 'odd-names', 9 tools" in found.to_text()


async def test_search_and_execute_over_mcp_calls(make_codemode: Callable[..., CodeMode]) -> None:
    codemode = make_codemode()
    result = await codemode.call("search", {"query": "create a note", "limit": 2})
    assert result["structuredContent"]["results"][0]["tool"] == "notes.create_note"
    assert result["content"][0]["text"].splitlines()[1].startswith("notes.create_note(")
    bad = await codemode.call("search", {"query": 3})
    assert bad["isError"] is True and "query" in bad["content"][0]["text"]
    bad = await codemode.call("search", {"stubs": [1]})
    assert bad["isError"] is True
    bad = await codemode.call("execute", {})
    assert bad["isError"] is True and "code" in bad["content"][0]["text"]
    with pytest.raises(LookupError):
        await codemode.call("nope", {})
    done = await codemode.call("execute", {"code": "print('hi')\n6 * 7"})
    assert done["isError"] is False
    assert done["content"][0]["text"] == "hi\n=> 42"
    assert done["structuredContent"]["value"] == 42


def test_tool_definitions_are_small_and_independent_of_the_catalog(make_codemode: Callable[..., CodeMode]) -> None:
    small = make_codemode(load_catalog("demo")).tool_definitions()
    large = make_codemode().tool_definitions()
    assert small == large
    assert [tool["name"] for tool in small] == ["search", "execute"]
    custom = make_codemode(limits=Limits(timeout=5, tool_calls=7)).tool_definitions()
    assert "Limits: 5 s, 7 tool calls" in custom[1]["description"]
    # A crude bound on tokens (about 4 characters each; measured with cl100k it is about 700): the bench measures
    # them with a real tokenizer against the 1,000-token target.
    assert len(json.dumps(large)) / 4 < 850
