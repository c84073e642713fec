"""Helpers shared by the tests of `servers/`.

Imported by name (`from servers_testing import ...`): pytest puts this folder on
`sys.path` because it has no `__init__.py` (a package here would be named
`servers` and shadow the real one).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from mcp.types import CallToolResult

__all__ = ["ERAS", "REPO_ROOT", "error_text", "free_port", "ok", "start_http_server", "stop", "subprocess_env"]

REPO_ROOT = Path(__file__).resolve().parents[2]

ERAS = ("legacy", "2026-07-28")
"""Client modes: the 2025-11-25 initialize handshake, and the stateless 2026-07-28 era."""


def ok(result: CallToolResult) -> dict[str, Any]:
    """The structured content of a successful tool call (fails the test on an error result)."""
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content


def error_text(result: CallToolResult) -> str:
    """The message of a tool-error result (fails the test on success)."""
    assert result.is_error, result.structured_content
    return " ".join(getattr(block, "text", "") for block in result.content)


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def subprocess_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test's environment plus `extra`, with the repository importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


def start_http_server(
    module: str, log: IO[bytes], env: Mapping[str, str] | None = None, timeout: float = 20.0
) -> tuple[subprocess.Popen[bytes], str]:
    """Run `python -m <module> --http` on a free loopback port; return the process and its MCP URL.

    Waits until the port accepts connections. Output goes to `log`, a file rather than
    a pipe, so a chatty server can never block on a full pipe.
    """
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", module, "--http", "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO_ROOT,
        env=subprocess_env(env),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.flush()
            raise RuntimeError(f"{module} exited with status {process.returncode}; see {log.name}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process, f"http://127.0.0.1:{port}/mcp"
        except OSError:
            time.sleep(0.05)
    stop(process)
    raise RuntimeError(f"{module} did not listen on 127.0.0.1:{port} within {timeout} s")


def stop(process: subprocess.Popen[Any]) -> None:
    """Terminate `process`, killing it if it does not exit in time."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
