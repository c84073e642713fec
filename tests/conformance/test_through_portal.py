"""The conformance fixture through the portal, checked with the Python SDK client and raw HTTP, without Node.

The conformance suite (test_conformance.py) needs Node 22. These tests keep, without it, the portal behaviours
that the suite's runs through the portal depend on, for each kind of upstream: the fixture hosted in-process,
and the fixture as a remote upstream reached at 2025-11-25 and at 2026-07-28 (one process, two servers).

- Log messages a tool sends mid-call reach a handshake-era client, whatever era the upstream speaks, and a
  2026-07-28 client only at the level it asked for on the request.
- A 2026-07-28 client's capabilities reach a 2026-07-28 upstream, so the upstream may ask it for input.
- 2026-07-28 requests are refused as the spec says: logging/setLevel is gone (404, -32601), an
  `Mcp-Param-*` header must match its argument (400, -32020), and an unknown version is told the
  versions server/discover offers.

Every request carries a token of the user `tester` (`tools:*`) minted for its endpoint.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx2
import pytest
from _suite import (
    ReadyPortal,
    base_url_of,
    http_server_process,
    loopback_socket,
    mint_tester_token,
    portal_app,
    serve,
    servers_not_ready,
)
from mcp.client import Client
from mcp.client._transport import TransportStreams
from mcp.client.context import ClientRequestContext
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.types import ElicitRequestParams, ElicitResult, LoggingMessageNotificationParams, TextContent

from portal.settings import ServerConfig

pytestmark = pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")

MODERN = "2026-07-28"
UPSTREAMS = ("hosted", "remote-2025", "remote-2026")
"""The portal's servers, all the conformance fixture: in-process, and remote at each era."""
MODERN_UPSTREAMS = ("hosted", "remote-2026")
LOG_LINES = ["Tool execution started", "Tool processing data", "Tool execution completed"]


@dataclass
class ServedPortal:
    """The running portal, and tokens of `tester` for its endpoints."""

    app: ReadyPortal
    base_url: str
    tokens: dict[str, str] = field(default_factory=dict)

    def endpoint(self, upstream: str) -> str:
        return f"{self.base_url}/servers/{upstream}/mcp"

    def token(self, url: str) -> str:
        if url not in self.tokens:
            self.tokens[url] = mint_tester_token(self.app, url)
        return self.tokens[url]

    def client(self, url: str, **options: Any) -> Client:
        """An SDK client of the endpoint at `url`, carrying its token."""
        return Client(self._transport(url), **options)

    @contextlib.asynccontextmanager
    async def _transport(self, url: str) -> AsyncIterator[TransportStreams]:
        async with (
            create_mcp_http_client(headers={"Authorization": f"Bearer {self.token(url)}"}) as http,
            streamable_http_client(url, http_client=http) as streams,
        ):
            yield streams


@pytest.fixture(scope="module")
def portal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedPortal]:
    """The portal, in front of the fixture hosted and as a remote upstream in both eras."""
    with contextlib.ExitStack() as stack:
        remote = stack.enter_context(http_server_process("servers.conformance"))
        servers = (
            ServerConfig(name="hosted", module="servers.conformance"),
            ServerConfig(name="remote-2025", url=remote, protocol="2025-11-25"),
            ServerConfig(name="remote-2026", url=remote, protocol="2026-07-28"),
        )
        sock = stack.enter_context(loopback_socket())
        app = portal_app(servers, tmp_path_factory.mktemp("portal"), base_url_of(sock))
        base_url = stack.enter_context(serve(app, sock=sock))
        missing = servers_not_ready(app)
        assert not missing, f"the portal's upstreams did not come up: {missing}"
        yield ServedPortal(app, base_url)


def text_of(result: Any) -> str:
    block = result.content[0]
    assert isinstance(block, TextContent), block
    return block.text


class Logs:
    """A logging callback that keeps what it is told."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    async def __call__(self, params: LoggingMessageNotificationParams) -> None:
        self.lines.append(str(params.data))


@pytest.mark.parametrize("upstream", UPSTREAMS)
async def test_a_handshake_client_hears_the_tools_log_messages(portal: ServedPortal, upstream: str) -> None:
    logs = Logs()
    async with portal.client(portal.endpoint(upstream), mode="legacy", logging_callback=logs) as client:
        result = await client.call_tool("test_tool_with_logging", {})
    assert text_of(result) == "Tool with logging executed successfully"
    assert logs.lines == LOG_LINES


@pytest.mark.parametrize("upstream", UPSTREAMS)
async def test_a_stateless_client_hears_log_messages_only_when_it_asks(portal: ServedPortal, upstream: str) -> None:
    silent, chatty, picky = Logs(), Logs(), Logs()
    url = portal.endpoint(upstream)
    async with portal.client(url, mode=MODERN, logging_callback=silent) as client:
        await client.call_tool("test_tool_with_logging", {})
    async with portal.client(url, mode=MODERN, logging_callback=chatty, log_level="info") as client:
        await client.call_tool("test_tool_with_logging", {})
    async with portal.client(url, mode=MODERN, logging_callback=picky, log_level="error") as client:
        await client.call_tool("test_tool_with_logging", {})
    assert (silent.lines, chatty.lines, picky.lines) == ([], LOG_LINES, [])


async def answer(context: ClientRequestContext, params: ElicitRequestParams) -> ElicitResult:
    return ElicitResult(action="accept", content={"username": "alice", "email": "alice@example.com"})


@pytest.mark.parametrize("upstream", MODERN_UPSTREAMS)
async def test_a_stateless_client_is_asked_for_input_through_the_portal(portal: ServedPortal, upstream: str) -> None:
    """The client's elicitation capability reaches the upstream, whose input-required round the client answers."""
    async with portal.client(portal.endpoint(upstream), mode=MODERN, elicitation_callback=answer) as client:
        result = await client.call_tool("test_elicitation", {"message": "Who are you?"})
    content = '{"username":"alice","email":"alice@example.com"}'
    assert text_of(result) == f"User response: action=accept, content={content}"


def post(portal: ServedPortal, url: str, method: str, params: dict[str, Any], **headers: str) -> httpx2.Response:
    """One raw 2026-07-28 request with its token, envelope and routing headers; `headers` add to or override them."""
    envelope = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}
    base = {
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": MODERN,
        "mcp-method": method,
        "authorization": f"Bearer {portal.token(url)}",
    }
    if "name" in params:
        base["mcp-name"] = params["name"]
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {**params, "_meta": envelope}}
    return httpx2.post(url, json=body, headers={**base, **headers}, timeout=10)


def test_stateless_requests_are_refused_as_the_spec_says(portal: ServedPortal) -> None:
    url = portal.endpoint("hosted")

    removed = post(portal, url, "logging/setLevel", {"level": "info"})
    assert (removed.status_code, removed.json()["error"]["code"]) == (404, -32601)

    call = {"name": "test_mcp_param_header", "arguments": {"region": "eu-west"}}
    assert post(portal, url, "tools/call", call, **{"mcp-param-region": "eu-west"}).status_code == 200
    for headers in ({"mcp-param-region": "us-east"}, {}):
        mismatch = post(portal, url, "tools/call", call, **headers)
        assert (mismatch.status_code, mismatch.json()["error"]["code"]) == (400, -32020), mismatch.text

    unknown = post(portal, url, "tools/list", {}, **{"mcp-protocol-version": "v999.0.0"})
    assert unknown.status_code == 400
    assert unknown.json()["error"]["data"] == {"supported": [MODERN], "requested": "v999.0.0"}
