"""The docs server: BM25 search, safe reads, and the same module run as a stdio subprocess."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError
from mcp.types import TextResourceContents
from servers_testing import REPO_ROOT, error_text, ok, subprocess_env

from servers import docs as docs_module
from servers.docs import build_server
from servers.docs_index import DocsError, DocsIndex, tokenize

Connect = Callable[[], Client]

DOCS = {
    "handbook.md": "# Handbook\n\nStart here. See the deploy guide and the on-call runbook.\n",
    "guides/deploy.md": (
        "# Deploy guide\n\nShip through the pipeline.\n\n## Rolling back\n\n"
        "To roll back a deploy, run `deployctl rollback api`. Rollback needs no approval.\n"
    ),
    "runbooks/on-call.md": (
        "# On-call runbook\n\nAcknowledge the page within five minutes.\nEscalate to the data team.\n"
    ),
    "runbooks/failover.txt": "Database failover\n\nPromote the replica with the smallest replication lag.\n",
}


@pytest.fixture
def docs_dir(tmp_path: Path) -> Path:
    """A docs folder with documents, plus traps: hidden and non-document files, and symlinks in and out."""
    root = tmp_path / "docs"
    for rel, text in DOCS.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (tmp_path / "secret.md").write_text("# Secret\n\npassword = hunter2\n")
    (root / ".hidden.md").write_text("# Hidden\n\nnot a document\n")
    (root / "diagram.png").write_bytes(b"\x89PNG")
    (root / "escape.md").symlink_to(tmp_path / "secret.md")
    (root / "guides" / "outside").symlink_to(tmp_path, target_is_directory=True)
    (root / "deploy-link.md").symlink_to(root / "guides" / "deploy.md")
    return root


@pytest.fixture
def connect(docs_dir: Path, era: str) -> Connect:
    """Opens a client on a docs server over `docs_dir`, in the test's era (enter it in the test's task)."""
    server = build_server(DocsIndex(docs_dir))
    return lambda: Client(server, mode=era)


async def test_every_tool_is_read_only_with_described_inputs_and_an_output_schema(connect: Connect) -> None:
    async with connect() as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(tools) == {"search_docs", "read_doc", "list_docs"}
    for tool in tools.values():
        assert tool.description
        assert tool.output_schema is not None and tool.output_schema["type"] == "object"
        assert tool.annotations is not None
        assert tool.annotations.read_only_hint is True and tool.annotations.destructive_hint is False
        assert tool.annotations.open_world_hint is False
        for name, prop in tool.input_schema.get("properties", {}).items():
            assert prop.get("description"), f"{tool.name}.{name} has no description"
    doc_schema = tools["read_doc"].output_schema
    assert doc_schema is not None and set(doc_schema["properties"]) >= {"path", "title", "text", "uri"}


async def test_list_docs_shows_documents_but_not_hidden_files_other_files_or_links_out(connect: Connect) -> None:
    async with connect() as client:
        listed = ok(await client.call_tool("list_docs", {}))
    paths = [doc["path"] for doc in listed["documents"]]
    assert paths == [
        "deploy-link.md",
        "guides/deploy.md",
        "handbook.md",
        "runbooks/failover.txt",
        "runbooks/on-call.md",
    ]
    assert listed["count"] == 5
    titles = {doc["path"]: doc["title"] for doc in listed["documents"]}
    assert titles["guides/deploy.md"] == "Deploy guide"
    assert titles["runbooks/failover.txt"] == "Failover"
    deploy = next(doc for doc in listed["documents"] if doc["path"] == "guides/deploy.md")
    assert deploy["uri"] == "doc://guides/deploy.md" and deploy["size_bytes"] == len(DOCS["guides/deploy.md"])


async def test_search_ranks_the_document_about_the_query_first_with_its_best_line(connect: Connect) -> None:
    async with connect() as client:
        result = ok(await client.call_tool("search_docs", {"query": "replica lag failover"}))
    hits = result["hits"]
    assert hits[0]["path"] == "runbooks/failover.txt"
    assert hits[0]["snippet"] == "Promote the replica with the smallest replication lag."
    assert hits[0]["line"] == 3
    assert all(hit["score"] > 0 for hit in hits)
    assert [hit["score"] for hit in hits] == sorted((hit["score"] for hit in hits), reverse=True)


async def test_search_matches_other_forms_of_a_word_and_weights_titles(connect: Connect) -> None:
    async with connect() as client:
        hits = ok(await client.call_tool("search_docs", {"query": "deploying", "limit": 10}))["hits"]
    paths = [hit["path"] for hit in hits]
    assert set(paths[:2]) == {"deploy-link.md", "guides/deploy.md"}
    assert "handbook.md" in paths
    assert paths.index("handbook.md") > 1


async def test_a_rare_word_outranks_a_common_one(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    root.mkdir()
    for n in range(6):
        (root / f"common{n}.md").write_text("# Notes\n\nservice service service\n")
    (root / "rare.md").write_text("# Notes\n\nservice kafka\n")
    hits = DocsIndex(root).search("service kafka", limit=3)
    assert hits[0].doc.path == "rare.md"


async def test_search_limits_results_and_finds_nothing_for_stop_words(connect: Connect) -> None:
    async with connect() as client:
        assert len(ok(await client.call_tool("search_docs", {"query": "deploy", "limit": 1}))["hits"]) == 1
        assert ok(await client.call_tool("search_docs", {"query": "the and of"}))["hits"] == []
        assert "validation error" in error_text(await client.call_tool("search_docs", {"query": ""}))


async def test_search_sees_documents_added_and_changed_after_the_first_search(docs_dir: Path, era: str) -> None:
    async with Client(build_server(DocsIndex(docs_dir)), mode=era) as client:
        assert ok(await client.call_tool("search_docs", {"query": "kubernetes"}))["hits"] == []
        (docs_dir / "guides" / "k8s.md").write_text("# Kubernetes\n\nHow we run kubernetes clusters.\n")
        hits = ok(await client.call_tool("search_docs", {"query": "kubernetes"}))["hits"]
        assert [hit["path"] for hit in hits] == ["guides/k8s.md"]
        (docs_dir / "guides" / "k8s.md").unlink()
        assert ok(await client.call_tool("search_docs", {"query": "kubernetes"}))["hits"] == []


async def test_read_doc_returns_the_full_text_and_metadata(connect: Connect) -> None:
    async with connect() as client:
        doc = ok(await client.call_tool("read_doc", {"path": "guides/deploy.md"}))
    assert doc["text"] == DOCS["guides/deploy.md"]
    assert (doc["path"], doc["title"], doc["uri"]) == ("guides/deploy.md", "Deploy guide", "doc://guides/deploy.md")
    assert doc["modified"].endswith("Z")


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("../secret.md", "may not leave the docs folder"),
        ("guides/../../secret.md", "may not leave the docs folder"),
        ("/etc/passwd", "absolute paths are not allowed"),
        ("escape.md", "resolves outside the docs folder"),
        ("guides/outside/secret.md", "resolves outside the docs folder"),
        (".hidden.md", "hidden files are not served"),
        ("diagram.png", "files are documents"),
        ("guides", "files are documents"),
        ("handbook.md\x00.png", "relative to the docs folder"),
    ],
)
async def test_read_doc_refuses_paths_that_leave_the_folder_or_are_not_documents(
    connect: Connect, path: str, reason: str
) -> None:
    async with connect() as client:
        message = error_text(await client.call_tool("read_doc", {"path": path}))
    assert reason in message
    assert "hunter2" not in message


async def test_read_doc_refuses_an_absolute_path_even_into_the_folder(connect: Connect, docs_dir: Path) -> None:
    async with connect() as client:
        message = error_text(await client.call_tool("read_doc", {"path": str(docs_dir / "handbook.md")}))
    assert "absolute paths are not allowed" in message


async def test_read_doc_follows_a_symlink_that_stays_inside_and_normalizes_the_path(connect: Connect) -> None:
    async with connect() as client:
        linked = ok(await client.call_tool("read_doc", {"path": "deploy-link.md"}))
        dotted = ok(await client.call_tool("read_doc", {"path": "runbooks/../guides/./deploy.md"}))
    assert linked["text"] == dotted["text"] == DOCS["guides/deploy.md"]
    assert dotted["path"] == "guides/deploy.md"


async def test_read_doc_of_a_missing_document_is_a_tool_error(connect: Connect) -> None:
    async with connect() as client:
        assert "no document at 'guides/nope.md'" in error_text(
            await client.call_tool("read_doc", {"path": "guides/nope.md"})
        )


async def test_the_doc_resource_reads_documents_and_refuses_escapes(connect: Connect) -> None:
    async with connect() as client:
        templates = (await client.list_resource_templates()).resource_templates
        assert [t.uri_template for t in templates] == ["doc://{+path}"]
        contents = (await client.read_resource("doc://runbooks/on-call.md")).contents
        assert isinstance(contents[0], TextResourceContents) and contents[0].text == DOCS["runbooks/on-call.md"]
        assert contents[0].mime_type == "text/markdown"
        for uri in ("doc://../secret.md", "doc://escape.md", "doc://guides/nope.md", "doc://%2E%2E/secret.md"):
            with pytest.raises(MCPError) as refused:
                await client.read_resource(uri)
            assert "hunter2" not in str(refused.value)


async def test_a_missing_docs_folder_is_a_tool_error(tmp_path: Path, era: str) -> None:
    async with Client(build_server(DocsIndex(tmp_path / "absent")), mode=era) as client:
        assert "does not exist" in error_text(await client.call_tool("list_docs", {}))
        assert "does not exist" in error_text(await client.call_tool("search_docs", {"query": "x"}))


def test_the_index_reads_docs_dir_when_first_used(
    docs_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = DocsIndex()
    monkeypatch.setenv("DOCS_DIR", str(docs_dir))
    assert index.root == Path(os.path.realpath(docs_dir))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DOCS_DIR")
    with pytest.raises(DocsError):
        _ = DocsIndex().root  # examples/docs does not exist under tmp_path


def test_tokenize_lowercases_stems_and_drops_stop_words() -> None:
    assert tokenize("The Deployments are Deploying; deployed policies!") == [
        "deploy",
        "deploy",
        "deploy",
        "policy",
    ]


def test_the_module_exposes_a_server_and_defaults_to_the_example_handbook() -> None:
    assert isinstance(docs_module.server, MCPServer) and docs_module.server.name == "docs"
    handbook = DocsIndex(REPO_ROOT / "examples" / "docs")
    paths = [doc.path for doc in handbook.documents()]
    assert 6 <= len(paths) <= 10
    assert handbook.search("roll back a deploy")[0].doc.path == "guides/deploy.md"
    assert handbook.search("replica failover")[0].doc.path == "runbooks/database-failover.md"


async def test_docs_runs_as_a_stdio_subprocess(docs_dir: Path, era: str) -> None:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "servers.docs"],
        env=subprocess_env({"DOCS_DIR": str(docs_dir)}),
        cwd=REPO_ROOT,
    )
    async with Client(params, mode=era) as client:
        assert {tool.name for tool in (await client.list_tools()).tools} == {"search_docs", "read_doc", "list_docs"}
        hits = ok(await client.call_tool("search_docs", {"query": "rollback"}))["hits"]
        assert hits[0]["path"] in {"guides/deploy.md", "deploy-link.md"}
        assert "resolves outside" in error_text(await client.call_tool("read_doc", {"path": "escape.md"}))
