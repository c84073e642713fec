"""A benchmark's helper processes: started with their output in a log, stopped however the run ends."""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

__all__ = ["running"]


@contextlib.contextmanager
def running(
    argv: list[str], log: Path, *, cwd: Path, env: dict[str, str] | None = None, grace: float = 10.0
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `argv` for the block; SIGINT at the end (a clean shutdown), SIGKILL after `grace` seconds."""
    with log.open("wb") as out:
        child = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        yield child
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGINT)
            try:
                child.wait(grace)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(5)
