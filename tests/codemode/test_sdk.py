"""The SDK generator, on a corpus of real-world-like tool schemas (tests/codemode/schemas/)."""

from __future__ import annotations

import ast
import json
import random
from collections.abc import Callable
from typing import Any

import pytest
from codemode_testing import FakeTools, load_catalog, structured_result, text_result

from codemode import PACKAGE_STUB, CodeMode, ToolBinding, build_sdk, catalog_fingerprint
from codemode.results import ToolFailed, sandbox_value
from codemode.runner import _arguments
from codemode.sdk import ServerModule


def _module(name: str) -> ServerModule:
    module = build_sdk(load_catalog()).module(name)
    assert module is not None
    return module


def _binding(server: str, tool: str) -> ToolBinding:
    found = build_sdk(load_catalog()).find(f"{server}.{tool}")
    assert found is not None, f"{server}.{tool}"
    return found[1]


def _signatures(module: ServerModule) -> dict[str, str]:
    return {binding.tool: binding.signature(qualified=False) for binding in module.tools}


def test_every_stub_of_the_corpus_is_valid_python() -> None:
    sdk = build_sdk(load_catalog())
    ast.parse(PACKAGE_STUB)
    for module in sdk.modules:
        tree = ast.parse(module.stub())
        functions = [node.name for node in tree.body if isinstance(node, ast.AsyncFunctionDef)]
        assert functions == [binding.function for binding in module.tools]
        for binding in module.tools:
            ast.parse(module.tool_stub(binding))


def test_output_is_deterministic_whatever_the_listing_order() -> None:
    catalog = load_catalog()
    first = build_sdk(catalog)
    shuffled: dict[str, list[dict[str, Any]]] = {}
    rng = random.Random(7)
    servers = list(catalog)
    rng.shuffle(servers)
    for server in servers:
        tools = list(catalog[server])
        rng.shuffle(tools)
        shuffled[server] = tools
    second = build_sdk(shuffled)
    assert [m.stub() for m in first.modules] == [m.stub() for m in second.modules]
    assert [m.module for m in first.modules] == sorted(m.module for m in first.modules)


def test_a_demo_tool_reads_like_hand_written_python() -> None:
    notes = _module("notes")
    assert _signatures(notes)["create_note"] == (
        "async def create_note(*, title: str, body: str, tags: list[str] = []) -> Note"
    )
    assert _signatures(notes)["search_notes"] == (
        "async def search_notes(*, query: str, tag: str | None = None, limit: int = 10) -> NoteSearchResult"
    )
    stub = notes.tool_stub(_binding("notes", "create_note"))
    assert "class Note(TypedDict):" in stub
    assert '"""Create a note and return it with its id.' in stub
    assert "title: Short title, 1-200 characters." in stub


def test_identical_output_types_are_generated_once() -> None:
    notes = _module("notes")
    names = [definition.name for definition in notes.types]
    assert names.count("Note") == 1 and "Note2" not in names
    assert {b.returns for b in notes.tools if b.tool in ("create_note", "get_note", "update_note")} == {"Note"}


def test_enums_become_literals_and_keep_their_defaults() -> None:
    issues = _signatures(_module("github"))["list_issues"]
    assert "state: Literal['open', 'closed', 'all'] = 'open'" in issues
    assert "sort: Literal['created', 'updated', 'comments'] | None = None" in issues
    assert "per_page: int = 30" in issues
    mixed = _signatures(_module("odd-names"))["enum_mix"]
    assert "level: Literal[1, 2, 3] | None = None" in mixed
    assert "kind: Literal['fixed'] | None = None" in mixed
    assert "ratio: Any = None" in mixed  # float enums cannot be Literal
    assert "any_of_enum: Literal['a', 'b'] | int | None = None" in mixed


def test_unions_from_any_of_and_one_of_with_typed_dicts_for_object_branches() -> None:
    payments = _module("payments")
    charge = _signatures(payments)["create_charge"]
    assert "source: str | Card" in charge
    assert "metadata: dict[str, str] | None = None" in charge
    assert "created: int | ListEventsCreated | None = None" in _signatures(payments)["list_events"]
    card = next(d for d in payments.types if d.name == "Card")
    assert [(f.key, f.annotation, f.required) for f in card.fields][:2] == [
        ("number", "str", True),
        ("exp_month", "int", True),
    ]
    blocks = _signatures(_module("slack"))["post_message"]
    assert "blocks: list[SectionBlock | DividerBlock | ActionsBlock] | None = None" in blocks


def test_nullability_and_defaults_are_kept() -> None:
    issue = _signatures(_module("github"))["create_issue"]
    assert "body: str | None = None" in issue
    assert "milestone: int | None = None" in issue
    assert "type: Literal['bug', 'feature', 'task'] = 'task'" in issue
    charge = _signatures(_module("payments"))["create_charge"]
    assert "capture: bool = True" in charge
    assert "statement_descriptor: str | None = None" in charge
    stub = _module("payments").stub()
    assert "risk_level: NotRequired[Literal['normal', 'elevated', 'highest', None]]" in stub
    assert "outcome: NotRequired[CreateChargeResultOutcome | None]" in stub
    assert "object: Literal['charge']" in stub


def test_refs_resolve_and_cycles_stay_finite() -> None:
    trees = _module("trees")
    stub = trees.stub()
    assert "children: NotRequired[list[Node]]" in stub
    assert "parent: NotRequired[Node | None]" in stub
    assert "tags: NotRequired[list[str]]" in stub  # a $ref to an array is inlined
    assert "kids: NotRequired[list[Node2]]" in stub  # another document's Node is another type
    owner = next(d for d in trees.types if d.name == "Owner")  # allOf of two objects, merged
    assert [(f.key, f.required) for f in owner.fields] == [("email", True), ("team", True)]
    put_tree = _signatures(trees)["put_tree"]
    assert "loop: Any = None" in put_tree  # a $ref to itself has no type
    assert "remote: Any = None" in put_tree  # remote documents are never fetched
    assert "missing: Any = None" in put_tree
    assert "self: PutTreeArguments | None = None" in put_tree  # "#" is the input object itself
    assert "order: Literal['pre', 'post', 'level'] = 'pre'" in _signatures(trees)["walk"]


def test_odd_names_are_made_safe_and_mapped_back() -> None:
    odd = _module("odd-names")
    assert odd.module == "odd_names"
    functions = {binding.tool: binding.function for binding in odd.tools}
    assert functions == {
        "get-user": "get_user",
        "get_user": "get_user_2",
        "list.items": "list_items",
        "class": "class_",
        "3d_render": "tool_3d_render",
        "TypedDict": "TypedDict_2",
        "free_form": "free_form",
        'quoted "description"': "quoted_description_",
        "enum_mix": "enum_mix",
    }
    get_user = _binding("odd-names", "get-user")
    assert {p.name: p.real_name for p in get_user.params} == {
        "user_id": "user-id",
        "from_": "from",
        "class_": "class",
        "_filter": "$filter",
        "_2fa": "2fa",
        "import_": "import",
        "arguments": "arguments",
    }
    assert "from_ (sent as `from`): Date to start from." in get_user.stub()
    stub = odd.stub()
    # Keys that are not identifiers (or would shadow a builtin) force the functional TypedDict syntax.
    assert "Tool3dRenderScene = TypedDict('Tool3dRenderScene', {" in stub
    assert "'@type': str," in stub and "'from': NotRequired[list[float]]," in stub
    assert "'image-url': str," in stub
    assert (
        _signatures(odd)["free_form"]
        == "async def free_form(*, mode: str | None = None, **arguments: Any) -> ToolContent"
    )
    assert _signatures(odd)["list.items"] == "async def list_items() -> ToolContent"


def test_untrusted_descriptions_cannot_break_out_of_their_docstring() -> None:
    binding = _binding("odd-names", 'quoted "description"')
    tree = ast.parse(binding.stub())
    function = tree.body[0]
    assert isinstance(function, ast.AsyncFunctionDef)
    doc = ast.get_docstring(function) or ""
    assert 'triple quotes """ and a backslash \\ inside' in doc
    assert "\x00" not in binding.stub()
    assert """q: Literal["it's", 'say "hi"', 'back\\\\slash', 'new\\nline'] | None = None""" in binding.signature()


def test_annotations_become_docstring_hints() -> None:
    assert "Read-only." in _binding("github", "list_issues").stub()
    assert "Destructive: may delete or overwrite data." in _binding("github", "merge_pull_request").stub()
    assert "Reaches outside systems." in _binding("github", "create_issue").stub()


def test_tools_without_output_schema_return_tool_content() -> None:
    binding = _binding("github", "list_issues")
    assert binding.returns == "ToolContent" and not binding.structured
    result = {"content": [{"type": "text", "text": "a"}, {"type": "image", "data": "AA==", "mimeType": "image/png"}]}
    assert sandbox_value(binding, result) == {"text": "a", "content": result["content"], "structured": None}


def test_structured_tools_return_structured_content_and_errors_raise() -> None:
    binding = _binding("github", "create_issue")
    assert binding.structured and binding.returns == "CreateIssueResult"
    value = {"number": 1, "html_url": "u", "state": "open", "user": {"login": "a", "id": 1}, "labels": []}
    assert sandbox_value(binding, structured_result(value)) == value
    assert sandbox_value(binding, text_result(json.dumps(value))) == value  # text-only server, same JSON
    with pytest.raises(ToolFailed, match=r"github\.create_issue failed: repository archived"):
        sandbox_value(binding, text_result("repository archived", error=True))


def test_arguments_map_back_to_real_names_and_refuse_what_python_would() -> None:
    get_user = _binding("odd-names", "get-user")
    assert _arguments(get_user, (), {"user_id": "u1", "from_": "2024", "_2fa": True, "class_": None}) == {
        "user-id": "u1",
        "from": "2024",
        "2fa": True,
    }
    with pytest.raises(TypeError, match="keyword arguments only"):
        _arguments(get_user, ("u1",), {})
    with pytest.raises(TypeError, match="unexpected keyword argument 'nope'"):
        _arguments(get_user, (), {"user_id": "u1", "nope": 1})
    with pytest.raises(TypeError, match="missing required keyword arguments: user_id"):
        _arguments(get_user, (), {})
    free = _binding("odd-names", "free_form")
    assert _arguments(free, (), {"mode": "x", "anything": (1, 2)}) == {"mode": "x", "anything": [1, 2]}
    walk = _binding("trees", "walk")
    assert _arguments(walk, (), {"tree_id": 1, "filter": None}) == {"tree_id": 1, "filter": None}  # null allowed


async def test_the_whole_corpus_type_checks_and_runs_in_the_sandbox(
    make_codemode: Callable[..., CodeMode], fake_tools: FakeTools
) -> None:
    fake_tools.on("trees.put_tree", lambda args: structured_result({"root": {"id": 1, "kids": []}, "count": 1}))
    fake_tools.on("payments.create_charge", lambda args: structured_result({"id": "ch_1", "status": "pending"}))
    codemode = make_codemode()
    lines = [f"from tools import {m.module}" for m in codemode.sdk.modules]
    lines += [f"print({m.module}.{b.function})" for m in codemode.sdk.modules for b in m.tools]
    lines += [
        "from tools.trees import Node, Filter",
        "from tools.payments import Card",
        "node: Node = {'name': 'root', 'children': [{'name': 'leaf'}]}",
        "card = Card(number='4242', exp_month=1, exp_year=2030)",
        "f: Filter = {'depth': 2}",
        "r = await trees.put_tree(root=node)",
        "c = await payments.create_charge(amount=100, currency='eur', source=card)",
        "u = await odd_names.get_user(user_id='u', from_='2020', class_=3, _2fa=True)",
        "[card, r['root']['id'], c['status'], u['text']]",
    ]
    result = await codemode.execute("\n".join(lines))
    assert result.ok, result.error
    assert result.value == [
        {"number": "4242", "exp_month": 1, "exp_year": 2030},
        1,
        "pending",
        json.dumps({"2fa": True, "class": 3, "from": "2020", "user-id": "u"}, sort_keys=True),
    ]
    assert fake_tools.calls == [
        ("trees", "put_tree", {"root": {"name": "root", "children": [{"name": "leaf"}]}}),
        ("payments", "create_charge", {"amount": 100, "currency": "eur", "source": card_arguments()}),
        ("odd-names", "get-user", {"user-id": "u", "from": "2020", "class": 3, "2fa": True}),
    ]


def card_arguments() -> dict[str, Any]:
    return {"number": "4242", "exp_month": 1, "exp_year": 2030}


async def test_typed_dict_fields_are_checked_against_the_schema(make_codemode: Callable[..., CodeMode]) -> None:
    codemode = make_codemode()
    program = "from tools import slack\nawait slack.post_message(channel='c', blocks=[{'type': 'section', 'txt': 1}])\n"
    result = await codemode.execute(program)
    assert result.error is not None and result.error.kind == "type_error", result
    assert result.error.line == 2 and "post_message" in result.error.message
    program = "from tools.trees import Node\n\nnode: Node = {'nam': 'x'}\n"
    result = await codemode.execute(program)
    assert result.error is not None and result.error.kind == "type_error", result
    assert result.error.line == 3 and '"nam"' in result.error.message


def test_catalog_fingerprints_ignore_order_and_see_every_change() -> None:
    catalog = load_catalog("demo")
    reordered = {server: list(reversed(tools)) for server, tools in reversed(list(catalog.items()))}
    assert catalog_fingerprint(catalog) == catalog_fingerprint(reordered)
    changed = json.loads(json.dumps(catalog))
    changed["notes"][0]["description"] += "!"
    assert catalog_fingerprint(changed) != catalog_fingerprint(catalog)


def test_defaults_that_cannot_be_shown_faithfully_become_ellipses() -> None:
    long_text = "x" * 200
    tool = {
        "name": "t",
        "inputSchema": {
            "type": "object",
            "properties": {
                "wrong_type": {"type": "integer", "default": "10"},
                "too_long": {"type": "string", "default": long_text},
                "flag": {"type": "integer", "default": True},
                "ratio": {"type": "number", "default": 1},
                "nothing": {"type": "string", "default": None},
            },
        },
    }
    signature = build_sdk({"s": [tool]}).modules[0].tools[0].signature()
    assert signature == (
        "async def s.t(*, wrong_type: int = ..., too_long: str = ..., flag: int = ..., ratio: float = 1, "
        "nothing: str | None = None) -> ToolContent"
    )
