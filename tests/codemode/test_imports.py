"""A run loads, and is checked against, only the server modules its program imports."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from codemode_testing import Catalog, FakeTools, structured_result

from codemode import CodeMode, Limits, Sandbox
from codemode.imports import imported_modules

KNOWN = {"notes", "docs", "slack"}


@pytest.mark.parametrize(
    ("program", "expected"),
    [
        ("1 + 1", set()),
        ("from tools import notes", {"notes"}),
        ("from tools import notes, docs as d, ToolContent", {"notes", "docs"}),
        ("import tools.notes\nimport tools.docs as d", {"notes", "docs"}),
        ("from tools.notes import Note, get_note", {"notes"}),
        ("from tools.slack.deep import x", {"slack"}),
        ("def f() -> None:\n    from tools import docs\n", {"docs"}),
        ("try:\n    import tools.notes\nexcept ImportError:\n    pass\n", {"notes"}),
        ("from tools import admin\nimport tools.secret", set()),  # unknown modules are left out, and refused
        ("import json\nfrom os import path\nfrom . import notes", set()),
    ],
)
def test_the_modules_a_program_imports(program: str, expected: set[str]) -> None:
    assert imported_modules(program, KNOWN) == expected


@pytest.mark.parametrize(
    "program",
    [
        "import tools\nawait tools.notes.get_note(id=1)",
        "import tools as t",
        "from tools import *",
        'exec("from tools import notes")',
        'eval("1")',
        "__import__('tools')",
        "import importlib",
        "def broken(:\n    pass\n",
        "x = 1\0",
    ],
)
def test_programs_that_may_reach_any_module_get_the_whole_package(program: str) -> None:
    assert imported_modules(program, KNOWN) is None


def _catalog(servers: int) -> Catalog:
    tools = [
        {
            "name": "echo",
            "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
            "outputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
        },
        {"name": "ping", "inputSchema": {"type": "object", "properties": {}}},
    ]
    return {f"s{i:02d}": tools for i in range(servers)}


class _Recorder:
    """Stands in for the sandbox's pool and records the `tools` package of every session checked out."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._pool = sandbox.pool
        self.packages: list[set[str]] = []

    def __call__(self) -> _Recorder:
        return self

    def checkout(self, **kwargs: Any) -> Any:
        package = kwargs["external_modules"]["tools"]
        self.packages.append(set(package.attrs))
        return self._pool().checkout(**kwargs)


@pytest.fixture
def recorder(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> Iterator[_Recorder]:
    recorder = _Recorder(sandbox)
    monkeypatch.setattr(sandbox, "pool", recorder)
    yield recorder


@pytest.fixture
def fifty(sandbox: Sandbox, fake_tools: FakeTools) -> CodeMode:
    fake_tools.on("s00.echo", lambda args: structured_result({"text": args["text"]}))
    fake_tools.on("s01.echo", lambda args: structured_result({"text": args["text"] + "!"}))
    return CodeMode(_catalog(50), fake_tools, limits=Limits(timeout=10), sandbox=sandbox)


async def test_importing_one_module_of_fifty_loads_only_that_module(
    fifty: CodeMode, recorder: _Recorder, fake_tools: FakeTools
) -> None:
    assert len(fifty.sdk.modules) == 50
    for _ in range(2):  # the first run starts a checker for the selection, the second finds it warm
        result = await fifty.execute('from tools import s00\n(await s00.echo(text="x"))["text"]')
        assert result.ok and result.value == "x", result
    # Every session the runs checked out (the selection's checker, the runs themselves) had `s00` and nothing else.
    assert recorder.packages and all(package == {"s00", "ToolContent"} for package in recorder.packages)
    assert fake_tools.calls == [("s00", "echo", {"text": "x"})] * 2


async def test_each_import_form_loads_its_modules(fifty: CodeMode, recorder: _Recorder) -> None:
    program = (
        "import tools.s03\n"
        "from tools.s01 import echo\n"
        "from tools import s00\n"
        'a = await s00.echo(text="a")\n'
        'b = await echo(text="b")\n'
        "a['text'] + b['text']"
    )
    result = await fifty.execute(program)
    assert result.ok and result.value == "ab!", result
    assert recorder.packages[-1] == {"s00", "s01", "s03", "ToolContent"}


async def test_a_type_error_keeps_its_line_against_a_selection(fifty: CodeMode, fake_tools: FakeTools) -> None:
    result = await fifty.execute('from tools import s00\n\nx = 1\nawait s00.echo(txt="x")\n')
    assert result.error is not None and result.error.kind == "type_error", result
    assert result.error.line == 4 and result.error.message.startswith("main.py:4:")
    assert fake_tools.calls == []


@pytest.mark.parametrize(
    ("program", "kind"),
    [
        ("from tools import s99\n", "type_error"),
        ("import tools.admin\n", "type_error"),
        ("from tools.s00 import delete_all\n", "type_error"),
        # A forged name finds nothing at run time, as before.
        ('from tools import s00\nf = getattr(s00, "nope")\n', "runtime_error"),
        ('exec("import tools.admin\\ntools.admin.delete_all()")\n', "runtime_error"),
    ],
)
async def test_unknown_modules_and_forged_names_are_still_refused(
    fifty: CodeMode, fake_tools: FakeTools, program: str, kind: str
) -> None:
    result = await fifty.execute(program)
    assert result.error is not None and result.error.kind == kind, result
    assert fake_tools.calls == []


async def test_dynamic_imports_still_reach_every_module(fifty: CodeMode, recorder: _Recorder) -> None:
    result = await fifty.execute('exec("from tools import s01\\nprint(s01.echo)")\n')
    assert result.ok, result
    assert len(recorder.packages[-1]) == 51  # the whole package: every server module and ToolContent


def test_selections_are_deterministic(sandbox: Sandbox) -> None:
    one = CodeMode(_catalog(5), sandbox=sandbox)
    two = CodeMode(_catalog(5), sandbox=sandbox)
    program = "from tools import s03, s01\nimport tools.s01"
    first, second = one._modules.select(program), two._modules.select(program)
    assert first.module_names == second.module_names == ["s01", "s03"]
    assert first.key == second.key != one._modules.select("from tools import s01").key
    assert one._modules.select(program) is first  # cached
    assert one._modules.select("import tools").key == one._modules.whole.key
