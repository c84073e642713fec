"""Safe rendering of untrusted text into generated Python source.

Descriptions, enum values and defaults come from tool servers. They end up inside stubs that the type checker parses
and the model reads, so each is rendered in a form that cannot break out of its place: a docstring cannot close early,
a comment cannot start a new line, a literal is always a valid Python literal.
"""

from __future__ import annotations

import inspect
import math
import re
from typing import Any

__all__ = ["comment", "docstring", "first_sentence", "literal", "one_line"]

_SPACES = re.compile(r"\s+")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s")
_LITERAL_MAX = 60


def one_line(text: str) -> str:
    """`text` with every run of whitespace, newlines included, collapsed to one space."""
    return _SPACES.sub(" ", _CONTROL.sub("", text)).strip()


def first_sentence(text: str, limit: int = 120) -> str:
    """The first sentence (or line) of `text`, at most `limit` characters: what a compact listing shows."""
    paragraph = text.strip().split("\n\n", 1)[0]
    flat = one_line(paragraph)
    match = _SENTENCE_END.search(flat)
    sentence = flat[: match.start()] if match else flat
    if len(sentence) > limit:
        sentence = sentence[: limit - 1].rstrip() + "…"
    return sentence


def comment(text: str) -> str:
    """A trailing `# ...` comment holding `text` on one line (empty when there is no text)."""
    flat = one_line(text)
    return f"  # {flat}" if flat else ""


def docstring(text: str, indent: str) -> list[str]:
    """Lines of a triple-quoted docstring holding `text`, indented by `indent`.

    Backslashes and quote runs are escaped so the text can neither end the string nor form escape sequences.
    """
    # cleandoc: descriptions taken from docstrings keep their source indentation on every line but the first.
    body = inspect.cleandoc(_CONTROL.sub("", text)).replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    if body.endswith('"'):
        body = body[:-1] + '\\"'
    lines = [line.rstrip() for line in body.splitlines()] or [""]
    if len(lines) == 1:
        return [f'{indent}"""{lines[0]}"""']
    out = [f'{indent}"""{lines[0]}']
    out.extend(f"{indent}{line}" if line else "" for line in lines[1:])
    out.append(f'{indent}"""')
    return out


def literal(value: Any) -> str | None:
    """`value` (decoded JSON) as a short Python literal, or None when it has no short, exact one."""
    if value is None or isinstance(value, bool | int | str):
        text = repr(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            return None
        text = repr(value)
    elif isinstance(value, list | dict):
        try:
            text = repr(_plain(value))
        except TypeError:
            return None
    else:
        return None
    return text if len(text) <= _LITERAL_MAX else None


def _plain(value: Any) -> Any:
    # JSON containers hold only JSON values; anything else (NaN included) has no faithful literal.
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        raise TypeError("non-finite float")
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(type(value).__name__)
