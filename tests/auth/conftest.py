"""Fixtures of the authorization-server tests; the helpers live in `auth_support.py`."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
for entry in (HERE.parents[1], HERE):
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))

from auth_support import Browser, PortalUnderTest, start_portal  # noqa: E402


@pytest.fixture
async def portal(tmp_path: Path) -> AsyncIterator[PortalUnderTest]:
    """A running authorization server with user `alice` (group `eng`, granted `tools:*` and `codemode`)."""
    running = await start_portal(tmp_path)
    try:
        yield running
    finally:
        await running.stop()


@pytest.fixture
async def browser(portal: PortalUnderTest) -> AsyncIterator[Browser]:
    """Alice at her browser."""
    person = Browser(portal)
    try:
        yield person
    finally:
        await person.close()
