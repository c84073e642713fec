"""The audit log of a running portal: every request that reaches it leaves its records (`portal.audit.stage`).

One portal for the module, in front of `vault`, a test upstream whose tools take secrets as arguments,
fail, and echo. Calls are made with SDK clients of both eras and with raw requests; what the
portal recorded is read back from its database once the writer has caught up.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from gateway_support import MODERN_HEADERS, Launcher, PortalUnderTest, client, eventually, modern_body, text_of
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from portal.audit.log import AuditLog
from portal.settings import ServerConfig

pytestmark = pytest.mark.asyncio(loop_scope="module")

PASSWORD = "correct-horse-battery-staple-4711"
API_KEY = "sk-live-0123456789abcdefghijklmnopqrstuv"


def build_vault() -> MCPServer:
    server = MCPServer("vault")

    @server.tool()
    def login(user: str, password: str) -> str:
        """Check a password."""
        return f"welcome {user}"

    @server.tool()
    def echo(text: str) -> str:
        """Echo the text."""
        return text

    @server.tool()
    def fail() -> str:
        """Always fails."""
        raise ToolError("the vault is closed")

    return server


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PortalUnderTest]:
    launch = Launcher(Path(tmp_path_factory.mktemp("audit")))
    try:
        vault = await launch.upstream("vault", app=build_vault().streamable_http_app())
        p = await launch.portal(ServerConfig(name="vault", url=vault.url))
        await p.wait_listed("vault")
        p.add_user("auditor")
        yield p
    finally:
        await launch.aclose()


def audit_of(p: PortalUnderTest) -> AuditLog:
    log = p.portal.audit
    assert log is not None
    return log


async def records(p: PortalUnderTest, **where: Any) -> list[dict[str, Any]]:
    return await p.audit_records(**where)


async def call_records(p: PortalUnderTest, request_id: str, count: int = 2) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    async def stored() -> bool:
        nonlocal found
        found = await records(p, request_id=request_id)
        return len(found) >= count

    deadline = asyncio.get_running_loop().time() + 10
    while not await stored():
        assert asyncio.get_running_loop().time() < deadline, f"records of {request_id}: {found}"
        await asyncio.sleep(0.02)
    return found


async def raw_call(
    p: PortalUnderTest, name: str, arguments: dict[str, Any], request_id: str, *, token: str | None = None
) -> tuple[int, Any]:
    body = modern_body("tools/call", {"name": name, "arguments": arguments}, request_id=request_id)
    headers = {**MODERN_HEADERS, "Mcp-Method": "tools/call", "Mcp-Name": name}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    status, _, answer = await p.post(body, headers=headers)
    return status, answer


async def test_a_call_leaves_a_start_and_an_end_record_with_who_what_and_how_it_went(world: PortalUnderTest) -> None:
    status, answer = await raw_call(world, "vault_echo", {"text": "hello"}, "call-1")
    assert status == 200 and answer["result"]["content"][0]["text"] == "hello"
    start, end = await call_records(world, "call-1")
    assert (start["phase"], end["phase"]) == ("start", "end")
    assert start["call_id"] == end["call_id"] == start["id"]
    for record in (start, end):
        assert record["kind"] == "call"
        assert record["principal"] == "tester" and record["client_id"] and record["token_id"]
        assert (record["endpoint"], record["server"], record["method"]) == ("/mcp", "vault", "tools/call")
        assert record["tool"] == "echo"
    assert start["arguments"] == {"text": "hello"} and end["arguments"] is None
    assert end["outcome"] == "ok" and end["error_code"] is None
    assert end["latency_us"] > 0 and end["upstream_latency_us"] > 0
    assert end["latency_us"] >= end["upstream_latency_us"]
    assert end["result_size"] > 0 and len(end["result_hash"]) == 64
    assert end["result"] is None  # result bodies are off by default: only their size and hash
    assert start["seq"] < end["seq"]


async def test_lists_reads_and_prompts_are_recorded_too(world: PortalUnderTest, era: str) -> None:
    log = audit_of(world)
    before = (await records(world))[-1]["seq"] if await records(world) else 0
    async with client(world.mcp(), era) as c:
        await c.list_tools()
    await eventually(lambda: log.written > 0)
    methods = [(r["method"], r["phase"]) for r in await records(world) if r["seq"] > before and r["kind"] == "call"]
    assert ("tools/list", "start") in methods and ("tools/list", "end") in methods


async def test_a_tool_error_and_an_unknown_tool_are_recorded_as_errors(world: PortalUnderTest) -> None:
    status, answer = await raw_call(world, "vault_fail", {}, "call-fail")
    assert status == 200 and answer["result"]["isError"] is True
    end = (await call_records(world, "call-fail"))[-1]
    assert (end["outcome"], end["error_code"]) == ("error", "tool_error")

    status, answer = await raw_call(world, "vault_nothing", {}, "call-unknown")
    assert "error" in answer, answer
    end = (await call_records(world, "call-unknown", count=1))[-1]
    assert end["outcome"] == "error" and end["error_code"] == answer["error"]["data"]["code"]
    assert end["tool"] == "vault_nothing"  # the name as the client sent it: no such tool to resolve it to


async def test_a_call_refused_for_lack_of_scope_is_recorded_as_a_denial(world: PortalUnderTest) -> None:
    token = world.token(scopes=("tools:vault:echo",))
    status, _ = await raw_call(world, "vault_login", {"user": "a", "password": PASSWORD}, "call-denied", token=token)
    assert status == 403
    # Never forwarded, so no start record: one record, with the arguments and the outcome.
    (record,) = await call_records(world, "call-denied", count=1)
    assert record["phase"] == "end" and record["server"] == "vault" and record["tool"] == "login"
    assert (record["outcome"], record["error_code"]) == ("denied", "insufficient_scope")
    assert record["arguments"]["user"] == "a" and PASSWORD not in str(record["arguments"])


async def test_secrets_in_arguments_are_stored_as_markers_and_never_in_clear(world: PortalUnderTest) -> None:
    status, _ = await raw_call(world, "vault_login", {"user": "alice", "password": PASSWORD}, "call-secret")
    assert status == 200
    status, _ = await raw_call(world, "vault_echo", {"text": f"my key is {API_KEY}"}, "call-key")
    assert status == 200
    start = (await call_records(world, "call-secret"))[0]
    assert start["arguments"]["user"] == "alice"
    assert PASSWORD not in str(start["arguments"]["password"])
    assert str(start["arguments"]["password"]).startswith("[redacted")
    await call_records(world, "call-key")
    log = audit_of(world)
    database = Path(str(log.engine.url.database))
    stored = b"".join(path.read_bytes() for path in database.parent.iterdir() if path.is_file())
    for secret in (PASSWORD, API_KEY):
        assert secret.encode() not in stored  # the database, its WAL, the journal segments


async def test_a_codemode_run_is_the_parent_of_its_inner_calls(world: PortalUnderTest, era: str) -> None:
    token = world.token(audience=world.url("/codemode/mcp"), scopes=("codemode", "tools:*"))
    code = 'from tools import vault\na = await vault.echo(text="one")\nb = await vault.echo(text="two")\nprint(a, b)'
    async with client(world.url("/codemode/mcp"), era, token=token) as c:
        result = await c.call_tool("execute", {"code": code})
    assert "one" in text_of(result) and "two" in text_of(result), text_of(result)
    runs = [r for r in await records(world, endpoint="/codemode/mcp", phase="start") if r["tool"] == "execute"]
    run = runs[-1]
    assert run["arguments"]["code"] == code
    inner = await records(world, parent_id=run["call_id"], phase="start")
    assert [r["arguments"] for r in inner] == [{"text": "one"}, {"text": "two"}]
    assert all(r["endpoint"] == "/mcp" and r["tool"] == "echo" for r in inner)
    assert all(r["details"]["via_codemode"] is True for r in inner)
    # The listing the portal made to build the SDK is not a client's request: not recorded.
    sdk = [
        (r["request_id"], r["method"], r["endpoint"], r["phase"])
        for r in await records(world)
        if str(r["request_id"] or "").endswith("/sdk")
    ]
    assert not sdk, sdk


async def test_a_hundred_concurrent_calls_leave_exactly_their_records_in_a_valid_chain(
    world: PortalUnderTest,
) -> None:
    answers = await asyncio.gather(*(raw_call(world, "vault_echo", {"text": str(i)}, f"many-{i}") for i in range(100)))
    assert all(status == 200 for status, _ in answers)
    stored = [r for r in await records(world) if str(r["request_id"] or "").startswith("many-")]
    assert len(stored) == 200
    assert {r["request_id"] for r in stored} == {f"many-{i}" for i in range(100)}
    for i in range(100):
        phases = sorted(r["phase"] for r in stored if r["request_id"] == f"many-{i}")
        assert phases == ["end", "start"]
    report = await asyncio.to_thread(audit_of(world).verify)
    assert report.ok, report.message


async def test_auth_events_are_recorded(world: PortalUnderTest) -> None:
    status, _ = await raw_call(world, "vault_echo", {"text": "x"}, "call-bad-token", token="not-a-token")
    assert status == 401
    await eventually(lambda: True)
    events = [r for r in await records(world, kind="auth")]
    assert events, "no auth event recorded"
    assert all(r["phase"] == "event" and r["method"].startswith("auth.") for r in events)
    assert any(r["outcome"] == "failure" for r in events)


async def test_the_readiness_check_reports_the_audit_log(world: PortalUnderTest) -> None:
    assert (await world.readyz())["audit"] == "ok"


async def test_sdk_clients_see_tool_errors_unchanged_while_audited(world: PortalUnderTest, era: str) -> None:
    async with client(world.mcp(), era) as c:
        result = await c.call_tool("vault_fail", {})
    assert result.is_error and "the vault is closed" in text_of(result)
