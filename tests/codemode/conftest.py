"""Fixtures for the Code Mode tests: a recording `call_tool`, and one sandbox for the whole session.

Sandbox workers are subprocesses owned by one long-lived `Sandbox`, shared by every test in the session and closed
once at the end, so no test starts or stops worker pools of its own (except the one test about a small pool).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from codemode_testing import Catalog, FakeTools, load_catalog

from codemode import CodeMode, Limits, Sandbox


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    box = Sandbox(min_workers=2, max_workers=12, checkers=4)
    yield box
    box.close()


@pytest.fixture
def fake_tools() -> FakeTools:
    return FakeTools()


@pytest.fixture
def make_codemode(sandbox: Sandbox, fake_tools: FakeTools) -> Callable[..., CodeMode]:
    """Builds a `CodeMode` over a catalog (the whole corpus by default) on the session sandbox."""

    def make(catalog: Catalog | None = None, *, limits: Limits | None = None, call_tool: Any = None) -> CodeMode:
        return CodeMode(
            catalog if catalog is not None else load_catalog(),
            call_tool or fake_tools,
            limits=limits or Limits(timeout=10),
            sandbox=sandbox,
        )

    return make
