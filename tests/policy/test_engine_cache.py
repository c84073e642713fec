"""The decision cache, the policy slices and the shared list evaluation never change an answer.

Every answer is compared with the engine's former way of getting it: `cedarpy.is_authorized` on
the whole policy set for a decision, one partial evaluation on the whole set per tool for a list.
"""

from __future__ import annotations

import calendar
import json
import random
import shutil
from pathlib import Path
from typing import Any

import cedarpy
import pytest

from portal.auth.principal import Principal
from portal.gateway.routing import Target
from portal.pipeline import Endpoint, McpRequest
from portal.policy import PolicyEngine, PolicyStage, Subject
from portal.policy.cache import MAX_INPUT_CHARS, DecisionCache, time_key
from portal.policy.cli import catalog_from_file
from portal.policy.engine import Decision, _quote, build_snapshot
from portal.policy.index import PolicyIndex
from portal.policy.loader import load_policy_files, parse_policies
from portal.policy.obligations import MemoryRateLimiter, RateLimited

ROOT = Path(__file__).resolve().parents[2] / "policies"
SCHEMA = {
    "type": "object",
    "properties": {"repo": {"type": "string"}, "amount": {"type": "integer"}, "force": {"type": "boolean"}},
    "required": ["repo"],
}
POLICIES = """
@id("issues") @rate("100/minute")
permit (principal in Group::"eng", action == Action::"gh_create_issue", resource)
when { context.input.repo like "acme/*" && (if context.input has amount then context.input.amount < 1000 else true) };

@id("admins-gh")
permit (principal in Group::"admins", action in Action::"server:gh", resource);

@id("readers")
permit (principal, action in Action::"read", resource);

@id("no-destructive-codemode")
forbid (principal, action in Action::"destructive", resource) when { context.via_codemode };

@id("no-force")
forbid (principal, action, resource) when { context.input has force && context.input.force };

@id("bob-out") @approval("required")
forbid (principal == User::"bob", action, resource == Server::"db");

@id("db-ops")
permit (principal is User in Group::"ops", action in [Action::"db_drop", Action::"db_query"], resource is Server);

@id("scoped-client")
permit (principal, action == Action::"db_query", resource)
when { context.client_id == "cli" && context.scopes.contains("db") };
"""


def tools(kinds: dict[str, dict[str, str]]) -> dict[str, list[dict[str, Any]]]:
    hints = {"read": {"readOnlyHint": True}, "write": {"destructiveHint": False}, "destructive": {}}
    return {
        server: [{"name": name, "inputSchema": SCHEMA, "annotations": hints[kind]} for name, kind in by_name.items()]
        for server, by_name in kinds.items()
    }


CATALOG = tools(
    {
        "gh": {"create_issue": "write", "delete_repo": "destructive", "get_issue": "read"},
        "db": {"query": "read", "drop": "destructive"},
    }
)


def make_engine(
    tmp_path: Path, policies: str = POLICIES, catalog: dict[str, Any] | None = None, *, strict: bool = True
) -> PolicyEngine:
    shutil.copy(ROOT / "schema.cedarschema", tmp_path / "schema.cedarschema")
    (tmp_path / "main.cedar").write_text(policies if strict else "")
    (tmp_path / "tools.json").write_text(json.dumps(catalog or CATALOG))
    engine = PolicyEngine(tmp_path, catalog_from_file(tmp_path / "tools.json"), poll_interval=0)
    if not strict:
        # Generated sets hold scopes Cedar's validator refuses (`action == Action::"read"` names a
        # group, `context.input.repo` on `read_resource`): evaluation must still agree on them.
        _texts, stub, _mtimes = load_policy_files(tmp_path)
        engine._snapshot = build_snapshot(parse_policies({"main.cedar": policies}, stub), engine.catalog, strict=False)
    return engine


def reference(
    engine: PolicyEngine, who: Subject, action: str, server: str, arguments: dict[str, Any], **options: Any
) -> Decision:
    """The decision as the engine made it before: whole set, no cache, no slice."""
    snap = engine.snapshot
    value = snap.built.converter().convert(snap.built.input_types[action], arguments)
    request = {
        "principal": f'User::"{_quote(who.subject)}"',
        "action": f'Action::"{_quote(action)}"',
        "resource": f'Server::"{_quote(server)}"',
        "context": engine.context(who, value, via_codemode=options.get("via_codemode", False), now=options.get("now")),
    }
    result = cedarpy.is_authorized(request, snap.policies, engine._entities(snap, who, server), snap.schema)
    # Cedar's reasons come in no set order; the engine puts them in the set's.
    sources = sorted((snap.by_cedar_id[reason] for reason in result.diagnostics.reasons), key=lambda p: p.index)
    return Decision(
        result.allowed,
        tuple(source.policy_id for source in sources),
        snap.version,
        tuple(source.annotations for source in sources),
        tuple(result.diagnostics.errors),
    )


SUBJECTS = [
    Subject("alice", ("eng",)),
    Subject("root", ("admins",)),
    Subject("bob", ("admins", "ops")),
    Subject("olga", ("ops",), "cli", frozenset({"db"})),
    Subject("olga", ("ops",), "cli", frozenset()),
    Subject("nobody"),
]
ARGUMENTS = [
    {"repo": "acme/x"},
    {"repo": "acme/x", "amount": 999},
    {"repo": "acme/x", "amount": 1000},
    {"repo": "other/x"},
    {"repo": "acme/x", "force": True},
    {"repo": "acme/x", "force": False, "ignored": [1, 2]},
]


def test_cached_decisions_equal_uncached(tmp_path: Path) -> None:
    engine = make_engine(tmp_path)
    cache = engine.snapshot.decisions
    requests = [
        (who, action, info.server, arguments, via)
        for who in SUBJECTS
        for action, info in engine.snapshot.built.actions.items()
        for arguments in ARGUMENTS
        for via in (False, True)
    ]
    seen = {True: 0, False: 0}
    for who, action, server, arguments, via in requests:
        expected = reference(engine, who, action, server, arguments, via_codemode=via)
        first = engine.decide(who, action, server, arguments, via_codemode=via)
        hits = cache.hits
        again = engine.decide(who, action, server, dict(arguments), via_codemode=via)
        assert cache.hits == hits + 1  # the second one came from the cache
        assert first == again == expected, (who, action, arguments, via)
        seen[expected.allowed] += 1
    assert seen[True] > 20 and seen[False] > 20
    # Spot checks that the comparison above covers what it should.
    alice, root, bob = SUBJECTS[0], SUBJECTS[1], SUBJECTS[2]
    assert engine.decide(alice, "gh_create_issue", "gh", {"repo": "acme/x", "amount": 5}).policy_ids == ("issues",)
    assert not engine.decide(alice, "gh_create_issue", "gh", {"repo": "acme/x", "amount": 1000}).allowed
    assert engine.decide(root, "gh_delete_repo", "gh", {"repo": "a"}).allowed
    denied = engine.decide(root, "gh_delete_repo", "gh", {"repo": "a"}, via_codemode=True)
    assert not denied.allowed and denied.policy_ids == ("no-destructive-codemode",)  # forbid wins
    assert engine.decide(bob, "db_drop", "db", {"repo": "a"}).policy_ids == ("bob-out",)
    assert engine.decide(SUBJECTS[3], "db_query", "db", {"repo": "a"}).allowed


def test_unnamed_arguments_share_an_entry_and_bad_ones_are_not_cached(tmp_path: Path) -> None:
    engine = make_engine(tmp_path)
    alice = SUBJECTS[0]
    engine.decide(alice, "gh_create_issue", "gh", {"repo": "acme/x"})
    hits = engine.snapshot.decisions.hits
    # `extra` is not in the schema: Cedar never sees it, so the decision is the same one.
    assert engine.decide(alice, "gh_create_issue", "gh", {"repo": "acme/x", "extra": 1}).allowed
    assert engine.snapshot.decisions.hits == hits + 1
    size = len(engine.snapshot.decisions)
    assert engine.decide(alice, "gh_create_issue", "gh", {"repo": 5}).errors  # wrong type: denied, not kept
    assert engine.decide(alice, "gh_create_issue", "gh", {"repo": "acme/" + "x" * MAX_INPUT_CHARS}).allowed
    assert len(engine.snapshot.decisions) == size


def test_reload_changes_the_cached_answer(tmp_path: Path) -> None:
    engine = make_engine(tmp_path)
    alice = SUBJECTS[0]
    assert engine.decide(alice, "gh_create_issue", "gh", {"repo": "acme/x"}).allowed
    assert engine.decide(alice, "gh_create_issue", "gh", {"repo": "acme/x"}).allowed  # cached
    assert engine.visible(alice, "gh_create_issue", "gh")
    stop = '\n@id("stop") forbid (principal in Group::"eng", action, resource);'
    (tmp_path / "main.cedar").write_text(POLICIES + stop)
    engine.reload()
    decision = engine.decide(alice, "gh_create_issue", "gh", {"repo": "acme/x"})
    assert not decision.allowed and decision.policy_ids == ("stop",) and decision.version == engine.version
    assert not engine.visible(alice, "gh_create_issue", "gh")


def test_catalog_change_starts_a_new_cache(tmp_path: Path) -> None:
    engine = make_engine(tmp_path)
    alice = SUBJECTS[0]
    assert engine.decide(alice, "gh_create_issue", "gh", {"repo": "acme/x"}).allowed
    before = engine.snapshot
    from portal.catalog import ServerCatalog

    entry = ServerCatalog("gh")
    entry.items["tools"] = [{"name": "create_issue", "inputSchema": {"type": "object", "properties": {}}}]
    engine.catalog.replace(entry)
    # `repo` is gone from the tool's schema: the policy's condition now fails on a missing attribute.
    assert engine.snapshot is not before and len(engine.snapshot.decisions) == 0
    decision = engine.decide(alice, "gh_create_issue", "gh", {"repo": "acme/x"})
    assert decision == reference(engine, alice, "gh_create_issue", "gh", {"repo": "acme/x"})
    assert not decision.allowed


def at(hour: int, day: int = 1) -> float:
    """1 June 2026 (a Monday) + `day` - 1, at `hour`:30 UTC."""
    return float(calendar.timegm((2026, 6, day, hour, 30, 0)))


def test_time_is_part_of_the_key_at_the_granularity_read(tmp_path: Path) -> None:
    hours = POLICIES + '\n@id("mornings") permit (principal, action == Action::"gh_delete_repo", resource) '
    hours += "when { context.time.hour < 12 && context.time.weekday < 5 };"
    engine = make_engine(tmp_path, hours)
    assert engine.snapshot.index.time_fields == {"hour", "weekday"}
    alice = SUBJECTS[0]
    for moment, allowed in ((at(9), True), (at(13), False), (at(9, 6), False), (at(10), True), (at(9, 7), False)):
        assert engine.decide(alice, "gh_delete_repo", "gh", {"repo": "a"}, now=moment).allowed is allowed
        assert engine.decide(alice, "gh_delete_repo", "gh", {"repo": "a"}, now=moment).allowed is allowed
    assert engine.snapshot.decisions.hits >= 5


def test_a_set_reading_unix_time_is_not_cached(tmp_path: Path) -> None:
    cutoff = int(at(12))
    policies = POLICIES + '\n@id("until") permit (principal, action == Action::"gh_delete_repo", resource) '
    policies += f"when {{ context.time.unix < {cutoff} }};"
    engine = make_engine(tmp_path, policies)
    assert "unix" in engine.snapshot.index.time_fields
    alice = SUBJECTS[0]
    assert engine.decide(alice, "gh_delete_repo", "gh", {"repo": "a"}, now=cutoff - 1).allowed
    assert not engine.decide(alice, "gh_delete_repo", "gh", {"repo": "a"}, now=cutoff).allowed
    assert len(engine.snapshot.decisions) == 0


@pytest.mark.parametrize(
    ("condition", "fields"),
    [
        ("context.via_codemode", set()),
        ('context.input has repo && context.client_id == "x"', set()),
        ("context has time", set()),
        ("context.time has hour", set()),
        ("context.time.hour == 3", {"hour"}),
        ('context["time"]["weekday"] == 3', {"weekday"}),
        ("context.time.unix > 3", {"unix"}),
        ('context.time == {"unix": 1, "hour": 2, "weekday": 3}', {"unix"}),
        ("context == context", {"unix"}),
    ],
)
def test_time_fields_read(condition: str, fields: set[str]) -> None:
    text = f'@id("p") permit (principal, action, resource) when {{ {condition} }};'
    assert PolicyIndex(text, {}).time_fields == fields


def test_time_key_granularity() -> None:
    assert time_key(frozenset(), at(9)) == ()
    assert (
        time_key(frozenset({"hour"}), at(9))
        == time_key(frozenset({"hour"}), at(9, 2))
        != time_key(frozenset({"hour"}), at(10))
    )
    assert time_key(frozenset({"weekday"}), at(9)) == time_key(frozenset({"weekday"}), at(23))
    assert time_key(frozenset({"unix", "hour"}), at(9)) is None


def test_lru_bound() -> None:
    cache: DecisionCache[int] = DecisionCache(limit=2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3)
    assert cache.get("b") is None and cache.get("a") == 1 and cache.get("c") == 3 and len(cache) == 2


def principal(subject: str, groups: tuple[str, ...]) -> Principal:
    return Principal(subject, "client", frozenset({"tools:*"}), "jti", "aud", 0, groups)


def call(name: str, server: str, arguments: dict[str, Any], who: Principal) -> McpRequest:
    params = {"name": name, "arguments": arguments}
    return McpRequest(
        Endpoint("aggregated", "/mcp"),
        "tools/call",
        params,
        1,
        "2025-11-25",
        principal=who,
        target=Target(server, "tool", name, params),
        state={},
    )


async def test_obligations_still_apply_to_cached_decisions(tmp_path: Path) -> None:
    policies = POLICIES.replace('@rate("100/minute")', '@rate("2/minute")')
    engine = make_engine(tmp_path, policies)
    stage = PolicyStage(engine, rate_limiter=MemoryRateLimiter())

    async def ok(request: McpRequest) -> dict[str, Any]:
        return {"content": [], "isError": False}

    alice = principal("alice", ("eng",))
    for _ in range(2):
        assert not (await stage(call("create_issue", "gh", {"repo": "acme/x"}, alice), ok))["isError"]
    with pytest.raises(RateLimited):
        await stage(call("create_issue", "gh", {"repo": "acme/x"}, alice), ok)
    assert engine.snapshot.decisions.hits >= 2


# list filtering on a generated catalog and policy set

SCOPES_PRINCIPAL = [
    "principal",
    'principal == User::"u{n}"',
    'principal in Group::"g{n}"',
    "principal is User",
    'principal is User in Group::"g{n}"',
    'principal in User::"u{n}"',
]
SCOPES_ACTION = [
    "action",
    'action == Action::"s{s}_t{t}"',
    'action in Action::"server:s{s}"',
    'action in Action::"{kind}"',
    'action in [Action::"s{s}_t{t}", Action::"server:s{s2}"]',
    'action == Action::"read"',
    'action in [Action::"read_resource", Action::"get_prompt"]',
]
SCOPES_RESOURCE = ["resource", 'resource == Server::"s{s}"', 'resource in Server::"s{s}"', "resource is Server"]
CONDITIONS = [
    "",
    'when { context.input.repo like "acme/*" }',
    "when { context.input has amount && context.input.amount < 1000 }",
    "when { context.via_codemode }",
    "unless { context.via_codemode }",
    'when { context.client_id == "cli" }',
    'when { context.scopes.contains("db") }',
    'when { principal in Group::"g{n}" }',
    'when {{ action == Action::"s{s}_t{t}" }}',
    'when {{ resource == Server::"s{s}" }}',
    "when { context.time.hour < 12 }",
    "when { false }",
    'when { context.input.repo == "x" } unless { context.input.repo like "x*" }',
]


def generated(seed: int) -> tuple[dict[str, list[dict[str, Any]]], str]:
    rng = random.Random(seed)
    kinds = {f"s{s}": {f"t{t}": rng.choice(["read", "write", "destructive"]) for t in range(8)} for s in range(4)}
    policies = []
    for i in range(40):
        values = {
            "n": rng.randrange(3),
            "s": rng.randrange(4),
            "s2": rng.randrange(4),
            "t": rng.randrange(8),
            "kind": rng.choice(["read", "write", "destructive"]),
        }
        effect = "permit" if rng.random() < 0.7 else "forbid"
        scope = ", ".join(
            rng.choice(options).format(**values) for options in (SCOPES_PRINCIPAL, SCOPES_ACTION, SCOPES_RESOURCE)
        )
        condition = rng.choice(CONDITIONS).replace("{{", "{").replace("}}", "}")
        for key, value in values.items():
            condition = condition.replace("{" + key + "}", str(value))
        policies.append(f'@id("p{i}")\n{effect} ({scope}) {condition};')
    return tools(kinds), "\n".join(policies)


GENERATED_SUBJECTS = [
    Subject("u0", ("g0",)),
    Subject("u1", ("g1", "g2"), "cli", frozenset({"db"})),
    Subject("u2", ()),
    Subject("u3", ("g0", "g1", "g2"), "cli"),
]


@pytest.mark.parametrize("seed", range(8))
def test_lists_agree_with_per_tool_partial_evaluation(tmp_path: Path, seed: int) -> None:
    catalog, policies = generated(seed)
    engine = make_engine(tmp_path, policies, catalog, strict=False)
    snap = engine.snapshot
    targets = [(action, info.server) for action, info in snap.built.actions.items()]
    targets += [(action, f"s{s}") for action in ("read_resource", "get_prompt") for s in range(4)]
    targets += [("s0_t0", "s1"), ("use_codemode", "codemode"), ("nope", "s0")]
    counts = {True: 0, False: 0}
    for who in GENERATED_SUBJECTS:
        for via in (False, True):
            for action, server in targets:
                expected = engine.partially_evaluate(who, action, server, via_codemode=via)
                assert engine.visible(who, action, server, via_codemode=via) is expected, (who, action, server, via)
                counts[expected] += 1
    assert counts[True] > 10 and counts[False] > 10
    assert len(snap.classes) < sum(counts.values())  # some evaluations were shared or skipped


@pytest.mark.parametrize("seed", range(3))
def test_decisions_on_slices_agree_on_a_generated_set(tmp_path: Path, seed: int) -> None:
    catalog, policies = generated(seed)
    engine = make_engine(tmp_path, policies, catalog, strict=False)
    rng = random.Random(seed)
    actions = list(engine.snapshot.built.actions.items())
    for _ in range(300):
        who = rng.choice(GENERATED_SUBJECTS)
        action, info = rng.choice(actions)
        server = info.server if rng.random() < 0.8 else f"s{rng.randrange(4)}"
        arguments: dict[str, Any] = {"repo": rng.choice(["acme/x", "x", "xy", "other"])}
        if rng.random() < 0.5:
            arguments["amount"] = rng.choice([5, 999, 1000, 5000])
        via = rng.random() < 0.5
        now = at(rng.randrange(24), rng.randrange(1, 8))
        expected = reference(engine, who, action, server, arguments, via_codemode=via, now=now)
        assert engine.decide(who, action, server, arguments, via_codemode=via, now=now) == expected
        assert engine.decide(who, action, server, arguments, via_codemode=via, now=now) == expected
