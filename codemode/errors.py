"""Turning sandbox failures into `ExecuteError`s that are safe to hand to a model.

Monty reports program errors with tracebacks against the virtual `main.py`; those pass through. Failures of the
machinery itself (a crashed worker, a host-side bug) could mention host paths or state, so they become fixed
messages. As a last line of defence every message is scrubbed of this host's own directories.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from functools import cache
from pathlib import Path

from pydantic_monty import (
    MontyCrashedError,
    MontyError,
    MontyRuntimeError,
    MontySyntaxError,
    MontyTypingError,
)

from codemode.outcome import ExecuteError, Limits

__all__ = ["Abort", "classify", "scrub"]

_DIAGNOSTIC_LINE = re.compile(r"^main\.py:(\d+):", re.MULTILINE)
_MAX_MESSAGE = 8_000
_INPUT_NAME = re.compile(r'"<python-input-\d+>"')


class Abort(Exception):
    """Stops a run with a given error (a limit, the deadline)."""

    def __init__(self, error: ExecuteError) -> None:
        super().__init__(error.message)
        self.error = error


def classify(failure: MontyError, *, output_overflow: bool, limits: Limits) -> ExecuteError:
    """The `ExecuteError` for an exception raised by the sandbox."""
    if isinstance(failure, MontyTypingError):
        text = failure.display()
        match = _DIAGNOSTIC_LINE.search(text)
        return ExecuteError("type_error", _clip(scrub(text.strip())), int(match.group(1)) if match else None)
    if isinstance(failure, MontySyntaxError):
        return ExecuteError("syntax_error", _clip(scrub(failure.display("type-msg"))), _line(failure))
    if output_overflow:  # the worker was stopped for printing too much, whatever error that surfaced as
        return ExecuteError("output_limit", f"the run produced more than {limits.output} bytes of output")
    if isinstance(failure, MontyCrashedError):
        # The worker died (killed at the deadline, or a crash it could not contain); its message names host details.
        return ExecuteError("sandbox_error", "the sandbox worker stopped unexpectedly; the program did not finish")
    if isinstance(failure, MontyRuntimeError):
        inner = failure.exception()
        summary = failure.display("type-msg")
        if isinstance(inner, MemoryError):
            return ExecuteError("memory_limit", f"the program used more than {limits.memory} bytes of memory")
        if isinstance(inner, TimeoutError) and "time limit" in summary:
            return ExecuteError("timeout", f"the run exceeded its {limits.timeout:g} s time limit")
        if isinstance(inner, RuntimeError) and "suspension limit" in summary:
            return ExecuteError("tool_call_limit", "the program made too many calls to the host")
        text = _INPUT_NAME.sub('"main.py"', failure.display("traceback").strip())
        return ExecuteError("runtime_error", _clip(scrub(text)), _line(failure))
    return ExecuteError("sandbox_error", "the sandbox failed; the program did not finish")


def _line(failure: MontySyntaxError | MontyRuntimeError) -> int | None:
    frames = [frame for frame in failure.traceback() if _is_program(frame.filename)]
    return frames[-1].line if frames else None


def _is_program(filename: str) -> bool:
    # A run's one feed is the program; Monty names it after the script, or `<python-input-0>` in a driven feed.
    return filename == "main.py" or filename.startswith("<python-input-")


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE else text[:_MAX_MESSAGE] + "\n…"


@cache
def _host_paths() -> tuple[str, ...]:
    candidates = {sys.prefix, sys.exec_prefix, sys.base_prefix, os.getcwd(), str(Path.home()), tempfile.gettempdir()}
    candidates |= {str(Path(__file__).resolve().parent.parent)}
    # Longest first, so a nested path is replaced before its parent; bare "/" and short names would hit everything.
    return tuple(sorted((path for path in candidates if len(path) > 4), key=len, reverse=True))


def scrub(text: str) -> str:
    """`text` with this host's own directories (interpreter, project, home, working and temp dirs) masked."""
    for path in _host_paths():
        if path in text:
            text = text.replace(path, "<host>")
    return text
