"""Fixtures for the tests of the internal servers in `servers/`.

Servers are driven with the real SDK client: in-process for most tests (once per
protocol era), and as real subprocesses (stdio, Streamable HTTP on loopback) where
the transport itself is under test.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from subprocess import Popen

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

# Make `servers` (and the helpers next to this file) importable even when the
# project is not installed and pytest was started without the root on sys.path.
for entry in (REPO_ROOT, Path(__file__).resolve().parent):
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))

from servers_testing import ERAS, start_http_server, stop  # noqa: E402

HttpStarter = Callable[..., str]


@pytest.fixture(params=ERAS)
def era(request: pytest.FixtureRequest) -> str:
    """Run a test once per protocol era: 'legacy' (handshake) and '2026-07-28' (stateless)."""
    return str(request.param)


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[HttpStarter]:
    """A starter: `http_server("servers.clock", env={...})` runs that module over HTTP and returns its URL.

    Every process started is stopped when the test ends.
    """
    started: list[Popen[bytes]] = []
    logs = []

    def start(module: str, env: Mapping[str, str] | None = None) -> str:
        log = (tmp_path / f"{module}.{len(started)}.log").open("wb")
        logs.append(log)
        process, url = start_http_server(module, log, env)
        started.append(process)
        return url

    yield start
    for process in started:
        stop(process)
    for log in logs:
        log.close()
