"""RFC 8785 JSON Canonicalization Scheme (JCS): the bytes the audit hash chain covers.

Object members are sorted by their UTF-16 code units, strings use the minimal JSON
escapes, and numbers are written as ECMAScript writes them (integers without a
fraction, no `+` in short exponents). Audit records only hold JSON values
(str, int, float, bool, None, list, dict), so that is all this accepts.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

__all__ = ["canonical_json", "canonical_row"]

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def canonical_json(value: Any) -> bytes:
    """The RFC 8785 canonical encoding of `value`, as UTF-8."""
    if _orjson_safe(value):
        # Without floats and with ASCII keys, orjson's sorted compact output is byte for byte
        # RFC 8785 (same minimal escapes, lowercase `\u00xx`, integers as digits, code point
        # order = UTF-16 order for ASCII), at a twentieth of the cost: the chain hashes every record.
        try:
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        except (TypeError, orjson.JSONEncodeError):
            pass  # integers beyond 64 bits, lone surrogates: the reference encoder decides
    parts: list[str] = []
    _encode(value, parts)
    return "".join(parts).encode("utf-8")


_SCALARS = frozenset({str, int, bool, type(None)})
_ROW_TYPES = _SCALARS | {list, dict}


def canonical_row(row: dict[str, Any], nested: tuple[str, ...]) -> bytes:
    """`canonical_json(row)` for a database row whose only containers are the members named in
    `nested` (an audit record: its other columns cannot hold one), checking those alone in depth."""
    if (
        _ROW_TYPES.issuperset(map(type, row.values()))
        and all(_orjson_safe(row[name]) for name in nested if name in row)
        and all(key.isascii() for key in row)
    ):
        try:
            return orjson.dumps(row, option=orjson.OPT_SORT_KEYS)
        except (TypeError, orjson.JSONEncodeError):
            pass
    return canonical_json(row)


def _orjson_safe(value: Any) -> bool:
    kind = type(value)
    if kind in _SCALARS:
        return True
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or not key.isascii():
                return False
            if type(item) not in _SCALARS and not _orjson_safe(item):
                return False
        return True
    if kind is list or kind is tuple:
        return all(type(item) in _SCALARS or _orjson_safe(item) for item in value)
    return False


def _string(text: str) -> str:
    out = ['"']
    for char in text:
        escaped = _ESCAPES.get(char)
        if escaped is not None:
            out.append(escaped)
        elif char < " ":
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def _number(value: float) -> str:
    if math.isnan(value) or math.isinf(value):
        raise ValueError("JSON has no NaN or Infinity")
    if value == 0:
        return "0"
    if value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    text = repr(value)
    if "e" not in text:
        return text
    mantissa, exponent = text.split("e")
    if mantissa.endswith(".0"):
        mantissa = mantissa[:-2]
    sign = "-" if exponent.startswith("-") else "+"
    return f"{mantissa}e{sign}{int(exponent.lstrip('+-'))}"


def _utf16_key(key: str) -> bytes:
    return key.encode("utf-16-be")


def _encode(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, float):
        out.append(_number(value))
    elif isinstance(value, str):
        out.append(_string(value))
    elif isinstance(value, list | tuple):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _encode(item, out)
        out.append("]")
    elif isinstance(value, dict):
        out.append("{")
        for index, key in enumerate(sorted(value, key=_utf16_key)):
            if not isinstance(key, str):
                raise TypeError(f"JSON object keys must be strings, not {type(key).__name__}")
            if index:
                out.append(",")
            out.append(_string(key))
            out.append(":")
            _encode(value[key], out)
        out.append("}")
    else:
        raise TypeError(f"not a JSON value: {type(value).__name__}")
