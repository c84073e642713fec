"""What a run may use (`Limits`) and what it gives back (`ExecuteResult`).

Every failure a run can meet has one `ErrorKind`, so a caller (and the model reading the result) can tell a typo
in the program from a tool that failed from a limit that stopped it, without parsing messages.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = ["CallRecord", "ErrorKind", "ExecuteError", "ExecuteResult", "Limits"]

ErrorKind = Literal[
    "syntax_error",  # the program does not parse; nothing ran
    "type_error",  # the program does not type-check against the SDK; nothing ran
    "runtime_error",  # an exception the program did not catch (a failed tool call included)
    "timeout",  # wall-clock limit, time spent waiting on tools included
    "memory_limit",  # the sandbox heap outgrew its limit
    "tool_call_limit",  # the program tried to make more tool calls than allowed
    "output_limit",  # printed output or the final value outgrew its limit
    "code_limit",  # the program text itself is too long
    "sandbox_error",  # the sandbox failed for a reason of its own; the program may not be at fault
]


@dataclass(frozen=True)
class Limits:
    """Bounds on one `execute` run. All are enforced; none can be changed from inside the sandbox."""

    timeout: float = 30.0
    """Wall-clock seconds for the whole run, including time spent waiting on tools and sleeping."""
    memory: int = 64 * 1024 * 1024
    """Bytes the sandbox heap may hold."""
    tool_calls: int = 50
    """Tool calls one run may start."""
    output: int = 64 * 1024
    """Bytes of printed output, and separately bytes of the final value as JSON."""
    recursion: int = 200
    """Depth of nested function calls in the program."""
    code: int = 100_000
    """Characters of program text."""

    def __post_init__(self) -> None:
        for name in ("timeout", "memory", "tool_calls", "output", "recursion", "code"):
            if getattr(self, name) <= 0:
                raise ValueError(f"Limits.{name} must be positive")


@dataclass(frozen=True)
class ExecuteError:
    """Why a run failed. `message` is safe to show the model: it names no host path and holds no host secret."""

    kind: ErrorKind
    message: str
    line: int | None = None


@dataclass(frozen=True)
class CallRecord:
    """One tool call a run made, in the order calls were started."""

    server: str
    tool: str
    ok: bool
    duration_ms: float


@dataclass(frozen=True)
class ExecuteResult:
    """The outcome of one `execute` run."""

    output: str
    """Everything the program printed (stdout and stderr interleaved), up to the output limit."""
    value: Any = None
    """The value of the program's last expression statement, as plain JSON data; None when there is none."""
    error: ExecuteError | None = None
    calls: tuple[CallRecord, ...] = field(default_factory=tuple)
    duration_ms: float = 0.0
    """Wall-clock time of the whole run."""
    tool_ms: float = 0.0
    """Wall-clock time during which at least one tool call was in flight."""
    warning: str | None = None
    """Something the program probably got wrong without failing, such as a tool call it never awaited."""

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        """The result as the `execute` tool's structured content."""
        return {
            "ok": self.ok,
            "output": self.output,
            "value": self.value,
            "error": asdict(self.error) if self.error else None,
            "calls": [asdict(call) for call in self.calls],
            "duration_ms": round(self.duration_ms, 3),
            "warning": self.warning,
        }

    def to_text(self) -> str:
        """The result as text for the model: output, then the value or the error."""
        parts = [self.output.rstrip("\n")] if self.output else []
        if self.warning:
            parts.append(f"[warning] {self.warning}")
        if self.error is not None:
            where = f" (line {self.error.line})" if self.error.line else ""
            parts.append(f"[{self.error.kind}{where}] {self.error.message}")
        elif self.value is not None:
            parts.append("=> " + json.dumps(self.value, ensure_ascii=False))
        return "\n".join(parts) if parts else "(no output)"
