"""Which server modules of the `tools` package a program imports, read from its source before it runs.

A run loads, and type-checks against, only the server modules its program names in import statements:
`from tools import a, b`, `import tools.a`, `from tools.a import f` (anywhere in the program). Loading the whole
package costs time in proportion to the catalog (every module's functions and types cross into the sandbox), while a
program rarely uses more than a few servers.

When the imports cannot be known from the source, the answer is `None`, meaning "the whole package", which is
exactly what every run got before: a program that does not parse here (the sandbox reports its syntax error), a
bare `import tools` or `from tools import *`, and a program that could import at run time what it does not name
(`exec`, `eval`, `__import__`, `compile`). The choice is never a security boundary: a run's package is always a part
of the caller's SDK, and a name that is not in the selection is refused exactly as an unknown module is.
"""

from __future__ import annotations

import ast
from collections.abc import Collection

from codemode.sdk import PACKAGE

__all__ = ["imported_modules"]

# Names through which a program can run code, hence imports, that its source does not show.
_DYNAMIC = frozenset({"exec", "eval", "compile", "__import__", "importlib", "__builtins__", "builtins"})


def imported_modules(code: str, known: Collection[str]) -> frozenset[str] | None:
    """The server modules among `known` that `code` imports, or None when the program needs the whole package."""
    try:
        tree = ast.parse(code)
    except Exception:  # SyntaxError, ValueError (null bytes), RecursionError, MemoryError: let the sandbox judge
        return None
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in _DYNAMIC:
            return None
        if isinstance(node, ast.Attribute) and node.attr in _DYNAMIC:
            return None
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] in _DYNAMIC:
                    return None
                if parts[0] == PACKAGE:
                    if len(parts) == 1:
                        return None  # `import tools`: any module may be reached through it
                    found.add(parts[1])
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None:
            parts = node.module.split(".")
            if parts[0] in _DYNAMIC:
                return None
            if parts[0] != PACKAGE:
                continue
            if len(parts) > 1:
                found.add(parts[1])
                continue
            for alias in node.names:
                if alias.name == "*":
                    return None
                found.add(alias.name)
    # Unknown names are left out: the sandbox refuses them as it refuses any module the SDK does not have.
    return frozenset(name for name in found if name in known)
