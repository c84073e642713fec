from __future__ import annotations

import asyncio
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy

from portal.auth.principal import Principal
from portal.gateway.routing import Target
from portal.pipeline import Endpoint, McpRequest
from portal.policy import PolicyEngine, PolicyError, PolicyStage, Subject
from portal.policy.cli import catalog_from_file
from portal.policy.obligations import ApprovalPending, ApprovalStore, MemoryRateLimiter, RateLimited, RedisRateLimiter
from portal.policy.testing import run_cases

ROOT = Path(__file__).resolve().parents[2] / "policies"
GH_TOOLS = {
    "github": [
        {
            "name": "create_issue",
            "inputSchema": {
                "type": "object",
                "properties": {"repo": {"type": "string"}, "amount": {"type": "integer"}},
                "required": ["repo"],
            },
            "annotations": {"destructiveHint": False},
        },
        {"name": "delete_repo", "inputSchema": {"type": "object", "properties": {"repo": {"type": "string"}}}},
    ]
}
GH_POLICIES = """
@id("eng.github-issues")
permit (principal in Group::"eng", action == Action::"github_create_issue", resource)
when {
  context.input.repo like "acme/*" &&
  (if context.input has amount then context.input.amount < 1000 else true)
};

@id("eng.all-github")
permit (principal in Group::"admins", action in Action::"server:github", resource);

@id("no-destructive-from-codemode")
forbid (principal, action in Action::"destructive", resource) when { context.via_codemode };
"""


def make_dir(tmp_path: Path, policies: str = GH_POLICIES) -> Path:
    shutil.copy(ROOT / "schema.cedarschema", tmp_path / "schema.cedarschema")
    (tmp_path / "main.cedar").write_text(policies)
    return tmp_path


def gh_engine(tmp_path: Path, policies: str = GH_POLICIES) -> PolicyEngine:
    import json

    (tmp_path / "tools.json").write_text(json.dumps(GH_TOOLS))
    return PolicyEngine(make_dir(tmp_path, policies), catalog_from_file(tmp_path / "tools.json"), poll_interval=0)


ENG = Subject("alice", ("eng",))
ADMIN = Subject("root", ("admins",))


def test_argument_conditions_and_groups(tmp_path: Path) -> None:
    engine = gh_engine(tmp_path)
    assert engine.decide(ENG, "github_create_issue", "github", {"repo": "acme/x"}).allowed
    assert engine.decide(ENG, "github_create_issue", "github", {"repo": "acme/x", "amount": 999}).allowed
    assert not engine.decide(ENG, "github_create_issue", "github", {"repo": "acme/x", "amount": 1000}).allowed
    assert not engine.decide(ENG, "github_create_issue", "github", {"repo": "other/x"}).allowed
    assert not engine.decide(Subject("bob"), "github_create_issue", "github", {"repo": "acme/x"}).allowed
    decision = engine.decide(ENG, "github_create_issue", "github", {"repo": "acme/x"})
    assert decision.policy_ids == ("eng.github-issues",) and decision.version == engine.version
    # A wrong type is denied (fail closed), not evaluated.
    assert not engine.decide(ENG, "github_create_issue", "github", {"repo": 5}).allowed


def test_forbid_wins(tmp_path: Path) -> None:
    engine = gh_engine(tmp_path)
    assert engine.decide(ADMIN, "github_delete_repo", "github", {"repo": "a"}).allowed
    denied = engine.decide(ADMIN, "github_delete_repo", "github", {"repo": "a"}, via_codemode=True)
    assert not denied.allowed and denied.policy_ids == ("no-destructive-from-codemode",)


def test_list_agrees_with_call(tmp_path: Path) -> None:
    engine = gh_engine(tmp_path)
    assert engine.visible(ENG, "github_create_issue", "github")  # depends on arguments
    assert not engine.visible(ENG, "github_delete_repo", "github")  # no arguments could allow it
    assert not engine.visible(ADMIN, "github_delete_repo", "github", via_codemode=True)
    assert engine.visible(ADMIN, "github_delete_repo", "github")
    for who in (ENG, ADMIN, Subject("bob")):
        for action in ("github_create_issue", "github_delete_repo"):
            if not engine.visible(who, action, "github"):
                for args in ({"repo": "acme/x"}, {"repo": "z"}, {"repo": "acme/x", "amount": 1}):
                    assert not engine.decide(who, action, "github", args).allowed


def test_broken_set_is_refused_with_file_and_line(tmp_path: Path) -> None:
    engine = gh_engine(tmp_path)
    version = engine.version
    (tmp_path / "main.cedar").write_text(
        GH_POLICIES + '\n@id("typo")\npermit (principal, action, resource)\nwhen { context.input.rep == "x" };\n'
    )
    with pytest.raises(PolicyError) as caught:
        engine.reload()
    assert f"main.cedar:{GH_POLICIES.count(chr(10)) + 2}" in str(caught.value)
    (tmp_path / "main.cedar").write_text(GH_POLICIES + "\npermit (principal, action, resource) when { 1 = };\n")
    with pytest.raises(PolicyError) as caught:
        engine.reload()
    assert f"main.cedar:{GH_POLICIES.count(chr(10)) + 2}" in str(caught.value)
    assert engine.version == version
    assert engine.decide(ENG, "github_create_issue", "github", {"repo": "acme/x"}).allowed


def test_hot_reload_under_concurrent_decisions(tmp_path: Path) -> None:
    engine = gh_engine(tmp_path)
    stop = threading.Event()
    outcomes: list[bool] = []
    errors: list[BaseException] = []

    def decide() -> None:
        try:
            while not stop.is_set():
                outcomes.append(engine.decide(ENG, "github_create_issue", "github", {"repo": "acme/x"}).allowed)
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=decide) for _ in range(4)]
    for thread in threads:
        thread.start()
    first = engine.version
    (tmp_path / "main.cedar").write_text(GH_POLICIES.replace('"acme/*"', '"acme/*" && false'))
    assert engine.poll()  # good set: in force
    second = engine.version
    (tmp_path / "main.cedar").write_text("permit (principal, action, resource) when { broken")
    time.sleep(0.01)
    assert not engine.poll()  # broken set: refused, the good one stays
    time.sleep(0.05)
    stop.set()
    for thread in threads:
        thread.join()
    assert not errors and outcomes and first != second == engine.version
    assert True in outcomes and False in outcomes
    assert not engine.decide(ENG, "github_create_issue", "github", {"repo": "acme/x"}).allowed


def test_default_policy_tests_pass() -> None:
    engine = PolicyEngine(ROOT, catalog_from_file(ROOT / "tools.json"), poll_interval=0)
    results = run_cases(engine, ROOT / "tests")
    assert results and all(result.ok for result in results), [r for r in results if not r.ok]


def principal(subject: str, groups: tuple[str, ...]) -> Principal:
    return Principal(subject, "client", frozenset({"tools:*"}), "jti", "aud", 0, groups)


def call(name: str, server: str, arguments: dict[str, Any], who: Principal, **state: Any) -> McpRequest:
    params = {"name": name, "arguments": arguments}
    return McpRequest(
        Endpoint("aggregated", "/mcp"),
        "tools/call",
        params,
        1,
        "2025-11-25",
        principal=who,
        target=Target(server, "tool", name, params),
        state=dict(state),
    )


async def ok_handler(request: McpRequest) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": "done"}], "isError": False}


def approval_store() -> ApprovalStore:
    engine = sqlalchemy.create_engine(
        "sqlite://", poolclass=sqlalchemy.pool.StaticPool, connect_args={"check_same_thread": False}
    )
    store = ApprovalStore(engine, ttl=60)
    store.create_table()
    return store


async def test_stage_denies_as_tool_error_and_records_state() -> None:
    stage = PolicyStage(PolicyEngine(ROOT, catalog_from_file(ROOT / "tools.json"), poll_interval=0))
    request = call(
        "create_note", "notes", {"title": "t", "body": "b", "tags": ["secret"]}, principal("demo", ("demo",))
    )
    result = await stage(request, ok_handler)
    assert result["isError"] and result["content"][0]["text"].startswith("not permitted")
    assert "secret" not in result["content"][0]["text"]
    assert request.state["decision"] == "deny" and request.state["policy_ids"] == ["notes.no-secret-tag"]
    request = call("create_note", "notes", {"title": "t", "body": "b"}, principal("demo", ("demo",)))
    assert not (await stage(request, ok_handler))["isError"]
    assert request.state["redact"] == ["input.body"] and request.state["decision"] == "allow"
    listing = McpRequest(
        Endpoint("server", "/servers/notes/mcp", "notes"),
        "tools/list",
        {},
        2,
        "2025-11-25",
        principal=principal("demo", ("demo",)),
        state={"via_codemode": True},
    )

    async def tools(request: McpRequest) -> dict[str, Any]:
        return {"tools": [{"name": "create_note"}, {"name": "delete_note"}]}

    assert [t["name"] for t in (await stage(listing, tools))["tools"]] == ["create_note"]


async def test_approval_round_trip() -> None:
    store = approval_store()
    stage = PolicyStage(PolicyEngine(ROOT, catalog_from_file(ROOT / "tools.json"), poll_interval=0), approvals=store)
    olga = principal("olga", ("ops",))
    with pytest.raises(ApprovalPending) as pending:
        await stage(call("delete_note", "notes", {"id": 7}, olga), ok_handler)
    approval_id = pending.value.data["approval_id"]
    assert "retry" in pending.value.message
    with pytest.raises(ApprovalPending):  # still pending: same request, no duplicate
        await stage(call("delete_note", "notes", {"id": 7}, olga), ok_handler)
    assert [row.id for row in store.list()] == [approval_id]
    store.decide(approval_id, True)
    with pytest.raises(ApprovalPending):  # other arguments: not approved
        await stage(call("delete_note", "notes", {"id": 8}, olga), ok_handler)
    assert not (await stage(call("delete_note", "notes", {"id": 7}, olga), ok_handler))["isError"]
    with pytest.raises(ApprovalPending):  # single use
        await stage(call("delete_note", "notes", {"id": 7}, olga), ok_handler)
    # expiry
    expired = store.consume_or_request("olga", "notes_delete_note", {"id": 9}, now=0)
    with pytest.raises(Exception, match="expired"):
        store.decide(expired.id, True)
    store.decide(store.consume_or_request("olga", "notes_delete_note", {"id": 10}).id, True)
    assert (
        store.consume_or_request("olga", "notes_delete_note", {"id": 10}, now=int(time.time()) + 3600).status
        == "pending"
    )


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_rate_limit(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    limiter: MemoryRateLimiter | RedisRateLimiter
    if backend == "redis":
        limiter = RedisRateLimiter(request.getfixturevalue("redis_url"), prefix=f"test:{time.time_ns()}:")
    else:
        limiter = MemoryRateLimiter()
    policies = GH_POLICIES.replace('@id("eng.github-issues")', '@id("eng.github-issues")\n@rate("3/minute")')
    stage = PolicyStage(gh_engine(tmp_path, policies), rate_limiter=limiter)
    alice = principal("alice", ("eng",))
    for _ in range(3):
        assert not (await stage(call("create_issue", "github", {"repo": "acme/x"}, alice), ok_handler))["isError"]
    with pytest.raises(RateLimited):
        await stage(call("create_issue", "github", {"repo": "acme/x"}, alice), ok_handler)
    # another principal has its own budget
    other = principal("ann", ("eng",))
    assert not (await stage(call("create_issue", "github", {"repo": "acme/x"}, other), ok_handler))["isError"]
    await limiter.close()


async def test_watcher_reloads(tmp_path: Path) -> None:
    engine = gh_engine(tmp_path)
    engine.poll_interval = 0.02
    await engine.start()
    try:
        before = engine.version
        (tmp_path / "extra.cedar").write_text('@id("x")\npermit (principal == User::"bob", action, resource);\n')
        for _ in range(100):
            await asyncio.sleep(0.02)
            if engine.version != before:
                break
        assert engine.version != before
        assert engine.decide(Subject("bob"), "github_delete_repo", "github", {}).allowed
    finally:
        await engine.close()
