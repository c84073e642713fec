"""A small TOML writer, the inverse of `tomllib` for the shapes `portal.toml` uses.

The standard library reads TOML but does not write it, and the portal only ever
writes configuration it generated itself (`portal demo`), so a writer for tables,
arrays of tables, strings, numbers, booleans, arrays and inline tables is enough.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["dumps"]

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def dumps(data: Mapping[str, Any], *, header: str = "") -> str:
    """`data` as a TOML document; `header` becomes leading `#` comment lines."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    if lines:
        lines.append("")
    _table(lines, data, nested=False)
    text = "\n".join(lines).strip("\n") + "\n"
    # Each table starts with a blank line; one after the header is enough.
    return re.sub(r"\n{3,}", "\n\n", text)


def _is_table(value: Any) -> bool:
    return isinstance(value, Mapping)


def _is_table_array(value: Any) -> bool:
    return _is_sequence(value) and bool(value) and all(isinstance(item, Mapping) for item in value)


def _is_sequence(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str | bytes)


def _table(lines: list[str], table: Mapping[str, Any], *, nested: bool) -> None:
    # Plain keys first: once a [header] follows, later keys would belong to that table.
    # Below the top level, maps stay inline (`env = { K = "v" }`), as a person would write them.
    for key, value in table.items():
        if nested or not (_is_table(value) or _is_table_array(value)):
            lines.append(f"{_key(key)} = {_value(value)}")
    if nested:
        return
    for key, value in table.items():
        if _is_table(value):
            lines += ["", f"[{_key(key)}]"]
            _table(lines, value, nested=True)
    for key, value in table.items():
        if _is_table_array(value):
            for item in value:
                lines += ["", f"[[{_key(key)}]]"]
                _table(lines, item, nested=True)


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }"
    if _is_sequence(value):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _string(text: str) -> str:
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            # TOML basic strings forbid raw control characters.
            out.append(f"\\u{ord(char):04X}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'
