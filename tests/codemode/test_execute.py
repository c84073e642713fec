"""`execute`: type checks before anything runs, parallel tool calls, every limit, and what comes back."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from codemode_testing import FakeTools, load_catalog, structured_result, text_result

from codemode import CodeMode, Limits, Sandbox, ToolCallError

Make = Callable[..., CodeMode]
NOTE = {"id": 1, "title": "t", "body": "b", "tags": [], "created_at": "", "updated_at": "", "uri": "note://1"}


def _note(arguments: dict[str, Any]) -> dict[str, Any]:
    return structured_result({**NOTE, "id": arguments["id"], "title": f"note {arguments['id']}"})


@pytest.fixture
def demo(make_codemode: Make, fake_tools: FakeTools) -> CodeMode:
    fake_tools.on("notes.get_note", _note)
    return make_codemode(load_catalog("demo"))


async def test_output_and_the_value_of_the_last_expression(demo: CodeMode) -> None:
    program = (
        "import json\nfrom datetime import date\n"
        "print('hello', 1 + 1)\n"
        "data = json.loads('{\"a\": [1, 2]}')\n"
        "{'sum': sum(data['a']), 'year': date(2026, 1, 2).year, 'pair': (1, 'x'), 'set': {3, 1}}"
    )
    result = await demo.execute(program)
    assert result.ok, result.error
    assert result.output == "hello 2\n"
    assert result.value == {"sum": 3, "year": 2026, "pair": [1, "x"], "set": [1, 3]}
    assert result.to_text() == 'hello 2\n=> {"sum": 3, "year": 2026, "pair": [1, "x"], "set": [1, 3]}'
    assert (await demo.execute("x = 1")).value is None


async def test_dependent_calls_and_typed_results(demo: CodeMode, fake_tools: FakeTools) -> None:
    fake_tools.on(
        "notes.search_notes",
        lambda args: structured_result(
            {"query": args["query"], "tag": None, "engine": "fts5", "hits": [{**NOTE, "id": 7, "score": 1.0}]}
        ),
    )
    program = (
        "from tools import notes\n"
        "found = await notes.search_notes(query='deploy', limit=1)\n"
        "note = await notes.get_note(id=found['hits'][0]['id'])\n"
        "note['title']"
    )
    result = await demo.execute(program)
    assert result.ok, result.error
    assert result.value == "note 7"
    assert fake_tools.calls == [
        ("notes", "search_notes", {"query": "deploy", "limit": 1}),
        ("notes", "get_note", {"id": 7}),
    ]
    assert [(call.tool, call.ok) for call in result.calls] == [("search_notes", True), ("get_note", True)]


async def test_a_type_error_comes_back_with_its_line_and_nothing_runs(demo: CodeMode, fake_tools: FakeTools) -> None:
    program = (
        "from tools import notes\n"
        "print('side effect')\n"
        "await notes.delete_note(id=1)\n"
        "n = await notes.get_note(id='seven')\n"
    )
    result = await demo.execute(program)
    assert result.error is not None and result.error.kind == "type_error"
    assert result.error.line == 4
    assert result.error.message.startswith("main.py:4:")
    assert "invalid-argument-type" in result.error.message and "get_note" in result.error.message
    assert result.output == "" and fake_tools.calls == [] and result.calls == ()


@pytest.mark.parametrize(
    ("program", "needle", "line"),
    [
        ("from tools import notes\nawait notes.get_note(note_id=1)\n", "note_id", 2),
        ("from tools import notes\nawait notes.create_note(title='t')\n", "body", 2),
        ("from tools import notes\nx = 1\nnotes.delete_note(id=1)\n", "not awaited", 3),
        ("from tools import notes\nn = await notes.get_note(id=1)\nn['nope']\n", "nope", 3),
        ("from tools import notes\nawait notes.purge(all=True)\n", "purge", 2),
        ("import os\nos.system('id')\n", "system", 2),
        ("open('/etc/passwd')\n", "open", 1),
    ],
)
async def test_type_errors_are_caught_before_execution(
    demo: CodeMode, fake_tools: FakeTools, program: str, needle: str, line: int
) -> None:
    result = await demo.execute(program)
    assert result.error is not None and result.error.kind == "type_error", result
    assert result.error.line == line and needle in result.error.message
    assert fake_tools.calls == []


async def test_syntax_and_runtime_errors_carry_lines_and_no_host_paths(demo: CodeMode) -> None:
    result = await demo.execute("x = 1\ndef broken(:\n    pass\n")
    assert result.error is not None and result.error.kind in ("syntax_error", "type_error")
    assert result.error.line == 2
    result = await demo.execute("x = 1\ny = [1, 2]\ny[5]\n")
    assert result.error is not None and result.error.kind == "runtime_error"
    assert result.error.line == 3
    assert 'File "main.py", line 3' in result.error.message and "IndexError" in result.error.message
    assert "/work" not in result.error.message and "site-packages" not in result.error.message


async def test_gathered_calls_overlap(demo: CodeMode, fake_tools: FakeTools) -> None:
    # Each call waits until the other has started: run one after the other, neither could ever finish.
    started = {1: asyncio.Event(), 2: asyncio.Event()}
    in_flight = 0
    most = 0

    async def get_note(arguments: dict[str, Any]) -> dict[str, Any]:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        started[arguments["id"]].set()
        await asyncio.wait_for(started[3 - arguments["id"]].wait(), timeout=5)
        in_flight -= 1
        return _note(arguments)

    fake_tools.on("notes.get_note", get_note)
    program = (
        "import asyncio\nfrom tools import notes\n"
        "a, b = await asyncio.gather(notes.get_note(id=1), notes.get_note(id=2))\n"
        "[a['title'], b['title']]"
    )
    result = await demo.execute(program)
    assert result.ok, result.error
    assert result.value == ["note 1", "note 2"]
    assert most == 2


async def test_awaited_one_by_one_calls_do_not_overlap(demo: CodeMode, fake_tools: FakeTools) -> None:
    in_flight = 0
    most = 0

    async def get_note(arguments: dict[str, Any]) -> dict[str, Any]:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0)
        in_flight -= 1
        return _note(arguments)

    fake_tools.on("notes.get_note", get_note)
    result = await demo.execute("from tools import notes\nfor i in range(1, 4):\n    await notes.get_note(id=i)\n")
    assert result.ok and most == 1 and len(fake_tools.calls) == 3


async def test_many_gathered_calls_all_run_concurrently(demo: CodeMode, fake_tools: FakeTools) -> None:
    gate = asyncio.Event()
    arrived = 0

    async def get_note(arguments: dict[str, Any]) -> dict[str, Any]:
        nonlocal arrived
        arrived += 1
        if arrived == 10:
            gate.set()  # only the tenth concurrent call opens the gate for all of them
        await asyncio.wait_for(gate.wait(), timeout=5)
        return _note(arguments)

    fake_tools.on("notes.get_note", get_note)
    program = (
        "import asyncio\nfrom tools import notes\n"
        "notes_ = await asyncio.gather(*[notes.get_note(id=i) for i in range(1, 11)])\n"
        "[n['id'] for n in notes_]"
    )
    result = await demo.execute(program)
    assert result.ok, result.error
    assert result.value == list(range(1, 11))


async def test_tool_errors_raise_in_the_program(demo: CodeMode, fake_tools: FakeTools) -> None:
    fake_tools.on("notes.delete_note", lambda args: text_result(f"no note with id {args['id']}", error=True))
    program = (
        "from tools import notes\n"
        "try:\n    await notes.delete_note(id=9)\nexcept RuntimeError as e:\n    print('caught:', e)\n"
        "await notes.delete_note(id=10)\n"
    )
    result = await demo.execute(program)
    assert result.output == "caught: notes.delete_note failed: no note with id 9\n"
    assert result.error is not None and result.error.kind == "runtime_error" and result.error.line == 6
    assert "notes.delete_note failed: no note with id 10" in result.error.message
    assert [call.ok for call in result.calls] == [False, False]


async def test_host_exceptions_reach_the_program_without_their_details(demo: CodeMode, fake_tools: FakeTools) -> None:
    def leaky(arguments: dict[str, Any]) -> dict[str, Any]:
        raise OSError("cannot open /srv/secrets/token-abc123 for user root")

    def denied(arguments: dict[str, Any]) -> dict[str, Any]:
        raise ToolCallError("denied by policy no-destructive-from-codemode")

    fake_tools.on("notes.get_note", leaky)
    fake_tools.on("notes.delete_note", denied)
    program = (
        "from tools import notes\n"
        "for call in (notes.get_note(id=1), notes.delete_note(id=1)):\n"
        "    try:\n        await call\n    except RuntimeError as e:\n        print(e)\n"
    )
    result = await demo.execute(program)
    assert result.ok, result.error
    assert result.output == (
        "notes.get_note failed: internal error\n"
        "notes.delete_note failed: denied by policy no-destructive-from-codemode\n"
    )
    assert "token-abc123" not in json.dumps(result.to_dict())


async def test_typed_dicts_and_tool_content_exist_at_run_time(demo: CodeMode) -> None:
    program = (
        "from tools import docs, ToolContent\nfrom tools.notes import Note\n"
        "n: Note = Note(id=1, title='t', body='', tags=[], created_at='', updated_at='', uri='')\n"
        "c: ToolContent = {'text': 'x', 'content': [], 'structured': None}\n"
        "[n['id'], c['text']]"
    )
    result = await demo.execute(program)
    assert result.ok, result.error
    assert result.value == [1, "x"]


async def test_a_per_run_call_tool_replaces_the_default(demo: CodeMode, fake_tools: FakeTools) -> None:
    seen: list[str] = []

    async def other(server: str, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        seen.append(f"{server}.{tool}")
        return _note(arguments)

    result = await demo.execute("from tools import notes\n(await notes.get_note(id=4))['id']", call_tool=other)
    assert result.value == 4 and seen == ["notes.get_note"] and fake_tools.calls == []


async def test_concurrent_runs_are_isolated(demo: CodeMode) -> None:
    programs = [f"secret = {i}\nimport asyncio\nawait asyncio.sleep(0.05)\nsecret" for i in range(6)]
    results = await asyncio.gather(*(demo.execute(p) for p in programs))
    assert [r.value for r in results] == list(range(6))
    leftover = await demo.execute("secret")
    assert leftover.error is not None and leftover.error.kind == "type_error"


# --- limits -------------------------------------------------------------------------------------------------------


async def test_the_wall_clock_limit_counts_time_spent_waiting_on_tools(
    make_codemode: Make, fake_tools: FakeTools
) -> None:
    cancelled = asyncio.Event()

    async def hang(arguments: dict[str, Any]) -> dict[str, Any]:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return _note(arguments)

    fake_tools.on("notes.get_note", hang)
    codemode = make_codemode(load_catalog("demo"), limits=Limits(timeout=0.5))
    begun = time.monotonic()
    result = await codemode.execute("from tools import notes\nawait notes.get_note(id=1)\n")
    assert time.monotonic() - begun < 3
    assert result.error is not None and result.error.kind == "timeout"
    assert cancelled.is_set()  # the tool call in flight was cancelled, not left running


@pytest.mark.parametrize(
    "program",
    [
        "while True:\n    pass\n",
        "import time\ntime.sleep(30)\n",
        "import asyncio\nawait asyncio.sleep(30)\n",
        "x = 0\nwhile True:\n    x += 1\n    print(x, end='') if x % 10_000_000 == 0 else None\n",
    ],
)
async def test_the_wall_clock_limit_stops_busy_and_sleeping_programs(make_codemode: Make, program: str) -> None:
    codemode = make_codemode(load_catalog("demo"), limits=Limits(timeout=0.5))
    begun = time.monotonic()
    result = await codemode.execute(program)
    assert time.monotonic() - begun < 3
    assert result.error is not None and result.error.kind == "timeout", result
    assert (await codemode.execute("1 + 1")).value == 2  # the sandbox keeps serving


@pytest.mark.parametrize(
    "program",
    ["x = 'a' * 200_000_000\n", "x = [0] * 50_000_000\n", "x = []\nwhile True:\n    x.append('abcdefgh' * 100)\n"],
)
async def test_the_memory_limit(make_codemode: Make, program: str) -> None:
    codemode = make_codemode(load_catalog("demo"), limits=Limits(memory=16 * 1024 * 1024))
    result = await codemode.execute(program)
    assert result.error is not None and result.error.kind == "memory_limit", result
    assert (await codemode.execute("len('a' * 1000)")).value == 1000


async def test_the_tool_call_limit(make_codemode: Make, fake_tools: FakeTools) -> None:
    fake_tools.on("notes.get_note", _note)
    codemode = make_codemode(load_catalog("demo"), limits=Limits(tool_calls=3))
    ok = await codemode.execute("from tools import notes\nfor i in range(3):\n    await notes.get_note(id=i + 1)\n")
    assert ok.ok
    fake_tools.calls.clear()
    program = (
        "from tools import notes\n"
        "for i in range(10):\n    try:\n        await notes.get_note(id=i + 1)\n    except Exception:\n        pass\n"
    )
    result = await codemode.execute(program)
    assert result.error is not None and result.error.kind == "tool_call_limit"
    assert len(fake_tools.calls) == 3  # the fourth call was refused, not made; catching it changes nothing
    gathered = await codemode.execute(
        "import asyncio\nfrom tools import notes\nawait asyncio.gather(*[notes.get_note(id=i) for i in range(1, 6)])\n"
    )
    assert gathered.error is not None and gathered.error.kind == "tool_call_limit"


@pytest.mark.parametrize(
    "program",
    [
        "while True:\n    print('spam' * 100)\n",
        "print('x' * 5000)\n",
        "for i in range(2000):\n    print(i)\n",
        "import sys\nwhile True:\n    print('to stderr', file=sys.stderr)\n",
    ],
)
async def test_the_output_limit_on_printed_text(make_codemode: Make, program: str) -> None:
    codemode = make_codemode(load_catalog("demo"), limits=Limits(output=4096))
    result = await codemode.execute(program)
    assert result.error is not None and result.error.kind == "output_limit", result
    assert len(result.output.encode()) <= 4096
    assert (await codemode.execute("print('ok')")).output == "ok\n"


async def test_the_output_limit_on_the_final_value(make_codemode: Make) -> None:
    codemode = make_codemode(load_catalog("demo"), limits=Limits(output=4096))
    result = await codemode.execute("'x' * 5000")
    assert result.error is not None and result.error.kind == "output_limit"
    assert (await codemode.execute("'x' * 100")).value == "x" * 100


async def test_the_code_and_recursion_limits(make_codemode: Make) -> None:
    codemode = make_codemode(load_catalog("demo"), limits=Limits(code=1000, recursion=50))
    result = await codemode.execute("x = 1\n" * 200)
    assert result.error is not None and result.error.kind == "code_limit"
    deep = await codemode.execute("def f(n: int) -> int:\n    return f(n + 1)\nf(0)\n")
    assert deep.error is not None and deep.error.kind == "runtime_error" and "RecursionError" in deep.error.message
    caught = await codemode.execute(
        "def f(n: int) -> int:\n    return f(n + 1)\ntry:\n    f(0)\nexcept RecursionError:\n    r = 'caught'\nr"
    )
    assert caught.value == "caught"


async def test_cancelling_a_run_cancels_its_tool_calls(make_codemode: Make, fake_tools: FakeTools) -> None:
    entered = asyncio.Event()
    cancelled = asyncio.Event()

    async def hang(arguments: dict[str, Any]) -> dict[str, Any]:
        entered.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return _note(arguments)

    fake_tools.on("notes.get_note", hang)
    codemode = make_codemode(load_catalog("demo"))
    task = asyncio.ensure_future(codemode.execute("from tools import notes\nawait notes.get_note(id=1)\n"))
    await asyncio.wait_for(entered.wait(), timeout=5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancelled.is_set()
    assert (await codemode.execute("2 + 2")).value == 4


async def test_more_runs_than_workers_queue_instead_of_failing(fake_tools: FakeTools) -> None:
    small = Sandbox(min_workers=1, max_workers=3, checkers=1)  # two workers for runs
    try:
        gate = asyncio.Event()
        arrived = 0

        async def get_note(arguments: dict[str, Any]) -> dict[str, Any]:
            nonlocal arrived
            arrived += 1
            if arrived == 2:
                gate.set()  # both runs that hold a worker are now waiting on a tool
            await asyncio.wait_for(gate.wait(), timeout=5)
            return _note(arguments)

        fake_tools.on("notes.get_note", get_note)
        codemode = CodeMode(load_catalog("demo"), fake_tools, limits=Limits(timeout=20), sandbox=small)
        await codemode.warm_up()
        program = "from tools import notes\n(await notes.get_note(id={n}))['id']"
        results = await asyncio.gather(*(codemode.execute(program.format(n=n)) for n in range(1, 9)))
        assert [r.value for r in results] == list(range(1, 9)), [r.error for r in results]
    finally:
        small.close()


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="timeout"):
        Limits(timeout=0)
    with pytest.raises(ValueError, match="tool_calls"):
        Limits(tool_calls=-1)


async def test_results_render_for_the_model(demo: CodeMode) -> None:
    failed = await demo.execute("print('before')\nraise ValueError('bad input')\n")
    text = failed.to_text()
    assert text.startswith("before\n[runtime_error (line 2)] Traceback")
    assert text.endswith("ValueError: bad input")
    record = failed.to_dict()
    assert record["ok"] is False and record["error"]["kind"] == "runtime_error" and record["error"]["line"] == 2
    assert (await demo.execute("x = 1")).to_text() == "(no output)"
