"""Fixtures of the gateway's end-to-end tests; the helpers live in `gateway_support.py`."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
# This folder (for `gateway_support` and the test upstreams, imported by name) and the
# repository root (for `portal`, when the project is not installed).
for entry in (HERE.parents[1], HERE):
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))

from gateway_support import CLIENT_ERAS, Launcher  # noqa: E402


@pytest.fixture(params=CLIENT_ERAS)
def era(request: pytest.FixtureRequest) -> str:
    """Run a test once per client era: `legacy` (2025-11-25 handshake) and `2026-07-28`."""
    return str(request.param)


@pytest.fixture
async def launch(tmp_path: Path) -> AsyncIterator[Launcher]:
    """Start upstreams and portals: `await launch.upstream("name")`, `await launch.portal(*configs)`."""
    launcher = Launcher(tmp_path)
    try:
        yield launcher
    finally:
        await launcher.aclose()


@pytest.fixture(autouse=True)
def no_crashed_requests(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail a test during which a server let an exception escape a request (uvicorn logs it)."""
    yield
    crashes = [
        record
        for record in caplog.get_records("call")
        if record.name.startswith("uvicorn") and "Exception in ASGI application" in record.getMessage()
    ]
    assert not crashes, f"{len(crashes)} request(s) crashed: {crashes[0].exc_info!r}"
