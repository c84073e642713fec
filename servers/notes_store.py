"""The SQLite storage behind the notes server.

One file holds the notes, their tags and a full-text index. The schema is created
on first use and the database runs in WAL mode, so readers never block the writer
and several processes (a portal replica, a stdio copy of the server) may share the
file. Search uses SQLite's FTS5 with BM25 ranking; on a SQLite built without FTS5
it falls back to a LIKE scan ranked by where and how often the terms occur.

The store knows nothing about MCP: `servers.notes` turns its records into tool
results and its `NoteNotFound` into tool errors.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

__all__ = ["DEFAULT_DB", "NoteNotFound", "NoteRecord", "NoteStore", "SearchHit", "normalize_tags"]

DEFAULT_DB = "notes.db"
"""Database file used when neither a path nor `NOTES_DB` is given (relative to the current directory)."""

Engine = Literal["fts5", "like"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS notes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    title TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS note_tags (
    note_id INTEGER NOT NULL REFERENCES notes(id) ON DELETE CASCADE,
    tag TEXT NOT NULL,
    PRIMARY KEY (note_id, tag)
);
CREATE INDEX IF NOT EXISTS note_tags_by_tag ON note_tags(tag);
"""

# Porter stemming lets "deploys" find "deployment"; the index is kept in step with
# `notes` by the store itself, in the same transaction as each write.
_FTS_SCHEMA = "CREATE VIRTUAL TABLE IF NOT EXISTS notes_fts USING fts5(title, body, tags, tokenize='porter unicode61')"

# Column weights for bm25(): a term in the title or a tag says more than one in the body.
_BM25 = "bm25(notes_fts, 8.0, 1.0, 4.0)"

_TERM = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True)
class NoteRecord:
    """One stored note."""

    id: int
    title: str
    body: str
    tags: tuple[str, ...]
    created_at: str
    updated_at: str


@dataclass(frozen=True)
class SearchHit:
    """A note that matched a search, with its relevance (higher is better) and a snippet."""

    note: NoteRecord
    score: float
    snippet: str


class NoteNotFound(LookupError):
    """No note has the requested id."""

    def __init__(self, note_id: int) -> None:
        super().__init__(f"no note with id {note_id}")
        self.note_id = note_id


def normalize_tags(tags: Iterable[str]) -> tuple[str, ...]:
    """Lower-case, trim and de-duplicate tags, keeping their first-seen order.

    Inner whitespace becomes `-`, so "On Call" and "on-call" are the same tag.
    """
    seen: dict[str, None] = {}
    for tag in tags:
        cleaned = "-".join(tag.strip().lower().split())
        if cleaned:
            seen.setdefault(cleaned, None)
    return tuple(seen)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _terms(query: str) -> list[str]:
    return [term.lower() for term in _TERM.findall(query)]


class NoteStore:
    """Notes in one SQLite file.

    `path=None` reads `NOTES_DB` (default `notes.db` in the current directory) when the
    store is first used, not when it is built, so a host can set the variable after
    importing `servers.notes`. `fts=False` forces the LIKE fallback (used by tests; a
    SQLite without FTS5 selects it by itself).
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, fts: bool = True) -> None:
        self._configured = None if path is None else Path(path)
        self._want_fts = fts
        self._path: Path | None = None
        self._engine: Engine = "like"
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        """The database file, resolved (and the schema created) on first access."""
        self._ensure_schema()
        assert self._path is not None
        return self._path

    @property
    def engine(self) -> Engine:
        """`fts5` when full-text search is available, else `like`."""
        self._ensure_schema()
        return self._engine

    def _ensure_schema(self) -> None:
        # Tools run on worker threads; the lock makes the first-use setup happen once.
        with self._lock:
            if self._path is not None:
                return
            path = self._configured or Path(os.environ.get("NOTES_DB") or DEFAULT_DB)
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, timeout=10)
            try:
                # WAL is a property of the file: set once, every later connection inherits it.
                conn.execute("PRAGMA journal_mode=WAL")
                conn.executescript(_SCHEMA)
                engine: Engine = "like"
                if self._want_fts:
                    try:
                        conn.execute(_FTS_SCHEMA)
                        engine = "fts5"
                    except sqlite3.OperationalError:
                        engine = "like"  # SQLite compiled without FTS5
                conn.commit()
            finally:
                conn.close()
            self._engine = engine
            self._path = path

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A connection for one operation, committed on success and rolled back on error.

        A connection per operation keeps worker threads from sharing one, and costs
        little next to the query itself.
        """
        path = self.path
        conn = sqlite3.connect(path, timeout=10)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys=ON")
        try:
            with conn:
                yield conn
        finally:
            conn.close()

    # Reads

    def get(self, note_id: int) -> NoteRecord:
        """The note `note_id`; raises `NoteNotFound`."""
        with self._connect() as conn:
            return self._load(conn, note_id)

    def by_tag(self, tag: str, limit: int = 50) -> list[NoteRecord]:
        """Notes carrying `tag`, most recently updated first."""
        normalized = normalize_tags([tag])
        if not normalized:
            return []
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT n.* FROM notes n JOIN note_tags t ON t.note_id = n.id WHERE t.tag = ? "
                "ORDER BY n.updated_at DESC, n.id DESC LIMIT ?",
                (normalized[0], limit),
            ).fetchall()
            return self._records(conn, rows)

    def search(self, query: str, *, tag: str | None = None, limit: int = 10) -> list[SearchHit]:
        """Notes matching any term of `query`, best first, optionally only those tagged `tag`.

        A query without terms lists the most recently updated notes (score 0).
        """
        terms = _terms(query)
        tag_filter = normalize_tags([tag]) if tag is not None else ()
        with self._connect() as conn:
            if not terms:
                return self._recent(conn, tag_filter, limit)
            if self.engine == "fts5":
                return self._search_fts(conn, terms, tag_filter, limit)
            return self._search_like(conn, terms, tag_filter, limit)

    def _recent(self, conn: sqlite3.Connection, tag_filter: tuple[str, ...], limit: int) -> list[SearchHit]:
        where, params = self._tag_clause(tag_filter)
        rows = conn.execute(
            f"SELECT n.* FROM notes n {where} ORDER BY n.updated_at DESC, n.id DESC LIMIT ?", (*params, limit)
        ).fetchall()
        return [SearchHit(note, 0.0, _excerpt(note.body, [])) for note in self._records(conn, rows)]

    def _search_fts(
        self, conn: sqlite3.Connection, terms: list[str], tag_filter: tuple[str, ...], limit: int
    ) -> list[SearchHit]:
        # Each term is quoted, so user text can never be read as FTS5 query syntax;
        # OR lets BM25 rank notes that match more of the terms higher.
        match = " OR ".join('"' + term.replace('"', '""') + '"' for term in terms)
        where, params = self._tag_clause(tag_filter, joiner="AND")
        rows = conn.execute(
            f"SELECT n.*, -{_BM25} AS score, snippet(notes_fts, -1, '**', '**', '…', 16) AS snip "
            f"FROM notes_fts JOIN notes n ON n.id = notes_fts.rowid "
            f"WHERE notes_fts MATCH ? {where} ORDER BY {_BM25}, n.id LIMIT ?",
            (match, *params, limit),
        ).fetchall()
        records = self._records(conn, rows)
        # bm25() is tiny on small corpora (FTS5 floors the IDF of common terms), so keep
        # significant digits rather than decimal places.
        return [
            SearchHit(note, float(f"{row['score']:.6g}"), row["snip"]) for note, row in zip(records, rows, strict=True)
        ]

    def _search_like(
        self, conn: sqlite3.Connection, terms: list[str], tag_filter: tuple[str, ...], limit: int
    ) -> list[SearchHit]:
        # Candidates match some term anywhere; ranking happens here in Python. Without
        # the porter tokenizer, a crude suffix strip keeps "deploying" finding "deploy".
        terms = [_like_stem(term) for term in terms]
        clauses = " OR ".join(["(lower(n.title) LIKE ? OR lower(n.body) LIKE ?)"] * len(terms))
        like_params = [p for term in terms for p in (f"%{term}%", f"%{term}%")]
        where, params = self._tag_clause(tag_filter, joiner="AND")
        rows = conn.execute(f"SELECT n.* FROM notes n WHERE ({clauses}) {where}", (*like_params, *params)).fetchall()
        hits: list[SearchHit] = []
        for note in self._records(conn, rows):
            title, body = note.title.lower(), note.body.lower()
            tags = " ".join(note.tags)
            # Same weighting as the FTS5 path: title 8, tags 4, body 1, plus a bonus per distinct term.
            score = sum(8 * title.count(t) + 4 * tags.count(t) + body.count(t) for t in terms)
            score += 2 * sum(1 for t in terms if t in title or t in body or t in tags)
            hits.append(SearchHit(note, float(score), _excerpt(note.body, terms)))
        hits.sort(key=lambda hit: (-hit.score, hit.note.id))
        return hits[:limit]

    @staticmethod
    def _tag_clause(tag_filter: tuple[str, ...], joiner: str = "WHERE") -> tuple[str, tuple[str, ...]]:
        if not tag_filter:
            return "", ()
        return f"{joiner} n.id IN (SELECT note_id FROM note_tags WHERE tag = ?)", (tag_filter[0],)

    # Writes

    def create(self, title: str, body: str, tags: Sequence[str] = ()) -> NoteRecord:
        """Store a new note and return it with its id."""
        now = _now()
        normalized = normalize_tags(tags)
        with self._connect() as conn:
            cursor = conn.execute(
                "INSERT INTO notes (title, body, created_at, updated_at) VALUES (?, ?, ?, ?)",
                (title, body, now, now),
            )
            note_id = cursor.lastrowid
            assert note_id is not None
            self._write_tags(conn, note_id, normalized)
            self._reindex(conn, note_id, title, body, normalized)
            return self._load(conn, note_id)

    def update(
        self,
        note_id: int,
        *,
        title: str | None = None,
        body: str | None = None,
        tags: Sequence[str] | None = None,
    ) -> NoteRecord:
        """Replace the given fields of note `note_id`; raises `NoteNotFound`."""
        with self._connect() as conn:
            current = self._load(conn, note_id)
            new_title = current.title if title is None else title
            new_body = current.body if body is None else body
            new_tags = current.tags if tags is None else normalize_tags(tags)
            conn.execute(
                "UPDATE notes SET title = ?, body = ?, updated_at = ? WHERE id = ?",
                (new_title, new_body, _now(), note_id),
            )
            if tags is not None:
                conn.execute("DELETE FROM note_tags WHERE note_id = ?", (note_id,))
                self._write_tags(conn, note_id, new_tags)
            self._reindex(conn, note_id, new_title, new_body, new_tags)
            return self._load(conn, note_id)

    def delete(self, note_id: int) -> NoteRecord:
        """Delete note `note_id` and return what it was; raises `NoteNotFound`."""
        with self._connect() as conn:
            current = self._load(conn, note_id)
            conn.execute("DELETE FROM notes WHERE id = ?", (note_id,))
            if self.engine == "fts5":
                conn.execute("DELETE FROM notes_fts WHERE rowid = ?", (note_id,))
            return current

    # Helpers

    @staticmethod
    def _write_tags(conn: sqlite3.Connection, note_id: int, tags: tuple[str, ...]) -> None:
        conn.executemany("INSERT INTO note_tags (note_id, tag) VALUES (?, ?)", [(note_id, tag) for tag in tags])

    def _reindex(self, conn: sqlite3.Connection, note_id: int, title: str, body: str, tags: tuple[str, ...]) -> None:
        if self.engine != "fts5":
            return
        conn.execute("DELETE FROM notes_fts WHERE rowid = ?", (note_id,))
        conn.execute(
            "INSERT INTO notes_fts (rowid, title, body, tags) VALUES (?, ?, ?, ?)",
            (note_id, title, body, " ".join(tags)),
        )

    def _load(self, conn: sqlite3.Connection, note_id: int) -> NoteRecord:
        row = conn.execute("SELECT * FROM notes WHERE id = ?", (note_id,)).fetchone()
        if row is None:
            raise NoteNotFound(note_id)
        return self._records(conn, [row])[0]

    @staticmethod
    def _records(conn: sqlite3.Connection, rows: Sequence[sqlite3.Row]) -> list[NoteRecord]:
        """Rows of `notes` as records, with their tags fetched in one query."""
        ids = [row["id"] for row in rows]
        tags: dict[int, list[str]] = {note_id: [] for note_id in ids}
        if ids:
            marks = ",".join("?" * len(ids))
            for note_id, tag in conn.execute(
                f"SELECT note_id, tag FROM note_tags WHERE note_id IN ({marks}) ORDER BY rowid", ids
            ):
                tags[note_id].append(tag)
        return [
            NoteRecord(
                id=row["id"],
                title=row["title"],
                body=row["body"],
                tags=tuple(tags[row["id"]]),
                created_at=row["created_at"],
                updated_at=row["updated_at"],
            )
            for row in rows
        ]


_SUFFIXES = ("ments", "ment", "ings", "ing", "ed", "s")


def _like_stem(term: str) -> str:
    """`term` without one common English suffix, when at least three letters remain."""
    for suffix in _SUFFIXES:
        if term.endswith(suffix) and not term.endswith("ss") and len(term) - len(suffix) >= 3:
            return term[: -len(suffix)]
    return term


def _excerpt(body: str, terms: list[str], width: int = 160) -> str:
    """About `width` characters of `body` around the first term found (the start if none is)."""
    lowered = body.lower()
    positions = [pos for pos in (lowered.find(term) for term in terms) if pos >= 0]
    start = max(0, min(positions) - width // 4) if positions else 0
    text = " ".join(body[start : start + width].split())
    prefix = "…" if start > 0 else ""
    suffix = "…" if start + width < len(body) else ""
    return f"{prefix}{text}{suffix}"
