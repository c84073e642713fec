"""Server and tool names that are not Cedar identifiers still get actions of their own."""

from __future__ import annotations

from pathlib import Path

from portal.catalog import Catalog, ServerCatalog
from portal.policy.engine import PolicyEngine, Subject
from portal.policy.schema import _identifier
from portal.policy.testing import BASE_SCHEMA, write_policies

ROOT = Path(__file__).resolve().parents[2]


def test_names_with_dashes_and_dots_are_decided_under_their_own_action(tmp_path: Path) -> None:
    catalog = Catalog()
    for server, tool in (("slow-hosted", "wait"), ("slow", "hosted_wait"), ("a.b", "c-d")):
        entry = ServerCatalog(server)
        entry.items["tools"] = [
            {"name": tool, "inputSchema": {"type": "object", "properties": {"key": {"type": "string"}}}}
        ]
        catalog.replace(entry)
    policy = (
        '@id("dash")\npermit (principal, action == Action::"slow-hosted_wait", resource)\n'
        'when { context.input has key && context.input.key == "k" };\n'
    )
    engine = PolicyEngine(write_policies(tmp_path, policy), catalog, poll_interval=0)
    who = Subject("alice", (), "client", frozenset())
    dash = engine.tool_action("slow-hosted", "wait")
    under = engine.tool_action("slow", "hosted_wait")
    assert dash and under and dash != under
    assert engine.decide(who, dash, "slow-hosted", {"key": "k"}).allowed
    assert not engine.decide(who, dash, "slow-hosted", {"key": "other"}).allowed
    assert not engine.decide(who, under, "slow", {"key": "k"}).allowed


def test_aliases_are_one_to_one() -> None:
    names = ["a-b", "a_b", "a__2d_b", "a.b", "-x", "9x", "a___b"]
    assert len({_identifier(name) for name in names}) == len(names)


def test_the_packaged_base_schema_is_the_repositorys() -> None:
    shipped = (ROOT / "policies" / "schema.cedarschema").read_text(encoding="utf-8")
    assert shipped == BASE_SCHEMA


def test_integers_cedar_cannot_hold_are_refused_not_crashed(tmp_path: Path) -> None:
    catalog = Catalog()
    entry = ServerCatalog("s")
    entry.items["tools"] = [{"name": "t", "inputSchema": {"type": "object", "properties": {"n": {"type": "integer"}}}}]
    catalog.replace(entry)
    engine = PolicyEngine(write_policies(tmp_path), catalog, poll_interval=0)
    who = Subject("alice", (), "client", frozenset())
    for bad in (float("inf"), float("nan"), 2**63, 1.5, True):
        decision = engine.decide(who, "s_t", "s", {"n": bad})
        assert not decision.allowed and decision.errors, bad
    assert engine.decide(who, "s_t", "s", {"n": 2**63 - 1}).allowed
