"""Cedar policies in a running portal (`portal.policy.stage`): lists, calls, approvals, reloads, Code Mode.

One portal for the module in front of `web` (the test upstream: `whoami`, `add(a, b)`, `secret`, ...,
a resource `memo://1` and a prompt `greet`), with the policies below. Users: alice (group eng), bob (no
group), carol (group ops). Every token carries `tools:*`, so what differs between them is the policies.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from gateway_support import MODERN_HEADERS, Launcher, PortalUnderTest, client, eventually, modern_body, text_of

from portal.settings import ServerConfig

pytestmark = pytest.mark.asyncio(loop_scope="module")

POLICIES = """\
@id("everyone.whoami")
permit (principal, action == Action::"web_whoami", resource);

@id("eng.small-sums")
permit (principal in Group::"eng", action == Action::"web_add", resource)
when { context.input.a < 100 };

@id("eng.reads")
permit (principal in Group::"eng", action in [Action::"read_resource", Action::"get_prompt"], resource);

@id("nobody.secret")
forbid (principal, action == Action::"web_secret", resource);

@id("eng.secret-try")
permit (principal in Group::"eng", action == Action::"web_secret", resource);

@id("ops.add-with-approval")
@approval("required")
permit (principal in Group::"ops", action == Action::"web_add", resource);

@id("codemode")
permit (principal, action == Action::"use_codemode", resource);

@id("no-sums-from-codemode")
forbid (principal, action == Action::"web_add", resource)
when { context.via_codemode };
"""

ELICITING = {"elicitation": {"url": {}}}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PortalUnderTest]:
    launch = Launcher(Path(tmp_path_factory.mktemp("policy")))
    try:
        web = await launch.upstream("web")
        p = await launch.portal(ServerConfig(name="web", url=web.url), policies=POLICIES)
        await p.wait_listed("web")
        p.add_user("alice", groups=["eng"])
        p.add_user("bob")
        p.add_user("carol", groups=["ops"])
        yield p
    finally:
        await launch.aclose()


def token(p: PortalUnderTest, user: str, path: str = "/mcp", scopes: tuple[str, ...] = ("tools:*",)) -> str:
    """A token of `user` carrying their groups, as the portal issues them."""
    groups = p.auth.users.require(user).groups
    return p.auth.mint_access_token(user, "policy-tests", scopes, p.url(path), 600, groups=groups)


async def call(
    p: PortalUnderTest,
    user: str,
    name: str,
    arguments: dict[str, Any],
    *,
    request_id: str = "1",
    capabilities: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    body = modern_body("tools/call", {"name": name, "arguments": arguments, **(extra or {})}, request_id=request_id)
    if capabilities is not None:
        body["params"]["_meta"]["io.modelcontextprotocol/clientCapabilities"] = capabilities
    headers = {**MODERN_HEADERS, "Mcp-Method": "tools/call", "Mcp-Name": name}
    headers["Authorization"] = f"Bearer {token(p, user)}"
    status, _, answer = await p.post(body, headers=headers)
    assert status == 200, answer
    return answer  # type: ignore[no-any-return]


async def end_record(p: PortalUnderTest, request_id: str) -> dict[str, Any]:
    (record,) = await p.audit_records(request_id=request_id, phase="end")
    return record


async def test_lists_show_exactly_what_the_policies_could_permit(world: PortalUnderTest, era: str) -> None:
    async with client(world.mcp(), era, token=token(world, "alice")) as c:
        assert {tool.name for tool in (await c.list_tools()).tools} == {"web_whoami", "web_add"}
        assert {str(r.uri) for r in (await c.list_resources()).resources} == {"memo://web/1"}
        assert {prompt.name for prompt in (await c.list_prompts()).prompts} == {"web_greet"}
    async with client(world.mcp(), era, token=token(world, "bob")) as c:
        assert {tool.name for tool in (await c.list_tools()).tools} == {"web_whoami"}
        assert (await c.list_resources()).resources == []
        assert (await c.list_prompts()).prompts == []


async def test_an_argument_condition_decides_the_call_and_a_denial_is_a_tool_error(world: PortalUnderTest) -> None:
    allowed = await call(world, "alice", "web_add", {"a": 2, "b": 3}, request_id="small")
    assert allowed["result"]["structuredContent"] == {"result": 5}
    denied = await call(world, "alice", "web_add", {"a": 500, "b": 3}, request_id="large")
    assert denied["result"]["isError"] is True
    assert denied["result"]["content"][0]["text"] == "not permitted: web_add"
    record = await end_record(world, "large")
    assert (record["outcome"], record["decision"], record["error_code"]) == ("denied", "deny", "not_permitted")
    assert record["policy_version"] == world.portal.policy.engine.version
    allowed_record = await end_record(world, "small")
    assert allowed_record["decision"] == "allow" and allowed_record["policy_ids"] == ["eng.small-sums"]


async def test_a_forbid_wins_over_a_permit_and_is_named_in_the_record(world: PortalUnderTest) -> None:
    answer = await call(world, "alice", "web_secret", {}, request_id="secret")
    assert answer["result"]["isError"] is True and "nobody.secret" not in str(answer)  # no policy text to clients
    record = await end_record(world, "secret")
    assert record["decision"] == "deny" and record["policy_ids"] == ["nobody.secret"]


async def test_a_held_call_waits_for_an_approval_through_input_required_then_goes_through_once(
    world: PortalUnderTest,
) -> None:
    arguments = {"a": 7, "b": 8}
    held = (await call(world, "carol", "web_add", arguments, request_id="held-1", capabilities=ELICITING))["result"]
    assert held["resultType"] == "input_required"
    elicitation = held["inputRequests"]["approval"]
    assert elicitation["method"] == "elicitation/create" and elicitation["params"]["mode"] == "url"
    url = elicitation["params"]["url"]
    approval_id = url.rsplit("/", 1)[1]
    async with world.http.get(url) as response:
        page = await response.text()
        assert response.status == 200 and "waiting for an operator" in page
        assert response.headers["X-Frame-Options"] == "DENY"

    retry = {"inputResponses": {"approval": {"action": "accept"}}, "requestState": held["requestState"]}
    again = (
        await call(world, "carol", "web_add", arguments, request_id="held-2", capabilities=ELICITING, extra=retry)
    )["result"]
    assert again["resultType"] == "input_required"  # nobody approved yet

    admin = world.token(audience=world.url("/api"), scopes=("admin",))
    async with world.http.post(
        world.url(f"/api/approvals/{approval_id}/approve"), headers={"Authorization": f"Bearer {admin}"}
    ) as response:
        assert response.status == 200, await response.text()
    done = await call(world, "carol", "web_add", arguments, request_id="held-3", capabilities=ELICITING, extra=retry)
    assert done["result"]["structuredContent"] == {"result": 15}
    once = (await call(world, "carol", "web_add", arguments, request_id="held-4", capabilities=ELICITING))["result"]
    assert once["resultType"] == "input_required"  # single use: the next identical call waits again
    assert (await end_record(world, "held-1"))["outcome"] == "pending"
    assert (await end_record(world, "held-3"))["outcome"] == "ok"


async def test_a_client_that_cannot_follow_a_url_gets_a_clear_error_naming_the_request(world: PortalUnderTest) -> None:
    answer = await call(world, "carol", "web_add", {"a": 1, "b": 1}, request_id="held-legacy")
    error = answer["error"]
    assert error["data"]["code"] == "approval_pending" and error["data"]["approval_id"]
    assert "needs an operator's approval" in error["message"]


async def test_inner_calls_of_code_mode_are_decided_with_via_codemode(world: PortalUnderTest, era: str) -> None:
    codemode = token(world, "alice", "/codemode/mcp", ("codemode", "tools:*"))
    async with client(world.url("/codemode/mcp"), era, token=codemode) as c:
        assert "whoami" in text_of(await c.call_tool("search", {"query": "whoami"}))
        # The SDK holds only what a program may call: `add` is forbidden from Code Mode.
        assert "no tool matches" in text_of(await c.call_tool("search", {"query": "add two numbers"}))
        result = await c.call_tool("execute", {"code": "from tools import web\nawait web.whoami()"})
        assert not result.is_error, text_of(result)
        refused = await c.call_tool("execute", {"code": "from tools import web\nawait web.add(a=1, b=2)"})
        assert refused.is_error


async def test_a_changed_policy_file_is_in_force_on_the_next_calls_and_a_broken_one_is_refused(
    world: PortalUnderTest,
) -> None:
    engine = world.portal.policy.engine
    folder = engine.directory
    before = engine.version
    assert (await call(world, "bob", "web_whoami", {}, request_id="bob-1"))["result"]["content"][0]["text"] == "web"
    (folder / "extra.cedar").write_text('@id("bob.no-whoami")\nforbid (principal == User::"bob", action, resource);\n')
    await eventually(lambda: engine.version != before, what="the new set in force")
    assert (await call(world, "bob", "web_whoami", {}, request_id="bob-2"))["result"]["isError"] is True
    in_force = engine.version
    (folder / "broken.cedar").write_text("permit (principal, action, resource")  # no closing parenthesis
    await eventually(lambda: engine.last_error is not None, what="the broken set refused")
    assert engine.version == in_force
    assert "broken.cedar:1" in str(engine.last_error)
    (folder / "broken.cedar").unlink()
    (folder / "extra.cedar").unlink()
    await eventually(lambda: engine.version == before, what="the first set back in force")


async def api(p: PortalUnderTest, method: str, path: str, scopes: tuple[str, ...], body: Any = None) -> tuple[int, Any]:
    token = p.token(audience=p.url("/api"), scopes=scopes)
    async with p.http.request(method, p.url(path), json=body, headers={"Authorization": f"Bearer {token}"}) as response:
        return response.status, await response.json()


async def admin_records(p: PortalUnderTest, action: str) -> list[dict[str, Any]]:
    return await p.audit_records(kind="admin", method=action)


async def test_the_admin_api_shows_explains_and_reloads_the_set(world: PortalUnderTest) -> None:
    engine = world.portal.policy.engine
    status, shown = await api(world, "GET", "/api/policies", ("audit:read",))
    assert status == 200 and shown["version"] == engine.version
    assert {"id": "nobody.secret", "file": "main.cedar", "line": 11} in [
        {key: policy[key] for key in ("id", "file", "line")} for policy in shown["policies"]
    ]
    explain = {"user": "alice", "groups": ["eng"], "tool": "web_add", "args": {"a": 1, "b": 2}}
    status, answer = await api(world, "POST", "/api/policies/explain", ("audit:read",), explain)
    assert status == 200 and (answer["decision"], answer["policy_ids"]) == ("allow", ["eng.small-sums"])
    explain["args"] = {"a": 500, "b": 2}
    assert (await api(world, "POST", "/api/policies/explain", ("audit:read",), explain))[1]["decision"] == "deny"

    status, _ = await api(world, "POST", "/api/policies/reload", ("audit:read",))
    assert status == 403  # reading is not changing
    folder = engine.directory
    in_force = engine.version
    (folder / "broken.cedar").write_text("forbid (principal, action, resource")
    try:
        status, refused = await api(world, "POST", "/api/policies/reload", ("policies:write",))
    finally:
        (folder / "broken.cedar").unlink()
    assert status == 422 and refused["error"]["code"] == "policy_set_refused"
    assert "broken.cedar:1" in refused["error"]["message"] and engine.version == in_force
    status, reloaded = await api(world, "POST", "/api/policies/reload", ("admin",))
    assert status == 200 and reloaded["version"] == in_force
    records = await admin_records(world, "policy.reload")
    assert any(r["details"]["details"].get("refused") for r in records)
    assert any(r["principal"] == "tester" and "previous" in r["details"]["details"] for r in records)
    # The edits of the earlier test were picked up by the folder watcher: admin events too.
    assert any(r["principal"] == "portal" and r["details"]["details"].get("source") for r in records)
