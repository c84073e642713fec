"""The official MCP conformance suite, in server mode, against each target for both protocol eras.

A target is an MCP endpoint the suite connects to:

- `direct`: `servers/conformance/`, the fixture server implementing every tool, resource and prompt the
  suite asks for, served alone. The baseline: every scenario of both eras passes.
- `portal-hosted`: the portal's per-server endpoint `/servers/conformance/mcp`, the fixture hosted in-process
  (`module = "servers.conformance"`; the portal speaks 2026-07-28 to it).
- `portal-remote-2025`, `portal-remote-2026`: the same endpoint, the fixture run as a remote upstream
  (`python -m servers.conformance --http` on a free loopback port) that the portal reaches at 2025-11-25 and
  at 2026-07-28. With both client eras this exercises every client x upstream era combination.
- `portal-aggregated`: the portal's aggregated endpoint `/mcp` in front of the hosted fixture, where tools and
  prompts are named `conformance_*` and resource URIs carry the server, so most scenarios cannot find their
  fixtures by name; they are listed in expected-failures.toml with that reason.

The suite's server mode sends no bearer token, and every portal endpoint wants one: the suite talks to the portal
through `bearer_proxy`, which adds a token of the user `tester` (`tools:*`) minted for the target's endpoint, and
passes everything else through as sent.

Needs Node 22 and the pinned suite, which `.ci/node.sh` installs into a cache; without them the tests skip,
unless PORTAL_REQUIRE_NODE is set, in which case they fail.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from _suite import (
    ERAS,
    NodeUnavailable,
    ReadyPortal,
    base_url_of,
    bearer_proxy,
    ensure_node,
    expected_for,
    http_server_process,
    load_expected_failures,
    loopback_socket,
    mint_tester_token,
    node_required,
    portal_app,
    run_suite,
    serve,
    servers_not_ready,
)
from starlette.types import ASGIApp

from portal.settings import ServerConfig

pytestmark = [
    pytest.mark.node,
    # The fixture server exercises logging, sampling and roots on purpose; the SDK flags each use as deprecated
    # in the 2026-07-28 revision, which is noise here.
    pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning"),
]

AppFactory = Callable[[contextlib.ExitStack, Path, str], ASGIApp]
"""Builds a fresh ASGI app for a target, given its data folder and the base URL it will be served at; anything
it starts (an upstream process) goes on the exit stack."""


@dataclass(frozen=True)
class Target:
    """An MCP endpoint to run the suite against.

    `name` identifies it in test ids and in expected-failures.toml; `make_app` builds a fresh ASGI app serving
    it (a fresh one per test module, since an MCP app's session manager starts only once); `path` is the MCP
    endpoint within that app; `http` is uvicorn's HTTP implementation for it.
    """

    name: str
    make_app: AppFactory
    path: str
    http: str = "auto"


def _direct_app(stack: contextlib.ExitStack, data_dir: Path, base_url: str) -> ASGIApp:
    """The fixture server alone, exactly as `python -m servers.conformance --http` serves it."""
    from servers import conformance

    return conformance.create_app()


def _hosted_portal(stack: contextlib.ExitStack, data_dir: Path, base_url: str) -> ASGIApp:
    """The portal with the fixture hosted in-process as server `conformance`."""
    return portal_app((ServerConfig(name="conformance", module="servers.conformance"),), data_dir, base_url)


def _remote_portal(protocol: str) -> AppFactory:
    """The portal with the fixture as a remote Streamable HTTP upstream, reached at `protocol`."""

    def make(stack: contextlib.ExitStack, data_dir: Path, base_url: str) -> ASGIApp:
        url = stack.enter_context(http_server_process("servers.conformance"))
        server = ServerConfig(name="conformance", url=url, protocol=protocol)  # type: ignore[arg-type]
        return portal_app((server,), data_dir, base_url)

    return make


PER_SERVER = "/servers/conformance/mcp"
TARGETS: list[Target] = [
    # h11, not httptools: httptools keeps the trailing whitespace of a header value (RFC 9110 §5.5 says to strip
    # it), and the SDK server compares Mcp-Name as received, so `http-header-validation` would fail on the
    # server stack rather than on the fixture. The portal strips it itself and is served as deployed.
    Target("direct", _direct_app, "/mcp", http="h11"),
    Target("portal-hosted", _hosted_portal, PER_SERVER),
    Target("portal-remote-2025", _remote_portal("2025-11-25"), PER_SERVER),
    Target("portal-remote-2026", _remote_portal("2026-07-28"), PER_SERVER),
    Target("portal-aggregated", _hosted_portal, "/mcp"),
]


@pytest.fixture(scope="session")
def node() -> Path:
    """Node 22 with the conformance suite installed; skips (or fails, with PORTAL_REQUIRE_NODE) without it."""
    try:
        return ensure_node()
    except NodeUnavailable as exc:
        if node_required():
            pytest.fail(f"PORTAL_REQUIRE_NODE is set but Node 22 is unavailable: {exc}")
        pytest.skip(f"Node 22 and the MCP conformance suite are unavailable (set PORTAL_REQUIRE_NODE to fail): {exc}")


@pytest.fixture(scope="module", params=TARGETS, ids=lambda target: target.name)
def target_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Target, str]]:
    """Serve one target on 127.0.0.1 for the module's tests; yield it with its MCP endpoint URL."""
    target: Target = request.param
    with contextlib.ExitStack() as stack:
        sock = stack.enter_context(loopback_socket())
        app = target.make_app(stack, tmp_path_factory.mktemp(target.name), base_url_of(sock))
        base_url = stack.enter_context(serve(app, sock=sock, http=target.http))
        if isinstance(app, ReadyPortal):
            missing = servers_not_ready(app)
            assert not missing, f"the portal's upstreams did not come up: {missing}"
            # The suite sends no token: it reaches the portal through a proxy that adds one for this endpoint.
            base_url = stack.enter_context(bearer_proxy(base_url, mint_tester_token(app, base_url + target.path)))
        yield target, base_url + target.path


def test_expected_failures_file_is_well_formed() -> None:
    """Every entry names a known target and era and gives a reason (checked without running Node)."""
    names = {target.name for target in TARGETS}
    for entry in load_expected_failures():
        assert entry.target in names, f"expected-failures.toml names unknown target {entry.target!r}"


@pytest.mark.parametrize("era", ERAS)
def test_conformance(node: Path, target_url: tuple[Target, str], era: str) -> None:
    """Every scenario of `era` passes against the target, except the listed expected failures, which must fail."""
    target, url = target_url
    expected = expected_for(load_expected_failures(), target.name, era)
    run = run_suite(node, url, era)
    print(f"conformance {target.name} {era}: {len(run.results)} scenarios in {run.seconds:.1f} s")
    for name, checks in sorted(run.warnings.items()):
        print(f"  warning in {name}: " + "; ".join(checks))

    # Guard against a run that silently exercised nothing (a wrong flag, an unreachable URL).
    assert len(run.results) >= 20, f"suspiciously few scenarios ran: {sorted(run.results)}\n{run.output[-3000:]}"

    unexpected = {
        name: run.failures.get(name, []) for name, passed in run.results.items() if not passed and name not in expected
    }
    now_passing = sorted(name for name in expected if run.results.get(name) is True)
    not_run = sorted(name for name in expected if name not in run.results)

    problems: list[str] = []
    for name, checks in sorted(unexpected.items()):
        problems.append(f"unexpected failure: {name}\n    " + "\n    ".join(checks[:10]))
    problems += [f"listed in expected-failures.toml but passes now (remove it): {name}" for name in now_passing]
    problems += [f"listed in expected-failures.toml but did not run (remove or rename it): {name}" for name in not_run]
    assert not problems, f"{target.name} at {era} ({url}):\n" + "\n".join(problems)
