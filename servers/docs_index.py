"""A BM25 index over a folder of Markdown and text files, with safe path resolution.

The folder is scanned on every call and the index rebuilt only when a file was
added, removed or changed (by size or mtime), so edits show up without a restart
and an unchanged folder costs one directory walk.

Every path a caller gives is resolved with `os.path.realpath` and must stay inside
the folder's own real path: `..` segments, absolute paths and symlinks pointing out
of the folder are refused, as are hidden files and anything that is not a
`.md`, `.markdown` or `.txt` file.
"""

from __future__ import annotations

import math
import os
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

__all__ = [
    "DEFAULT_DOCS_DIR",
    "DocHit",
    "DocInfo",
    "DocNotFound",
    "DocsError",
    "DocsIndex",
    "PathRefused",
    "tokenize",
]

DEFAULT_DOCS_DIR = "examples/docs"
"""Folder served when neither a root nor `DOCS_DIR` is given (relative to the current directory)."""

SUFFIXES = frozenset({".md", ".markdown", ".txt"})
MAX_FILE_BYTES = 1_000_000
"""Larger files are neither indexed nor read: this is a handbook, not a data store."""

# Okapi BM25 constants, the usual defaults.
K1 = 1.2
B = 0.75
TITLE_WEIGHT = 3
"""A title term counts as this many body terms: a doc titled "Deploy guide" is about deploying."""

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
_STOPWORDS = frozenset(
    {
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "but",
        "by",
        "for",
        "from",
        "has",
        "have",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "of",
        "on",
        "or",
        "our",
        "so",
        "that",
        "the",
        "their",
        "then",
        "there",
        "these",
        "this",
        "to",
        "was",
        "we",
        "what",
        "when",
        "where",
        "which",
        "who",
        "will",
        "with",
        "you",
        "your",
    }
)


class DocsError(Exception):
    """A document request that cannot be served."""


class PathRefused(DocsError):
    """The path leaves the docs folder or names something that is not a document."""


class DocNotFound(DocsError):
    """No document at that path."""


@dataclass(frozen=True)
class DocInfo:
    """One document: its path relative to the folder (with `/`), title, size and last change."""

    path: str
    title: str
    size: int
    modified: str


@dataclass(frozen=True)
class DocHit:
    """A search result: the document, its BM25 score, and the best-matching line."""

    doc: DocInfo
    score: float
    line: int
    snippet: str


@dataclass(frozen=True)
class _Entry:
    info: DocInfo
    lines: tuple[str, ...]
    tf: Counter[str]
    length: int


@dataclass(frozen=True)
class _Snapshot:
    """One consistent state of the index, swapped whole so a reader never mixes two builds."""

    signature: tuple[tuple[str, int, int], ...] | None = None
    entries: dict[str, _Entry] = field(default_factory=dict)
    df: Counter[str] = field(default_factory=Counter)
    avg_length: float = 0.0


def _stem(word: str) -> str:
    """A light English stemmer: enough for "deploying", "deployed", "deployments" to meet "deploy"."""
    if len(word) <= 3:
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith("sses"):
        return word[:-2]
    for suffix in ("ments", "ment", "ings", "ing", "ed"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            # "running" -> "runn" -> "run", but keep "roll", "pass", "buzz".
            if len(word) > 3 and word[-1] == word[-2] and word[-1] not in "lsz":
                word = word[:-1]
            return word
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def tokenize(text: str) -> list[str]:
    """Lower-cased, stemmed words of `text`, without stop words."""
    return [_stem(word) for word in _WORD.findall(text.lower()) if word not in _STOPWORDS]


def _title(text: str, path: str) -> str:
    match = _HEADING.search(text)
    if match:
        return match.group(1).strip()
    return PurePosixPath(path).stem.replace("-", " ").replace("_", " ").capitalize()


class DocsIndex:
    """Documents under one folder.

    `root=None` reads `DOCS_DIR` (default `examples/docs` in the current directory)
    on first use, so a host can set it after importing `servers.docs`.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self._configured = root
        self._root: str | None = None
        self._lock = threading.Lock()
        self._snapshot = _Snapshot()

    @property
    def root(self) -> Path:
        """The folder's real path; raises `DocsError` when it is not a directory."""
        if self._root is None:
            configured = self._configured or os.environ.get("DOCS_DIR") or DEFAULT_DOCS_DIR
            self._root = os.path.realpath(configured)
        if not os.path.isdir(self._root):
            raise DocsError(f"the docs folder {self._root} does not exist")
        return Path(self._root)

    # Path safety

    def resolve(self, path: str) -> tuple[str, Path]:
        """The normalized relative path and real file of `path`; refuses anything outside the folder."""
        root = str(self.root)
        if not path.strip() or "\0" in path:
            raise PathRefused("give a document path relative to the docs folder, e.g. 'runbooks/on-call.md'")
        if os.path.isabs(path):
            raise PathRefused(f"refused {path!r}: absolute paths are not allowed; give one relative to the docs folder")
        shown = os.path.normpath(path).replace(os.sep, "/")
        if shown == ".." or shown.startswith("../"):
            raise PathRefused(f"refused {path!r}: '..' may not leave the docs folder")
        real = _inside(root, os.path.join(root, path))
        if real is None:
            # Lexically inside, yet realpath left the folder: a symlink points out of it.
            raise PathRefused(f"refused {path!r}: it resolves outside the docs folder")
        if any(part.startswith(".") for part in PurePosixPath(shown).parts) or _hidden(root, real):
            raise PathRefused(f"refused {path!r}: hidden files are not served")
        if Path(real).suffix.lower() not in SUFFIXES or PurePosixPath(shown).suffix.lower() not in SUFFIXES:
            raise PathRefused(f"refused {path!r}: only {', '.join(sorted(SUFFIXES))} files are documents")
        if not os.path.isfile(real):
            raise DocNotFound(f"no document at {path!r}; list_docs shows what exists")
        return shown, Path(real)

    # Reading

    def documents(self) -> list[DocInfo]:
        """Every document, sorted by path."""
        entries = self._refresh().entries
        return [entries[key].info for key in sorted(entries)]

    def read(self, path: str) -> tuple[DocInfo, str]:
        """A document's metadata and full text."""
        shown, real = self.resolve(path)
        stat = real.stat()
        if stat.st_size > MAX_FILE_BYTES:
            raise PathRefused(f"refused {path!r}: larger than {MAX_FILE_BYTES} bytes")
        text = real.read_text(encoding="utf-8", errors="replace")
        return DocInfo(shown, _title(text, shown), stat.st_size, _iso(stat.st_mtime)), text

    def search(self, query: str, limit: int = 5) -> list[DocHit]:
        """Documents ranked by Okapi BM25 against the words of `query`, best first."""
        terms = list(dict.fromkeys(tokenize(query)))
        index = self._refresh()
        if not terms or not index.entries:
            return []
        count = len(index.entries)
        scored: list[tuple[float, str]] = []
        for key, entry in index.entries.items():
            score = 0.0
            # Length normalization: a term in a short document counts for more than in a long one.
            norm = K1 * (1 - B + B * entry.length / (index.avg_length or 1.0))
            for term in terms:
                tf = entry.tf.get(term, 0)
                if not tf:
                    continue
                df = index.df[term]
                idf = math.log(1 + (count - df + 0.5) / (df + 0.5))
                score += idf * tf * (K1 + 1) / (tf + norm)
            if score > 0:
                scored.append((score, key))
        scored.sort(key=lambda item: (-item[0], item[1]))
        hits = []
        for score, key in scored[:limit]:
            entry = index.entries[key]
            line, snippet = _best_line(entry.lines, set(terms))
            hits.append(DocHit(entry.info, round(score, 4), line, snippet))
        return hits

    # Index maintenance

    def _scan(self) -> list[tuple[str, str, os.stat_result]]:
        root = str(self.root)
        found = []
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if name.startswith(".") or Path(name).suffix.lower() not in SUFFIXES:
                    continue
                full = os.path.join(folder, name)
                real = _inside(root, full)
                # A symlink out of the folder, or onto a hidden file or a non-document, is not part of it.
                if (
                    real is None
                    or _hidden(root, real)
                    or Path(real).suffix.lower() not in SUFFIXES
                    or not os.path.isfile(real)
                ):
                    continue
                stat = os.stat(real)
                if stat.st_size > MAX_FILE_BYTES:
                    continue
                found.append(("/".join(Path(os.path.relpath(full, root)).parts), real, stat))
        return found

    def _refresh(self) -> _Snapshot:
        """The index of the folder as it is now, rebuilt only if a file changed."""
        with self._lock:
            files = self._scan()
            signature = tuple((rel, stat.st_mtime_ns, stat.st_size) for rel, _, stat in files)
            if signature == self._snapshot.signature:
                return self._snapshot
            entries: dict[str, _Entry] = {}
            df: Counter[str] = Counter()
            for rel, real, stat in files:
                try:
                    text = Path(real).read_text(encoding="utf-8", errors="replace")
                except OSError:
                    continue  # removed between the walk and the read; the next scan settles it
                title = _title(text, rel)
                tf = Counter(tokenize(text))
                for term in tokenize(title):
                    tf[term] += TITLE_WEIGHT
                entries[rel] = _Entry(
                    DocInfo(rel, title, stat.st_size, _iso(stat.st_mtime)),
                    tuple(text.splitlines()),
                    tf,
                    sum(tf.values()),
                )
                df.update(tf.keys())
            average = sum(e.length for e in entries.values()) / len(entries) if entries else 0.0
            self._snapshot = _Snapshot(signature, entries, df, average)
            return self._snapshot


def _inside(root: str, path: str) -> str | None:
    """The real path of `path` when it lies strictly inside `root` (itself a real path), else None.

    realpath follows every symlink and collapses every `..`, so one containment test
    covers both ways out of the folder.
    """
    real = os.path.realpath(path)
    if real == root or os.path.commonpath([root, real]) != root:
        return None
    return real


def _hidden(root: str, real: str) -> bool:
    return any(part.startswith(".") for part in Path(os.path.relpath(real, root)).parts)


def _best_line(lines: tuple[str, ...], terms: set[str], width: int = 200) -> tuple[int, str]:
    """1-based number and text of the line holding the most distinct query terms."""
    best, best_count = 0, 0
    for number, line in enumerate(lines):
        count = len(terms.intersection(tokenize(line)))
        if count > best_count:
            best, best_count = number, count
    text = " ".join(lines[best].split()) if lines else ""
    return best + 1, text if len(text) <= width else text[: width - 1] + "…"


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
