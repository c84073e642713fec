"""The MCP Inspector's command-line mode, a foreign client, against the portal running the demo in both eras.

The portal runs the configuration of `examples/portal.toml`, one server of each kind:

- `notes`, hosted in-process (`module = "servers.notes"`), its database `NOTES_DB` in a temporary folder;
- `docs`, a stdio subprocess (`python -m servers.docs`, cwd the repository, `DOCS_DIR=examples/docs`);
- `clock`, a remote Streamable HTTP server, started here as `python -m servers.clock --http` on a free port.

The Inspector lists and calls tools through the aggregated endpoint `/mcp` (names `{server}_{tool}`) and the
per-server endpoint `/servers/notes/mcp`, at 2025-11-25 (its "legacy" era: initialize handshake) and at
2026-07-28 ("modern": per-request envelope). A recorder in front of the portal checks that each run really
spoke the era it was asked to. Every run sends a token of the user `tester` (`tools:*`) minted for the endpoint
it talks to, with the Inspector's `--header "Authorization: Bearer ..."`.

Runs `node <inspector>/clients/launcher/build/index.js --cli URL --transport http --protocol-era ERA
--format json -q --method ...`, the same as `npx @modelcontextprotocol/inspector --cli ...`, but on the Node 22
that `.ci/node.sh` installs. Skips without Node 22 unless PORTAL_REQUIRE_NODE is set.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from starlette.types import Receive, Scope, Send

pytestmark = [pytest.mark.node]


def _load_suite_helpers() -> ModuleType:
    """Import tests/conformance/_suite.py, shared with the conformance tests, whichever folder pytest started in.

    Loaded by path under the same module name the conformance tests use, so both get one module object.
    """
    name = "_suite"
    if name in sys.modules:
        return sys.modules[name]
    path = Path(__file__).resolve().parents[1] / "conformance" / "_suite.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, f"cannot load {path}"
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


suite = _load_suite_helpers()

# The Inspector names the eras its own way.
INSPECTOR_ERA = {"2025-11-25": "legacy", "2026-07-28": "modern"}
# Every run is bounded; one call normally takes about a second (mostly Node starting).
INSPECTOR_TIMEOUT_SECONDS = 60

# What the demo's servers offer (servers/notes.py, servers/docs.py, servers/clock.py).
NOTES_TOOLS = {"create_note", "get_note", "search_notes", "update_note", "delete_note"}
DOCS_TOOLS = {"search_docs", "read_doc", "list_docs"}
CLOCK_TOOLS = {"current_time", "convert_time", "add_duration", "list_timezones"}


@dataclass
class InspectorResult:
    """One Inspector CLI run: exit status, the JSON it printed on stdout, and its stderr."""

    returncode: int
    payload: dict[str, Any]
    stderr: str


@dataclass
class Recorder:
    """An ASGI wrapper noting the protocol headers of every MCP request that reaches the portal."""

    app: Any
    seen: list[dict[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def state(self) -> Any:
        return self.app.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].endswith("/mcp"):
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            wanted = ("mcp-protocol-version", "mcp-session-id", "mcp-method")
            with self.lock:
                self.seen.append({"http": scope["method"], **{k: headers[k] for k in wanted if k in headers}})
        await self.app(scope, receive, send)

    def mark(self) -> int:
        with self.lock:
            return len(self.seen)

    def since(self, mark: int) -> list[dict[str, str]]:
        with self.lock:
            return list(self.seen[mark:])


@dataclass
class Portal:
    """The demo portal being served: its base URL, the recorder in front of it, and tokens for its endpoints."""

    base_url: str
    recorder: Recorder
    app: Any
    tokens: dict[str, str] = field(default_factory=dict)

    def token(self, path: str) -> str:
        """A token of `tester` for the endpoint at `path` (minted once)."""
        if path not in self.tokens:
            self.tokens[path] = suite.mint_tester_token(self.app, self.base_url + path)
        return self.tokens[path]


@pytest.fixture(scope="session")
def node() -> Path:
    """Node 22 with the Inspector installed; skips (or fails, with PORTAL_REQUIRE_NODE) without it."""
    try:
        node: Path = suite.ensure_node()
    except suite.NodeUnavailable as exc:
        if suite.node_required():
            pytest.fail(f"PORTAL_REQUIRE_NODE is set but Node 22 is unavailable: {exc}")
        pytest.skip(f"Node 22 and the MCP Inspector are unavailable (set PORTAL_REQUIRE_NODE to fail): {exc}")
    return node


@pytest.fixture(scope="module")
def portal(node: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Portal]:
    """The portal running the demo's three servers on 127.0.0.1 (needs Node first, so it skips before starting)."""
    from portal.settings import ServerConfig

    data_dir = tmp_path_factory.mktemp("demo")
    with contextlib.ExitStack() as stack:
        patch = stack.enter_context(pytest.MonkeyPatch.context())
        # The hosted notes server reads NOTES_DB from the portal's own environment, on first use.
        patch.setenv("NOTES_DB", str(data_dir / "notes.db"))
        clock_url = stack.enter_context(suite.http_server_process("servers.clock"))
        servers = (
            ServerConfig(name="notes", module="servers.notes", timeout=10),
            ServerConfig(
                name="docs",
                command="python",
                args=("-m", "servers.docs"),
                cwd=str(suite.REPO_ROOT),
                env={"DOCS_DIR": "examples/docs"},
                timeout=10,
            ),
            ServerConfig(name="clock", url=clock_url, timeout=10),
        )
        sock = stack.enter_context(suite.loopback_socket())
        app = suite.portal_app(servers, data_dir, suite.base_url_of(sock))
        recorder = Recorder(app)
        base_url = stack.enter_context(suite.serve(recorder, sock=sock))
        missing = suite.servers_not_ready(app)
        assert not missing, f"the demo's servers did not come up: {missing}"
        yield Portal(base_url, recorder, app)


@pytest.fixture(params=sorted(INSPECTOR_ERA), ids=lambda era: era)
def era(request: pytest.FixtureRequest) -> str:
    """Each protocol era in turn."""
    return str(request.param)


def inspect(node: Path, home: Path, portal: Portal, path: str, era: str, *args: str) -> InspectorResult:
    """Run the Inspector CLI once against the portal's `path` at `era` with `args`; check the era it spoke."""
    command = [
        str(node),
        str(suite.inspector_entry(node)),
        "--cli",
        portal.base_url + path,
        "--transport",
        "http",
        "--header",
        f"Authorization: Bearer {portal.token(path)}",
        "--protocol-era",
        INSPECTOR_ERA[era],
        "--format",
        "json",
        "--quiet",
        *args,
    ]
    mark = portal.recorder.mark()
    proc = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=INSPECTOR_TIMEOUT_SECONDS,
        env=suite.node_env(home),
        stdin=subprocess.DEVNULL,
    )
    try:
        payload = json.loads(proc.stdout) if proc.stdout.strip() else {}
    except json.JSONDecodeError:
        pytest.fail(f"Inspector printed non-JSON (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    assert_spoke(portal.recorder.since(mark), era)
    return InspectorResult(proc.returncode, payload, proc.stderr)


def assert_spoke(requests: list[dict[str, str]], era: str) -> None:
    """The requests of one run were all of `era`: a session after initialize, or the per-request envelope."""
    posts = [r for r in requests if r["http"] == "POST"]
    assert posts, f"the Inspector sent the portal no request: {requests}"
    if era == "2026-07-28":
        assert all(r.get("mcp-protocol-version") == era and "mcp-session-id" not in r for r in posts), posts
    else:
        assert not any(r.get("mcp-protocol-version") == "2026-07-28" for r in posts), posts
        assert any("mcp-session-id" in r for r in posts), f"no request ran in an initialized session: {posts}"


def call(node: Path, home: Path, portal: Portal, era: str, tool: str, **arguments: Any) -> InspectorResult:
    """`tools/call` of `tool` on `/mcp`; string arguments go as they are, others as JSON."""
    args = ["--method", "tools/call", "--tool-name", tool]
    for key, value in arguments.items():
        args += ["--tool-arg", f"{key}={value if isinstance(value, str) else json.dumps(value)}"]
    return inspect(node, home, portal, "/mcp", era, *args)


def test_tools_list_aggregates_every_server(node: Path, tmp_path: Path, portal: Portal, era: str) -> None:
    """tools/list on /mcp has the hosted, stdio and remote servers' tools, each named {server}_{tool}."""
    run = inspect(node, tmp_path, portal, "/mcp", era, "--method", "tools/list")
    assert run.returncode == 0, run.stderr
    tools = {tool["name"]: tool for tool in run.payload["result"]["tools"]}
    expected = (
        {f"notes_{name}" for name in NOTES_TOOLS}
        | {f"docs_{name}" for name in DOCS_TOOLS}
        | {f"clock_{name}" for name in CLOCK_TOOLS}
    )
    assert set(tools) == expected, sorted(set(tools) ^ expected)
    assert all(tool.get("description") for tool in tools.values())
    assert all(tool["inputSchema"].get("type") == "object" for tool in tools.values())
    assert set(tools["notes_create_note"]["inputSchema"]["required"]) == {"title", "body"}


def test_create_note_then_read_it_back(node: Path, tmp_path: Path, portal: Portal, era: str) -> None:
    """notes_create_note stores a note in the hosted server; notes_get_note returns it by its id."""
    title = f"Written by the Inspector at {era}"
    created = call(node, tmp_path, portal, era, "notes_create_note", title=title, body="Hello", tags=["inspector"])
    assert created.returncode == 0, created.stderr
    result = created.payload["result"]
    assert result["isError"] is False
    note = result["structuredContent"]
    assert (note["title"], note["body"], note["tags"]) == (title, "Hello", ["inspector"])
    assert json.loads(result["content"][0]["text"]) == note

    fetched = call(node, tmp_path, portal, era, "notes_get_note", id=note["id"])
    assert fetched.returncode == 0, fetched.stderr
    assert fetched.payload["result"]["structuredContent"] == note


def test_stdio_server_answers_through_the_portal(node: Path, tmp_path: Path, portal: Portal, era: str) -> None:
    """docs_search_docs reaches the stdio subprocess, which searches examples/docs."""
    run = call(node, tmp_path, portal, era, "docs_search_docs", query="on-call", limit=3)
    assert run.returncode == 0, run.stderr
    hits = run.payload["result"]["structuredContent"]["hits"]
    assert hits and any(hit["path"] == "runbooks/on-call.md" for hit in hits), hits


def test_tool_error_reaches_the_inspector(node: Path, tmp_path: Path, portal: Portal, era: str) -> None:
    """A tool error is a result with isError, which the Inspector reports with exit status 5."""
    run = call(node, tmp_path, portal, era, "notes_get_note", id=987654321)
    assert run.returncode == 5, run.stderr
    result = run.payload["result"]
    assert result["isError"] is True
    assert "no note with id 987654321" in result["content"][0]["text"]
    assert "tool_is_error" in run.stderr


def test_per_server_endpoint_keeps_upstream_names(node: Path, tmp_path: Path, portal: Portal, era: str) -> None:
    """/servers/notes/mcp lists only the notes server's tools, under their own names."""
    run = inspect(node, tmp_path, portal, "/servers/notes/mcp", era, "--method", "tools/list")
    assert run.returncode == 0, run.stderr
    assert {tool["name"] for tool in run.payload["result"]["tools"]} == NOTES_TOOLS
