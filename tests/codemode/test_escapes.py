"""Sandbox escape attempts: each must be refused cleanly, reach nothing on the host, and leave the sandbox serving.

Many attempts come twice: as written (the type checker refuses them before anything runs) and inside `exec`, whose
string the checker never sees, so the sandbox itself has to refuse them at run time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from codemode_testing import FakeTools, load_catalog, structured_result

from codemode import CodeMode, Limits, Sandbox, ToolCallError

CANARY = "canary-7f3a9c-do-not-leak"
BEFORE_RUN = {"type_error", "syntax_error", "code_limit"}
AT_RUN = {"runtime_error"}

# (name, program, the error kinds that count as a clean refusal)
ATTEMPTS: list[tuple[str, str, set[str]]] = [
    # Imports of what the sandbox does not have
    ("os.system", "import os\nos.system('id')\n", BEFORE_RUN),
    ("os.system via exec", "exec(\"import os\\nos.system('id')\")\n", AT_RUN),
    ("subprocess", "import subprocess\nsubprocess.run(['id'])\n", BEFORE_RUN),
    ("subprocess via exec", "exec('import subprocess')\n", AT_RUN),
    ("socket", "import socket\nsocket.create_connection(('example.com', 80))\n", BEFORE_RUN),
    ("socket via exec", 'exec("import socket\\nsocket.socket()")\n', AT_RUN),
    ("ctypes via exec", "exec('import ctypes')\n", AT_RUN),
    ("importlib via exec", "exec(\"import importlib\\nimportlib.import_module('os')\")\n", AT_RUN),
    ("__import__", "__import__('os').system('id')\n", BEFORE_RUN),
    ("__import__ via exec", "exec(\"__import__('os')\")\n", AT_RUN),
    # Files and environment
    ("open a host file", "open('{canary_file}').read()\n", BEFORE_RUN),
    ("open via exec", "exec(\"print(open('{canary_file}').read())\")\n", AT_RUN),
    ("pathlib via exec", "exec(\"import pathlib\\nprint(pathlib.Path('{canary_file}').read_text())\")\n", AT_RUN),
    (
        "pathlib write via exec",
        "exec(\"import pathlib\\npathlib.Path('/tmp/codemode-pwned').write_text('x')\")\n",
        AT_RUN,
    ),
    ("os.getenv", "import os\nprint(os.getenv('CODEMODE_CANARY'))\n", AT_RUN),
    ("os.environ via exec", 'exec("import os\\nprint(dict(os.environ))")\n', AT_RUN),
    ("sys.modules via exec", "exec(\"import sys\\nprint(sys.modules['os'])\")\n", AT_RUN),
    # Introspection
    ("__subclasses__", "().__class__.__bases__[0].__subclasses__()\n", BEFORE_RUN | AT_RUN),
    ("__subclasses__ via exec", "exec('print(().__class__.__bases__[0].__subclasses__())')\n", AT_RUN),
    ("__globals__ of a tool", "from tools import notes\nnotes.get_note.__globals__\n", BEFORE_RUN | AT_RUN),
    ("module __dict__ via exec", 'exec("from tools import notes\\nprint(notes.__dict__)")\n', AT_RUN),
    ("frames via sys._getframe", 'exec("import sys\\nprint(sys._getframe().f_globals)")\n', AT_RUN),
    ("frames via a generator", "exec('def g():\\n    yield 1\\nprint(g().gi_frame.f_back)')\n", AT_RUN),
    (
        "frames via a traceback",
        "exec('try:\\n    1/0\\nexcept Exception as e:\\n    e.__traceback__.tb_frame')\n",
        AT_RUN,
    ),
    ("gc.get_objects via exec", 'exec("import gc\\nprint(gc.get_objects())")\n', AT_RUN),
    ("globals() and builtins", "globals()['__builtins__']\n", BEFORE_RUN),
    ("breakpoint", "breakpoint()\n", BEFORE_RUN),
    # Resource exhaustion
    ("string bomb", "x = 'a' * 10**10\n", {"memory_limit"}),
    ("list growth", "x = []\nwhile True:\n    x.append([0] * 1000)\n", {"memory_limit"}),
    (
        "memory bomb caught",
        "try:\n    x = [0] * 10**9\nexcept BaseException:\n    pass\n'survived'\n",
        {"memory_limit"},
    ),
    ("huge integer", "x = 7 ** (10**9)\n", {"memory_limit", "runtime_error", "timeout"}),
    ("random bytes bomb", 'exec("import os\\nos.urandom(10**9)")\n', {"memory_limit", "runtime_error"}),
    ("infinite loop", "while True:\n    pass\n", {"timeout"}),
    (
        "loop catching timeouts",
        "while True:\n    try:\n        while True:\n            pass\n    except BaseException:\n        pass\n",
        {"timeout"},
    ),
    ("long sleep", "import time\ntime.sleep(10**6)\n", {"timeout"}),
    (
        "sleep flood",
        "import asyncio\nawait asyncio.gather(*[asyncio.sleep(100) for _ in range(100000)])\n",
        {"timeout", "tool_call_limit", "memory_limit"},
    ),
    ("recursion", "def f(n: int) -> int:\n    return f(n + 1) + 1\nf(0)\n", {"runtime_error"}),
    ("native recursion", "def k(x: int) -> int:\n    return sorted([1, 2], key=k)[0]\nk(1)\n", {"runtime_error"}),
    ("nested source", "x = " + "(" * 5000 + "1" + ")" * 5000 + "\n", BEFORE_RUN | {"runtime_error"}),
    ("nested json", "import json\njson.loads('[' * 100000)\n", {"runtime_error"}),
    ("print flood", "while True:\n    print('x' * 1000)\n", {"output_limit"}),
    ("huge value", "'x' * 100_000\n", {"output_limit"}),
    ("huge program", "x = 1\n" * 20_000, {"code_limit"}),
    ("tool call flood", "from tools import notes\nwhile True:\n    await notes.get_note(id=1)\n", {"tool_call_limit"}),
    ("exit the interpreter", "raise SystemExit(0)\n", AT_RUN),
    # Tools that are not in the SDK, forged names, denied calls
    ("hidden tool by import", "from tools.notes import delete_note\nawait delete_note(id=1)\n", BEFORE_RUN),
    ("hidden tool by attribute", "from tools import notes\nawait notes.delete_note(id=1)\n", BEFORE_RUN),
    ("hidden tool via exec", 'exec("from tools import notes\\nnotes.delete_note(id=1)")\n', AT_RUN),
    ("hidden tool via getattr", "from tools import notes\nf = getattr(notes, 'delete_note')\nawait f(id=1)\n", AT_RUN),
    ("forged bare name", "exec('delete_note(id=1)')\n", AT_RUN),
    ("forged dotted name", "exec('tools.notes.delete_note(id=1)')\n", AT_RUN),
    ("forged module", 'exec("import tools.admin\\ntools.admin.delete_note(id=1)")\n', AT_RUN),
    ("rebinding a tool", 'exec("from tools import notes\\nnotes.delete_note = notes.get_note")\n', AT_RUN),
    ("denied by policy", "from tools import notes\nawait notes.update_note(id=1, title='x')\n", AT_RUN),
    ("positional arguments", 'exec("from tools import notes\\nnotes.get_note(1)")\n', AT_RUN | {"type_error"}),
]


@pytest.fixture
def hostile(sandbox: Sandbox, fake_tools: FakeTools, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CodeMode:
    monkeypatch.setenv("CODEMODE_CANARY", CANARY)
    (tmp_path / "secret.txt").write_text(CANARY)
    catalog = load_catalog("demo")
    # The caller may not see delete_note: it is not in their SDK, though the server still has it.
    catalog["notes"] = [tool for tool in catalog["notes"] if tool["name"] != "delete_note"]
    fake_tools.on("notes.get_note", lambda args: structured_result({"id": 1, "title": "t"}))
    fake_tools.on("notes.delete_note", lambda args: pytest.fail("a hidden tool was called"))

    def deny(arguments: dict[str, Any]) -> dict[str, Any]:
        raise ToolCallError("denied by policy no-writes-from-codemode")

    fake_tools.on("notes.update_note", deny)
    limits = Limits(timeout=2, memory=32 * 1024 * 1024, output=8192, tool_calls=20, recursion=100, code=50_000)
    return CodeMode(catalog, fake_tools, limits=limits, sandbox=sandbox)


def test_the_corpus_is_large_enough() -> None:
    assert len(ATTEMPTS) >= 30
    assert len({name for name, _, _ in ATTEMPTS}) == len(ATTEMPTS)


@pytest.mark.parametrize(("name", "program", "refusals"), ATTEMPTS, ids=[name for name, _, _ in ATTEMPTS])
async def test_escape_attempt_is_refused(
    hostile: CodeMode, fake_tools: FakeTools, tmp_path: Path, name: str, program: str, refusals: set[str]
) -> None:
    program = program.replace("{canary_file}", str(tmp_path / "secret.txt"))
    result = await hostile.execute(program)
    assert result.error is not None, f"{name}: ran to completion: {result}"
    assert result.error.kind in refusals, f"{name}: {result.error}"
    everything = json.dumps(result.to_dict()) + result.to_text()
    assert CANARY not in everything
    assert str(tmp_path) not in result.error.message or "{canary_file}" not in program
    assert all(call[1] != "delete_note" for call in fake_tools.calls)
    assert not Path("/tmp/codemode-pwned").exists()
    if result.error.kind in BEFORE_RUN:
        assert fake_tools.calls == [] and result.output == ""
    # Whatever happened, the sandbox keeps serving.
    after = await hostile.execute("from tools import notes\n(await notes.get_note(id=1))['id']")
    assert after.ok and after.value == 1, after


async def test_errors_never_name_host_paths(hostile: CodeMode) -> None:
    result = await hostile.execute("import json\njson.loads('{bad')\n")
    assert result.error is not None and result.error.kind == "runtime_error"
    message = result.error.message
    for host_path in (str(Path.cwd()), str(Path(__file__).parent), "site-packages", "/root", "/home"):
        assert host_path not in message
