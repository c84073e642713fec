"""The official MCP conformance suite's `authorization` command against the portal's authorization server.

The suite prints an authorization URL for a person to open; the test is that person
(`Browser`: log in, consent) and lets the redirect reach the suite's callback server.
Needs Node 22 and the pinned suite (`.ci/node.sh`); skipped without them unless
`PORTAL_REQUIRE_NODE` is set.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from pathlib import Path

import aiohttp
import pytest
from auth_support import Browser, PortalUnderTest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "conformance"))

from _suite import NodeUnavailable, conformance_entry, ensure_node, node_env, node_required  # noqa: E402

pytestmark = pytest.mark.node


@pytest.fixture(scope="module")
def node() -> Path:
    try:
        return ensure_node()
    except NodeUnavailable as exc:
        if node_required():
            pytest.fail(f"PORTAL_REQUIRE_NODE is set but {exc}")
        pytest.skip(str(exc))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_the_conformance_suite_authorization_command_passes(
    node: Path, portal: PortalUnderTest, browser: Browser, tmp_path: Path
) -> None:
    port = free_port()
    async with aiohttp.ClientSession() as http:
        body = {"redirect_uris": [f"http://127.0.0.1:{port}/callback"], "token_endpoint_auth_method": "none"}
        async with http.post(portal.url("/oauth/register"), json=body) as response:
            client_id = (await response.json())["client_id"]
    out = tmp_path / "results"
    suite = await asyncio.create_subprocess_exec(
        str(node),
        str(conformance_entry(node)),
        "authorization",
        "--url", portal.base,
        "--client-id", client_id,
        "--resource", portal.mcp,
        "--port", str(port),
        "-o", str(out),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL,
        env=node_env(),
    )  # fmt: skip
    assert suite.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(120):
            while True:
                raw = await suite.stdout.readline()
                if not raw:
                    break
                line = raw.decode().strip()
                lines.append(line)
                if line.startswith(portal.url("/oauth/authorize")):
                    await browser.authorize(line)
                    async with aiohttp.ClientSession() as http, http.get(browser.last_location) as callback:
                        assert callback.status == 200
            await suite.wait()
    finally:
        if suite.returncode is None:
            suite.kill()
    checks = [check for path in out.rglob("checks.json") for check in json.loads(path.read_text())]
    output = "\n".join(lines)
    assert checks, output
    failed = [c for c in checks if c["status"] not in ("SUCCESS", "INFO")]
    assert not failed, output
    assert {c["id"] for c in checks} >= {"authorization-server-metadata", "authorization-code-grant"}
