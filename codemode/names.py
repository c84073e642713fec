"""Python-safe names for servers, tools, arguments and generated types.

Tool catalogs come from arbitrary MCP servers: names may be Python keywords (`from`, `class`), may hold characters
an identifier cannot (`user-id`, `$filter`, `list.items`), may start with a digit, or may collide once cleaned. Every
name the SDK shows is made from the real one here, deterministically, and callers keep the mapping back.
"""

from __future__ import annotations

import keyword
import re

__all__ = [
    "RESERVED_MODULE_NAMES",
    "STUB_NAMES",
    "Namespace",
    "identifier",
    "module_name",
    "pascal_case",
    "public_identifier",
]

_INVALID = re.compile(r"[^0-9A-Za-z_]+")
_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_WORD_BREAK = re.compile(r"[^0-9A-Za-z]+")

STUB_NAMES = frozenset({"Any", "Literal", "NotRequired", "TypedDict", "ToolContent", "annotations"})
"""Names a generated stub module imports or defines itself; no tool function or generated type may take them."""

RESERVED_MODULE_NAMES = frozenset(
    {
        "abc",
        "asyncio",
        "base64",
        "builtins",
        "collections",
        "copy",
        "dataclasses",
        "datetime",
        "decimal",
        "enum",
        "functools",
        "hashlib",
        "itertools",
        "json",
        "math",
        "os",
        "pathlib",
        "random",
        "re",
        "sys",
        "time",
        "types",
        "typing",
        "typing_extensions",
    }
)
"""Modules the sandbox provides: `from tools import json` would shadow the real one, so such servers get a `_`."""


def identifier(name: str, *, fallback: str = "x") -> str:
    """A valid, non-keyword Python identifier made from `name`.

    Runs of characters an identifier cannot hold become one `_`; a leading digit gains a `_` prefix; a keyword gains
    a `_` suffix, as PEP 8 suggests. Soft keywords (`match`, `type`) are valid names and stay as they are, which also
    keeps the output the same on every Python version.
    """
    cleaned = _INVALID.sub("_", name.strip()) or fallback
    if cleaned[0].isdigit():
        cleaned = "_" + cleaned
    if keyword.iskeyword(cleaned):
        cleaned += "_"
    return cleaned


def public_identifier(name: str, *, prefix: str) -> str:
    """An identifier that does not start with `_`, for module attributes: the sandbox hides `_`-prefixed ones.

    Leading underscores are dropped; a name that would then start with a digit, or be empty, gains `prefix`.
    """
    cleaned = identifier(name, fallback=prefix).lstrip("_")
    if not cleaned or cleaned[0].isdigit():
        cleaned = f"{prefix}_{cleaned}" if cleaned else prefix
    return cleaned


def module_name(server: str) -> str:
    """The sandbox module name of a server: a lower-case public identifier, so `-` becomes `_`."""
    name = public_identifier(server.lower(), prefix="server")
    if name in RESERVED_MODULE_NAMES:
        name += "_"
    return name


def pascal_case(text: str, *, fallback: str = "Model") -> str:
    """A PascalCase class name from free text such as a schema title (`create_noteArguments`, `Created At`)."""
    text = _CAMEL_BOUNDARY.sub(" ", text)
    words = [word for word in _WORD_BREAK.split(text) if word]
    name = "".join(word[:1].upper() + word[1:] for word in words)
    if not name:
        return fallback
    if name[0].isdigit():
        name = fallback + name
    if keyword.iskeyword(name):
        name += "_"
    return name


class Namespace:
    """Hands out unique names within one scope, in call order, so generation stays deterministic.

    A wanted name already taken gets the first free numeric suffix (`name_2`, or `Name2` with `separator=""`).
    """

    def __init__(self, taken: frozenset[str] | set[str] = STUB_NAMES) -> None:
        self._taken: set[str] = set(taken)

    def __contains__(self, name: object) -> bool:
        return name in self._taken

    def claim(self, wanted: str, *, separator: str = "_") -> str:
        """Reserve `wanted`, or the first free suffixed variant of it, and return what was reserved."""
        name = wanted
        counter = 2
        while name in self._taken:
            name = f"{wanted}{separator}{counter}"
            counter += 1
        self._taken.add(name)
        return name

    def release(self, name: str) -> None:
        """Give back a name claimed but not used (a generated type that turned out identical to an earlier one)."""
        self._taken.discard(name)
