"""Fixtures for every test: reaching the PostgreSQL and Redis that some tests need.

Each is named by an environment variable (`scripts/test.sh` points them at the local
services). A test that needs one it cannot reach is skipped, saying why; with
`PORTAL_REQUIRE_SERVICES=1` (CI) it fails instead, so that a missing service can
never hide behind a skip.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

import pytest


def _unavailable(reason: str) -> None:
    if os.environ.get("PORTAL_REQUIRE_SERVICES") == "1":
        pytest.fail(f"PORTAL_REQUIRE_SERVICES=1 but {reason}")
    pytest.skip(reason)


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture
def postgres_url() -> str:
    url = os.environ.get("PORTAL_TEST_POSTGRES_URL")
    if not url:
        _unavailable("PORTAL_TEST_POSTGRES_URL is not set (e.g. postgresql://postgres@127.0.0.1:5432/test)")
    elif not _reachable(url, 5432):
        _unavailable(f"PostgreSQL at {urlsplit(url).netloc} is not reachable")
    assert url is not None
    return url


@pytest.fixture
def redis_url() -> str:
    url = os.environ.get("PORTAL_TEST_REDIS_URL")
    if not url:
        _unavailable("PORTAL_TEST_REDIS_URL is not set (e.g. redis://127.0.0.1:6379/0)")
    elif not _reachable(url, 6379):
        _unavailable(f"Redis at {urlsplit(url).netloc} is not reachable")
    assert url is not None
    return url
