"""Docs: read-only search over a folder of Markdown and text documents.

Tools: `search_docs` (BM25-ranked), `read_doc`, `list_docs`, all read-only.
Resource template: `doc://{+path}` (a document's text).

The folder is `DOCS_DIR` (default `examples/docs` in the current directory). Paths
that leave it, by `..`, an absolute path or a symlink, are refused. The example
portal runs this module as a stdio subprocess:

    DOCS_DIR=examples/docs python -m servers.docs
"""

from __future__ import annotations

from typing import Annotated, Any

from mcp.server.caching import CacheHint
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError, ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from servers.cli import run_server
from servers.docs_index import DocInfo, DocNotFound, DocsError, DocsIndex

__all__ = [
    "DocContent",
    "DocList",
    "DocSearchHit",
    "DocSearchResult",
    "DocSummary",
    "build_server",
    "index",
    "main",
    "server",
]

DocPath = Annotated[
    str,
    Field(
        description="Path of the document relative to the docs folder, with '/', as listed by list_docs "
        "(e.g. 'runbooks/on-call.md').",
        min_length=1,
        max_length=1024,
    ),
]


class DocSummary(BaseModel):
    """A document without its text."""

    path: str = Field(description="Path relative to the docs folder.")
    title: str = Field(description="First Markdown heading, or a name made from the file name.")
    size_bytes: int
    modified: str = Field(description="Last change, RFC 3339 in UTC.")
    uri: str = Field(description="Resource URI of the document.")


class DocList(BaseModel):
    """Every document in the folder."""

    count: int
    documents: list[DocSummary]


class DocSearchHit(BaseModel):
    """One search result."""

    path: str
    title: str
    score: float = Field(description="BM25 relevance; higher is better. Comparable only within one search.")
    line: int = Field(description="1-based line of the best-matching passage.")
    snippet: str = Field(description="The best-matching line.")
    uri: str


class DocSearchResult(BaseModel):
    """Search results, best first."""

    query: str
    hits: list[DocSearchHit]


class DocContent(DocSummary):
    """A document with its full text."""

    text: str


def _uri(path: str) -> str:
    return f"doc://{path}"


def _summary(info: DocInfo) -> DocSummary:
    return DocSummary(
        path=info.path, title=info.title, size_bytes=info.size, modified=info.modified, uri=_uri(info.path)
    )


def _read_only(title: str) -> ToolAnnotations:
    # Reading local files only: read-only, idempotent, closed world.
    return ToolAnnotations(
        title=title, read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False
    )


def build_server(index: DocsIndex) -> MCPServer[Any]:
    """An MCP server over `index`; `server` below is the one built on `DOCS_DIR`."""
    mcp: MCPServer[Any] = MCPServer(
        "docs",
        title="Engineering docs",
        version="1.0.0",
        instructions=(
            "The engineering handbook: runbooks, guides and policies. Use search_docs to find the right "
            "document, then read_doc for its full text. Cite documents by path."
        ),
        cache_hints={
            "tools/list": CacheHint(ttl_ms=60_000, scope="public"),
            "resources/templates/list": CacheHint(ttl_ms=60_000, scope="public"),
        },
    )

    @mcp.tool(title="Search docs", annotations=_read_only("Search docs"))
    def search_docs(
        query: Annotated[
            str,
            Field(
                description="Words to look for, e.g. 'rollback a deploy'. Documents are ranked by BM25.",
                min_length=1,
                max_length=500,
            ),
        ],
        limit: Annotated[int, Field(description="Most results to return.", ge=1, le=50)] = 5,
    ) -> DocSearchResult:
        """Search the engineering docs, best matches first, each with its best-matching line."""
        try:
            hits = index.search(query, limit)
        except DocsError as exc:
            raise ToolError(str(exc)) from None
        return DocSearchResult(
            query=query,
            hits=[
                DocSearchHit(
                    path=hit.doc.path,
                    title=hit.doc.title,
                    score=hit.score,
                    line=hit.line,
                    snippet=hit.snippet,
                    uri=_uri(hit.doc.path),
                )
                for hit in hits
            ],
        )

    @mcp.tool(title="Read doc", annotations=_read_only("Read doc"))
    def read_doc(path: DocPath) -> DocContent:
        """Read one document in full. Paths outside the docs folder are refused."""
        try:
            info, text = index.read(path)
        except DocsError as exc:
            raise ToolError(str(exc)) from None
        return DocContent(**_summary(info).model_dump(), text=text)

    @mcp.tool(title="List docs", annotations=_read_only("List docs"))
    def list_docs() -> DocList:
        """List every document with its title, size and last change."""
        try:
            documents = [_summary(info) for info in index.documents()]
        except DocsError as exc:
            raise ToolError(str(exc)) from None
        return DocList(count=len(documents), documents=documents)

    @mcp.resource(
        "doc://{+path}",
        name="doc",
        title="Document",
        description="A document of the engineering docs by path, e.g. doc://runbooks/on-call.md.",
        mime_type="text/markdown",
    )
    def doc_resource(path: str) -> str:
        try:
            return index.read(path)[1]
        except DocNotFound as exc:
            raise ResourceNotFoundError(str(exc)) from None
        except DocsError as exc:
            raise ResourceError(str(exc)) from None

    return mcp


index = DocsIndex()
"""The index of the module-level server: `DOCS_DIR`, resolved on first use."""

server = build_server(index)
"""The docs server the portal runs (as a stdio subprocess in the example config)."""


def main(argv: list[str] | None = None) -> None:
    """Run the docs server over stdio, or Streamable HTTP with `--http`."""
    run_server(
        server,
        argv,
        prog="python -m servers.docs",
        description="Engineering docs MCP server (folder from DOCS_DIR, default ./examples/docs).",
        default_port=8767,
    )


if __name__ == "__main__":
    main()
