"""Code Mode through a running portal (`/codemode/mcp`, `portal.gateway.codemode`).

One portal for the module, on 127.0.0.1 under uvicorn, hosting the demo's `notes` (its database `NOTES_DB` in a
temporary folder) and `docs` (`DOCS_DIR` = `examples/docs`) servers in process. Clients are the `mcp` SDK's, in both
eras, with bearer tokens the portal minted for `/codemode/mcp`. A probe stage appended to the portal's pipeline
sees every request that passed the capability guard, inner calls of programs included, and can refuse some of
them as a policy would.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest
import pytest_asyncio
import uvicorn
from gateway_support import MODERN_HEADERS, eventually, modern_body, text_of
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer
from mcp.types import CallToolResult
from starlette.applications import Starlette

from codemode import Sandbox
from portal.app import Portal, create_app
from portal.auth.resource import InsufficientScope
from portal.gateway.codemode import AUDIT_CALL_ID, PARENT_AUDIT_ID, CodeModeGateway, SharedSandbox
from portal.gateway.servers import ServerSet
from portal.pipeline import CODEMODE_RUN, PARENT_REQUEST_ID, VIA_CODEMODE, Handler, McpRequest
from portal.policy.testing import write_policies
from portal.settings import ServerConfig, Settings
from servers import docs, notes
from servers.docs_index import DocsIndex
from servers.notes_store import NoteStore

pytestmark = pytest.mark.asyncio(loop_scope="module")

REPO = Path(__file__).resolve().parents[2]
CODEMODE = "/codemode/mcp"
EVERYTHING = ("codemode", "tools:*")
NOTES_TOOLS = ("create_note", "get_note", "search_notes", "update_note", "delete_note")
WITHOUT_DELETE = ("codemode", "tools:docs", *(f"tools:notes:{tool}" for tool in NOTES_TOOLS if tool != "delete_note"))


class Probe:
    """A pipeline stage after the capability guard: records requests, refuses the inner calls named in `deny`, and
    gives each Code Mode request an audit id, as the audit stage does."""

    def __init__(self) -> None:
        self.seen: list[McpRequest] = []
        self.deny: set[str] = set()

    def reset(self) -> None:
        self.seen.clear()
        self.deny.clear()

    async def __call__(self, request: McpRequest, call_next: Handler) -> dict[str, Any]:
        self.seen.append(request)
        if request.endpoint.kind == "codemode" and request.method == "tools/call":
            request.state[AUDIT_CALL_ID] = f"audit-{request.request_id}"  # as the audit stage marks what it records
        name = request.params.get("name")
        if request.method == "tools/call" and request.state.get(VIA_CODEMODE) and name in self.deny:
            server, _, tool = str(name).partition("_")
            raise InsufficientScope([f"tools:{server}:{tool}"])
        return await call_next(request)

    def calls(self, *, inner: bool) -> list[McpRequest]:
        """The `tools/call`s seen: those programs made (`inner`), or those clients made on `/codemode/mcp`."""
        return [
            r
            for r in self.seen
            if r.method == "tools/call" and (r.endpoint.kind != "codemode" if inner else r.endpoint.kind == "codemode")
        ]


@dataclass
class World:
    """The running portal, the hosted notes server behind it, and how tests reach both."""

    app: Starlette
    base: str
    probe: Probe
    notes_server: MCPServer
    data: Path
    http: httpx2.AsyncClient
    _tokens: dict[tuple[str, tuple[str, ...], str], str] = field(default_factory=dict)

    @property
    def portal(self) -> Portal:
        portal: Portal = self.app.state.portal
        return portal

    @property
    def gateway(self) -> CodeModeGateway:
        return self.portal.codemode

    def token(self, scopes: Iterable[str] = EVERYTHING, *, user: str = "u", path: str = CODEMODE) -> str:
        key = (user, tuple(scopes), path)
        if key not in self._tokens:
            auth = self.portal.auth
            self._tokens[key] = auth.mint_access_token(user, "test-client", list(scopes), f"{self.base}{path}", 300)
        return self._tokens[key]

    @contextlib.asynccontextmanager
    async def client(
        self, era: str, scopes: Iterable[str] = EVERYTHING, *, user: str = "u", path: str = CODEMODE
    ) -> AsyncIterator[Client]:
        headers = {"Authorization": f"Bearer {self.token(scopes, user=user, path=path)}"}
        async with (
            httpx2.AsyncClient(headers=headers, timeout=30) as http,
            Client(streamable_http_client(f"{self.base}{path}", http_client=http), mode=era, cache=None) as client,
        ):
            yield client


def _users_and_environment(patch: pytest.MonkeyPatch, data: Path) -> MCPServer:
    """Fresh demo servers behind the modules the portal hosts, reading their folders from the environment."""
    patch.setenv("NOTES_DB", str(data / "notes.db"))
    patch.setenv("DOCS_DIR", str(REPO / "examples" / "docs"))
    notes_server = notes.build_server(NoteStore())  # opens NOTES_DB on first use
    patch.setattr(notes, "server", notes_server)
    patch.setattr(docs, "server", docs.build_server(DocsIndex()))  # reads DOCS_DIR on first use
    return notes_server


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    data = Path(tmp_path_factory.mktemp("codemode"))
    with contextlib.ExitStack() as stack:
        patch = stack.enter_context(pytest.MonkeyPatch.context())
        notes_server = _users_and_environment(patch, data)
        # The port is bound first, so that public_url (every token's audience) is the URL the tests use.
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        settings = Settings(
            public_url=base,
            database_url=f"sqlite:///{data}/portal.db",
            base_dir=str(data),
            registry_poll_seconds=0.05,
            health_interval_seconds=30.0,
            servers=(
                ServerConfig(name="notes", module="servers.notes", timeout=10, trust_new_tools=True),
                ServerConfig(name="docs", module="servers.docs", timeout=10),
            ),
        )
        write_policies(data / "policies")
        app = create_app(settings)
        probe = Probe()
        app.state.portal.pipeline.append(probe)
        config = uvicorn.Config(app, log_config=None, lifespan="on")
        config.timeout_graceful_shutdown = 1
        server = uvicorn.Server(config)
        task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
        try:
            await eventually(lambda: server.started or task.done(), what="the portal listening")
            assert not task.done(), "the portal stopped before it started"
            portal: Portal = app.state.portal
            await portal.servers.wait_ready(15)
            await eventually(lambda: {"notes", "docs"} <= set(portal.servers.visible()), what="notes and docs")
            for user in ("u", "v"):
                portal.auth.users.add(user, None, [])
            async with httpx2.AsyncClient(timeout=30) as http:
                yield World(app, base, probe, notes_server, data, http)
        finally:
            server.should_exit = True
            await task
            sock.close()


@pytest.fixture
def probe(world: World) -> Iterator[Probe]:
    world.probe.reset()
    yield world.probe
    world.probe.reset()


async def execute(client: Client, code: str) -> tuple[CallToolResult, dict[str, Any]]:
    result = await client.call_tool("execute", {"code": code})
    assert result.structured_content is not None, text_of(result)
    return result, result.structured_content


async def search(client: Client, query: str = "", **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool("search", {"query": query, **arguments})
    assert not result.is_error, text_of(result)
    assert result.structured_content is not None
    return result.structured_content


def found_tools(found: dict[str, Any]) -> list[str]:
    return [hit["tool"] for hit in found["results"]]


# -- listing ------------------------------------------------------------------------------------------------------


async def test_codemode_lists_exactly_search_and_execute(world: World, era: str) -> None:
    async with world.client(era) as client:
        tools = (await client.list_tools()).tools
        assert [tool.name for tool in tools] == ["search", "execute"]
        assert all(tool.output_schema for tool in tools)
        assert (await client.list_resources()).resources == []
        assert (await client.list_prompts()).prompts == []


async def test_the_codemode_endpoint_publishes_its_resource_metadata_with_the_codemode_scope(world: World) -> None:
    response = await world.http.get(f"{world.base}/.well-known/oauth-protected-resource/codemode/mcp")
    assert response.status_code == 200
    metadata = response.json()
    assert metadata["resource"] == f"{world.base}/codemode/mcp"
    assert metadata["scopes_supported"] == ["codemode"]


async def test_a_token_without_the_codemode_scope_is_refused_with_403_insufficient_scope(
    world: World, era: str, probe: Probe
) -> None:
    token = world.token(["tools:*"])
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json",
        "Accept": MODERN_HEADERS["Accept"],
    }
    url = f"{world.base}{CODEMODE}"
    execute_params = {"name": "execute", "arguments": {"code": "1 + 1"}}
    if era == "legacy":
        init = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "0"},
            },
        }
        opened = await world.http.post(url, content=orjson.dumps(init), headers=headers)
        assert opened.status_code == 200, opened.text
        headers |= {"Mcp-Session-Id": opened.headers["mcp-session-id"], "MCP-Protocol-Version": "2025-11-25"}
        bodies = [
            {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}},
            {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": execute_params},
        ]
    else:
        headers |= MODERN_HEADERS
        bodies = [modern_body("tools/list", {}, 2), modern_body("tools/call", execute_params, 3)]
    for body in bodies:
        sent = dict(headers)
        if era != "legacy":
            sent["Mcp-Method"] = str(body["method"])
            if body["method"] == "tools/call":
                sent["Mcp-Name"] = "execute"
        response = await world.http.post(url, content=orjson.dumps(body), headers=sent)
        assert response.status_code == 403, response.text
        challenge = response.headers["www-authenticate"]
        assert 'error="insufficient_scope"' in challenge and 'scope="codemode"' in challenge
        assert response.json()["error"]["data"]["code"] == "insufficient_scope"
    assert probe.seen == []  # refused by the capability guard, before anything after it ran


# -- search ---------------------------------------------------------------------------------------------------------


async def test_search_finds_the_notes_tools_with_typed_signatures(world: World, era: str) -> None:
    async with world.client(era) as client:
        servers = await search(client)
        assert {entry["server"] for entry in servers["servers"]} == {"notes", "docs"}
        found = await search(client, "create a note", limit=5)
        assert found_tools(found)[0] == "notes.create_note"
        assert "notes.create_note(*, title: str" in found["results"][0]["signature"]
        stub = (await search(client, stubs=["notes.search_notes"]))["stubs"]["notes.search_notes"]
        assert "async def search_notes(" in stub
        result = await client.call_tool("search", {"query": "search notes"})
        assert "notes.search_notes(" in text_of(result)


# -- execute --------------------------------------------------------------------------------------------------------

GATHER_PROGRAM = """\
import asyncio
from tools import notes

titles = ["alpha {tag}", "beta {tag}", "gamma {tag}"]
created = await asyncio.gather(*[notes.create_note(title=t, body="body of " + t, tags=["{tag}"]) for t in titles])
fetched = await asyncio.gather(*[notes.get_note(id=note["id"]) for note in created])
print("fetched", len(fetched))
sorted(note["title"] for note in fetched)
"""


async def test_execute_runs_notes_calls_in_parallel_and_returns_the_value(world: World, era: str, probe: Probe) -> None:
    tag = f"gather-{era[:6]}"
    async with world.client(era) as client:
        result, record = await execute(client, GATHER_PROGRAM.format(tag=tag))
    assert not result.is_error, text_of(result)
    assert record["ok"] is True and record["error"] is None
    assert record["value"] == [f"alpha {tag}", f"beta {tag}", f"gamma {tag}"]
    assert record["output"] == "fetched 3\n"
    assert [(c["server"], c["tool"], c["ok"]) for c in record["calls"]] == [("notes", "create_note", True)] * 3 + [
        ("notes", "get_note", True)
    ] * 3
    # The MCP result carries the same as text for the model: the output, then the value.
    assert text_of(result).startswith("fetched 3") and f'=> ["alpha {tag}"' in text_of(result)
    inner = probe.calls(inner=True)
    assert sorted(r.params["name"] for r in inner) == ["notes_create_note"] * 3 + ["notes_get_note"] * 3


async def test_inner_calls_pass_through_the_pipeline_marked_as_via_codemode(
    world: World, era: str, probe: Probe
) -> None:
    program = 'from tools import notes, docs\nawait notes.search_notes(query="alpha")\nawait docs.list_docs()\n"ok"'
    async with world.client(era) as client:
        _, record = await execute(client, program)
    assert record["ok"], record
    [outer] = probe.calls(inner=False)
    inner = probe.calls(inner=True)
    assert [r.params["name"] for r in inner] == ["notes_search_notes", "docs_list_docs"]
    assert outer.params["name"] == "execute" and VIA_CODEMODE not in outer.state
    run = outer.state[CODEMODE_RUN]
    for request in inner:
        assert request.endpoint.kind == "aggregated"
        assert request.state[VIA_CODEMODE] is True
        assert request.state[PARENT_REQUEST_ID] == outer.request_id
        assert request.state[CODEMODE_RUN] == run
        assert request.state[PARENT_AUDIT_ID] == outer.state[AUDIT_CALL_ID]  # a child of the run's audit record
        assert request.principal == outer.principal  # the caller's own identity and capabilities
        assert request.client_info == outer.client_info
        assert request.protocol_version == outer.protocol_version
        assert request.target is not None and request.target.server in ("notes", "docs")  # routed like any call
    assert len({r.request_id for r in inner}) == 2


async def test_a_type_error_comes_back_with_line_numbers_and_calls_nothing(
    world: World, era: str, probe: Probe
) -> None:
    program = (
        "from tools import notes\n"
        'created = await notes.create_note(title="never created", body="")\n'
        'note = await notes.get_note(id="not a number")\n'
    )
    async with world.client(era) as client:
        result, record = await execute(client, program)
        assert result.is_error
        assert record["ok"] is False and record["calls"] == []
        assert record["error"]["kind"] == "type_error"
        assert record["error"]["line"] == 3
        assert "main.py:3:" in record["error"]["message"]
        assert "[type_error (line 3)]" in text_of(result)
        # Nothing ran: no call reached the pipeline, and no note was created.
        assert probe.calls(inner=True) == []
        _, check = await execute(client, 'from tools import notes\n(await notes.search_notes(query="never"))["hits"]')
    assert check["value"] == []


async def test_a_token_without_delete_note_gets_an_sdk_without_it_and_cannot_call_it(
    world: World, era: str, probe: Probe
) -> None:
    async with world.client(era, WITHOUT_DELETE) as client:
        assert "notes.delete_note" not in found_tools(await search(client, "delete a note", limit=50))
        stub = (await search(client, stubs=["notes"]))["stubs"]["notes"]
        assert "async def create_note(" in stub and "delete_note" not in stub
        _, created = await execute(
            client, 'from tools import notes\n(await notes.create_note(title="kept", body=""))["id"]'
        )
        note_id = created["value"]
        # Written as the SDK would have it: the type check refuses it, nothing runs.
        _, typed = await execute(client, f"from tools import notes\nawait notes.delete_note(id={note_id})")
        assert typed["error"]["kind"] == "type_error" and typed["calls"] == []
        # Past the type check, by name: the program's SDK has no such function, so nothing can be called.
        forged = f'from tools import notes\ndelete = getattr(notes, "delete" + "_note")\nawait delete(id={note_id})'
        _, untyped = await execute(client, forged)
        assert untyped["ok"] is False and untyped["calls"] == []
        assert untyped["error"]["kind"] in ("runtime_error", "type_error")
        _, still = await execute(client, f'from tools import notes\n(await notes.get_note(id={note_id}))["title"]')
    assert still["value"] == "kept"
    assert all(r.params["name"] != "notes_delete_note" for r in probe.calls(inner=True))


REFUSED_PROGRAM = """\
from tools import notes
note = await notes.create_note(title="keep me", body="")
try:
    await notes.delete_note(id=note["id"])
    outcome = "deleted"
except RuntimeError as error:
    outcome = str(error)
kept = await notes.get_note(id=note["id"])
[outcome, kept["title"]]
"""


async def test_an_inner_call_the_pipeline_refuses_raises_a_clear_error_inside_the_program(
    world: World, era: str, probe: Probe
) -> None:
    probe.deny.add("notes_delete_note")  # as a policy forbidding destructive tools from programs would
    async with world.client(era) as client:
        result, record = await execute(client, REFUSED_PROGRAM)
    assert record["ok"], record
    outcome, title = record["value"]
    assert title == "keep me"
    assert outcome == "notes.delete_note failed: refused: the token lacks the scope tools:notes:delete_note"
    assert [(c["tool"], c["ok"]) for c in record["calls"]] == [
        ("create_note", True),
        ("delete_note", False),
        ("get_note", True),
    ]
    assert str(world.data) not in text_of(result) and str(REPO) not in text_of(result)


async def test_errors_from_tools_and_programs_show_no_host_paths(world: World, era: str) -> None:
    program = (
        "from tools import docs\n"
        "try:\n"
        '    await docs.read_doc(path="../../../../etc/passwd")\n'
        "except RuntimeError as error:\n"
        "    print(error)\n"
        "1 / 0\n"
    )
    async with world.client(era) as client:
        result, record = await execute(client, program)
    assert record["error"]["kind"] == "runtime_error" and record["error"]["line"] == 6
    assert "docs.read_doc failed" in record["output"]
    everything = text_of(result) + orjson.dumps(record).decode()
    for host_path in (str(REPO), str(world.data), "/etc/passwd\n", "site-packages"):
        assert host_path not in everything


# -- which SDK a caller gets ----------------------------------------------------------------------------------------


async def test_callers_who_may_see_the_same_tools_share_one_sdk_and_others_get_their_own(
    world: World, era: str
) -> None:
    scopes = ("codemode", "tools:notes")
    async with world.client(era, scopes, user="u") as first:
        await search(first, "note")
    builds = world.gateway.builds
    async with world.client(era, scopes, user="v") as second:
        assert "notes.create_note" in found_tools(await search(second, "create note"))
        assert "docs.read_doc" not in found_tools(await search(second, "read doc"))
    assert world.gateway.builds == builds  # same tools, same SDK: not generated again
    async with world.client(era, ("codemode", "tools:docs"), user="v") as third:
        assert set(found_tools(await search(third, "note doc", limit=50))) == {
            "docs.search_docs",
            "docs.read_doc",
            "docs.list_docs",
        }


async def test_a_tool_an_upstream_adds_rebuilds_the_sdk(world: World, era: str) -> None:
    name = f"archive_note_{era.replace('-', '_')}"
    async with world.client(era) as client:
        assert f"notes.{name}" not in found_tools(await search(client, "archive", limit=50))
        generation, builds = world.portal.servers.catalog.generation, world.gateway.builds
        await search(client, "archive")
        assert world.gateway.builds == builds  # unchanged tools: the cached SDK

        def archive(id: int) -> str:
            """Archive a note: move it out of the way without deleting it."""
            return f"archived {id}"

        world.notes_server.add_tool(archive, name=name, description="Archive a note.")
        await world.portal.servers.refresh("notes")
        assert world.portal.servers.catalog.generation > generation
        assert f"notes.{name}" in found_tools(await search(client, "archive", limit=50))
        assert world.gateway.builds == builds + 1
        _, record = await execute(client, f"from tools import notes\nawait notes.{name}(id=7)")
    assert record["ok"], record
    assert record["value"] == {"result": "archived 7"}  # the SDK server gives a `str` result an output schema


# -- the sandbox's life -------------------------------------------------------------------------------------------


async def test_the_sandbox_starts_with_the_first_app_and_stops_with_the_last() -> None:
    sandboxes = SharedSandbox()  # the process's own one is in use by the module's portal
    first, second = CodeModeGateway(ServerSet(), sandboxes=sandboxes), CodeModeGateway(ServerSet(), sandboxes=sandboxes)
    await first.start()
    await second.start()
    sandbox = first.sandbox
    assert isinstance(sandbox, Sandbox) and second.sandbox is sandbox  # one per process
    await first.stop()
    sandbox.pool()  # still serving the other app
    await second.stop()
    with pytest.raises(RuntimeError, match="closed"):
        sandbox.pool()
