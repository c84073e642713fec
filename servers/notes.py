"""Notes: an MCP server over a SQLite notes store.

Tools: `create_note`, `get_note`, `search_notes` (full-text, ranked), `update_note`,
`delete_note`. Resource template: `note://{id}` (a note as Markdown). Prompt:
`summarize_notes(tag)`.

The database is `NOTES_DB` (default `notes.db` in the current directory), opened on
first use. The portal hosts this module in-process (`module = "servers.notes"`);
run alone it speaks stdio, or Streamable HTTP with `--http`:

    python -m servers.notes --http --port 8766 --host 127.0.0.1
"""

from __future__ import annotations

from typing import Annotated, Any

from mcp.server.caching import CacheHint
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceNotFoundError, ToolError
from mcp.shared.exceptions import MCPError
from mcp.types import INVALID_PARAMS, ToolAnnotations
from pydantic import BaseModel, Field, StringConstraints

from servers.cli import run_server
from servers.notes_store import NoteNotFound, NoteRecord, NoteStore, normalize_tags

__all__ = ["Note", "NoteDeleted", "NoteHit", "NoteSearchResult", "build_server", "main", "server", "store"]

NoteId = Annotated[int, Field(description="Id of the note, as returned by create_note or search_notes.", ge=1)]
Title = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Body = Annotated[str, StringConstraints(max_length=100_000)]
Tag = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=32)]
Tags = Annotated[
    tuple[Tag, ...],
    Field(
        description="Tags, e.g. ['ops', 'on-call']. Stored lower-case; inner spaces become '-'.",
        max_length=16,
    ),
]

PROMPT_NOTE_LIMIT = 25
"""Most notes `summarize_notes` puts in one prompt, so the prompt stays a sensible size."""
PROMPT_BODY_CHARS = 2_000
"""Longest body excerpt per note in `summarize_notes`."""


class Note(BaseModel):
    """A stored note."""

    id: int = Field(description="Note id; also addressable as the resource note://{id}.")
    title: str
    body: str = Field(description="Markdown text of the note.")
    tags: list[str]
    created_at: str = Field(description="Creation time, RFC 3339 in UTC.")
    updated_at: str = Field(description="Last change, RFC 3339 in UTC.")
    uri: str = Field(description="Resource URI of the note.")


class NoteHit(BaseModel):
    """One search result."""

    id: int
    title: str
    tags: list[str]
    score: float = Field(description="Relevance; higher is better. Comparable only within one search.")
    snippet: str = Field(description="Text around the match, matched terms in **bold** when FTS5 is used.")
    updated_at: str
    uri: str


class NoteSearchResult(BaseModel):
    """Search results, best first."""

    query: str
    tag: str | None = Field(description="Tag filter applied, normalized; null when none.")
    engine: str = Field(description="'fts5' (BM25 ranking) or 'like' (fallback scan).")
    hits: list[NoteHit]


class NoteDeleted(BaseModel):
    """What a delete removed."""

    id: int
    title: str
    deleted: bool = Field(description="Always true: a missing note is an error, not a no-op.")


def _uri(note_id: int) -> str:
    return f"note://{note_id}"


def _note(record: NoteRecord) -> Note:
    return Note(
        id=record.id,
        title=record.title,
        body=record.body,
        tags=list(record.tags),
        created_at=record.created_at,
        updated_at=record.updated_at,
        uri=_uri(record.id),
    )


def _markdown(record: NoteRecord) -> str:
    tags = ", ".join(record.tags) or "(none)"
    return f"# {record.title}\n\nTags: {tags}\nUpdated: {record.updated_at}\n\n{record.body}\n"


def _read_only(title: str) -> ToolAnnotations:
    # destructive/idempotent are implied by read_only; spelled out for hosts that map hints naively.
    return ToolAnnotations(
        title=title, read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False
    )


def build_server(notes: NoteStore) -> MCPServer[Any]:
    """An MCP server exposing `notes`; `server` below is the one built on `NOTES_DB`."""
    mcp: MCPServer[Any] = MCPServer(
        "notes",
        title="Notes",
        version="1.0.0",
        instructions=(
            "A shared notes store. Search before creating to avoid duplicates; notes are Markdown "
            "and carry lower-case tags. Deleting a note cannot be undone."
        ),
        # The tool catalog is fixed in code; note contents change, so reads stay uncached.
        cache_hints={
            "tools/list": CacheHint(ttl_ms=60_000, scope="public"),
            "prompts/list": CacheHint(ttl_ms=60_000, scope="public"),
            "resources/templates/list": CacheHint(ttl_ms=60_000, scope="public"),
        },
    )

    def lookup(note_id: int) -> NoteRecord:
        try:
            return notes.get(note_id)
        except NoteNotFound as exc:
            raise ToolError(str(exc)) from None

    @mcp.tool(
        title="Create note",
        annotations=ToolAnnotations(
            title="Create note",
            read_only_hint=False,
            destructive_hint=False,
            idempotent_hint=False,  # every call stores one more note
            open_world_hint=False,
        ),
    )
    def create_note(
        title: Annotated[Title, Field(description="Short title, 1-200 characters.")],
        body: Annotated[Body, Field(description="Note text in Markdown, up to 100,000 characters.")],
        tags: Tags = (),
    ) -> Note:
        """Create a note and return it with its id."""
        return _note(notes.create(title, body, tags))

    @mcp.tool(title="Get note", annotations=_read_only("Get note"))
    def get_note(id: NoteId) -> Note:
        """Fetch one note by id, with its full body."""
        return _note(lookup(id))

    @mcp.tool(title="Search notes", annotations=_read_only("Search notes"))
    def search_notes(
        query: Annotated[
            str,
            Field(
                description="Words to look for in titles, tags and bodies; notes matching more of them rank "
                "higher. Empty lists the most recently updated notes.",
                max_length=500,
            ),
        ],
        tag: Annotated[Tag | None, Field(description="Only notes carrying this tag.")] = None,
        limit: Annotated[int, Field(description="Most results to return.", ge=1, le=50)] = 10,
    ) -> NoteSearchResult:
        """Full-text search over notes, best matches first."""
        hits = notes.search(query, tag=tag, limit=limit)
        return NoteSearchResult(
            query=query,
            tag=normalize_tags([tag])[0] if tag else None,
            engine=notes.engine,
            hits=[
                NoteHit(
                    id=hit.note.id,
                    title=hit.note.title,
                    tags=list(hit.note.tags),
                    score=hit.score,
                    snippet=hit.snippet,
                    updated_at=hit.note.updated_at,
                    uri=_uri(hit.note.id),
                )
                for hit in hits
            ],
        )

    @mcp.tool(
        title="Update note",
        annotations=ToolAnnotations(
            title="Update note",
            read_only_hint=False,
            destructive_hint=True,  # the previous title, body or tags are overwritten, not kept
            idempotent_hint=True,
            open_world_hint=False,
        ),
    )
    def update_note(
        id: NoteId,
        title: Annotated[Title | None, Field(description="New title; omit to keep the current one.")] = None,
        body: Annotated[Body | None, Field(description="New Markdown body; omit to keep the current one.")] = None,
        tags: Annotated[
            tuple[Tag, ...] | None,
            Field(description="New tags, replacing all current ones; omit to keep them.", max_length=16),
        ] = None,
    ) -> Note:
        """Change a note's title, body or tags; fields left out keep their value."""
        if title is None and body is None and tags is None:
            raise ToolError("nothing to update: give at least one of title, body or tags")
        try:
            return _note(notes.update(id, title=title, body=body, tags=tags))
        except NoteNotFound as exc:
            raise ToolError(str(exc)) from None

    @mcp.tool(
        title="Delete note",
        annotations=ToolAnnotations(
            title="Delete note",
            read_only_hint=False,
            destructive_hint=True,
            idempotent_hint=True,  # a second delete changes nothing (it reports the note missing)
            open_world_hint=False,
        ),
    )
    def delete_note(id: NoteId) -> NoteDeleted:
        """Delete a note permanently."""
        try:
            removed = notes.delete(id)
        except NoteNotFound as exc:
            raise ToolError(str(exc)) from None
        return NoteDeleted(id=removed.id, title=removed.title, deleted=True)

    @mcp.resource(
        "note://{id}",
        name="note",
        title="Note",
        description="One note as Markdown, by id.",
        mime_type="text/markdown",
    )
    def note_resource(id: int) -> str:
        try:
            return _markdown(notes.get(id))
        except NoteNotFound as exc:
            raise ResourceNotFoundError(str(exc)) from None

    @mcp.prompt(title="Summarize notes")
    def summarize_notes(
        tag: Annotated[str, Field(description="Summarize the notes carrying this tag.")],
    ) -> str:
        """Ask for a summary of every note carrying a tag: themes, decisions, open questions."""
        records = notes.by_tag(tag, limit=PROMPT_NOTE_LIMIT)
        if not records:
            # A protocol error with a clear message, rather than a prompt about nothing.
            raise MCPError(code=INVALID_PARAMS, message=f"no notes are tagged {tag!r}")
        sections = []
        for record in records:
            body = record.body
            if len(body) > PROMPT_BODY_CHARS:
                body = body[:PROMPT_BODY_CHARS] + "\n[…truncated]"
            sections.append(f"## {record.title} (note://{record.id}, updated {record.updated_at})\n\n{body}")
        count = f"{len(records)} note" + ("s" if len(records) != 1 else "")
        return (
            f"Summarize the {count} tagged '{normalize_tags([tag])[0]}' below. "
            "Group related points, list decisions made and questions still open, "
            "and cite notes by their note:// URI.\n\n" + "\n\n".join(sections)
        )

    return mcp


store = NoteStore()
"""The store of the module-level server: `NOTES_DB`, resolved on first use."""

server = build_server(store)
"""The notes server the portal hosts."""


def main(argv: list[str] | None = None) -> None:
    """Run the notes server over stdio, or Streamable HTTP with `--http`."""
    run_server(
        server,
        argv,
        prog="python -m servers.notes",
        description="Notes MCP server (SQLite; database from NOTES_DB, default ./notes.db).",
        default_port=8766,
    )


if __name__ == "__main__":
    main()
