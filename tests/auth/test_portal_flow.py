"""The whole OAuth flow through the real portal, as an MCP client runs it, in both client eras.

A running portal (`portal.app.create_app`, under uvicorn on 127.0.0.1) in front of two real MCP servers, `hosted`
(in process) and `web` (remote, Streamable HTTP), each offering the gateway tests' upstream tools. The client is
the `mcp` SDK's `OAuthClientProvider` on an httpx2 client: from the portal's 401 on `/mcp` it discovers the
protected-resource metadata (RFC 9728), the authorization server's (RFC 8414), registers (RFC 7591), sends the
person to `/oauth/authorize`, where the test's `Browser` logs in and consents as a person would, exchanges the
code (PKCE, RFC 8707 `resource`) and calls tools through `/mcp`. The operator grants the users only part of the
tools (`[auth.grants]`): `alice` every tool of `web` and `hosted_whoami`, `bob` every tool of both servers.

Then what the token gives: only the granted tools are listed and callable; the token is lost on the next request
when the user is blocked, the client revoked or the token revoked (RFC 7009); and a call the token lacks the scope
for is a 403 on which the SDK re-authorizes (step-up), and succeeds once the person consents to more.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx2
import jwt
import pytest
from auth_support import PASSWORD, REDIRECT_URI, Browser, pkce
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientMetadata
from mcp.shared.exceptions import MCPError
from test_sdk_flow import MemoryStorage

GATEWAY_TESTS = Path(__file__).resolve().parents[1] / "gateway"
if str(GATEWAY_TESTS) not in sys.path:
    sys.path.insert(0, str(GATEWAY_TESTS))

from gateway_support import CLIENT_ERAS, Launcher, PortalUnderTest, text_of  # noqa: E402

from portal.auth.events import AuthEvent  # noqa: E402
from portal.auth.settings import AuthSettings  # noqa: E402
from portal.settings import ServerConfig  # noqa: E402

WEB_TOOLS = ("whoami", "add", "secret", "steps", "wait", "was_cancelled", "grow", "pid")
GRANTS = {"alice": ("tools:web", "tools:hosted:whoami"), "bob": ("tools:web", "tools:hosted")}


class World:
    """The running portal, the auth events it emitted, and the upstream it reaches."""

    def __init__(self, portal: PortalUnderTest) -> None:
        self.portal = portal
        self.events: list[AuthEvent] = []
        portal.auth.events.subscribe(self.events.append)

    def kinds(self, kind: str, outcome: str | None = None) -> list[AuthEvent]:
        return [e for e in self.events if e.kind == kind and (outcome is None or e.outcome == outcome)]


@pytest.fixture(params=CLIENT_ERAS)
def era(request: pytest.FixtureRequest) -> str:
    """`legacy` (the 2025-11-25 initialize handshake) and `2026-07-28`."""
    return str(request.param)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    launch = Launcher(tmp_path)
    try:
        web = await launch.upstream("web")
        portal = await launch.portal(
            ServerConfig(name="hosted", module="gateway_hosted"),
            ServerConfig(name="web", url=web.url),
            auth=AuthSettings(grants=GRANTS),
        )
        await portal.wait_listed("hosted", "web")
        for user in GRANTS:
            portal.add_user(user, password=PASSWORD)
        yield World(portal)
    finally:
        await launch.aclose()


@pytest.fixture
async def people(world: World) -> AsyncIterator[dict[str, Browser]]:
    """Alice and Bob, each at a browser of their own."""
    browsers = {name: Browser(world.portal, user=name) for name in GRANTS}  # type: ignore[arg-type]
    try:
        yield browsers
    finally:
        for browser in browsers.values():
            await browser.close()


class Login:
    """An `OAuthClientProvider` whose browser step is a person at `browser`, and what it stored.

    `consents` says, round by round, which of the offered capabilities the person keeps ticked on the consent page
    (None: all of them); later rounds keep all.
    """

    def __init__(self, url: str, browser: Browser, consents: Sequence[Sequence[str] | None] = ()) -> None:
        self.storage = MemoryStorage()
        self.browser = browser
        self.consents = list(consents)
        self.rounds = 0
        self._answers: list[dict[str, str]] = []
        metadata = OAuthClientMetadata(
            redirect_uris=[REDIRECT_URI],  # type: ignore[list-item]
            client_name="Portal flow test client",
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
        )
        self.provider = OAuthClientProvider(url, metadata, self.storage, self._redirect, self._callback)

    async def _redirect(self, url: str) -> None:
        keep = self.consents[self.rounds] if self.rounds < len(self.consents) else None
        self.rounds += 1
        self._answers.append(await self.browser.authorize(url, keep=keep))

    async def _callback(self) -> AuthorizationCodeResult:
        answer = self._answers.pop()
        assert "code" in answer, f"the authorization failed: {answer}"
        return AuthorizationCodeResult(code=answer["code"], state=answer.get("state"), iss=answer.get("iss"))

    @property
    def access_token(self) -> str:
        assert self.storage.tokens is not None
        return self.storage.tokens.access_token

    @property
    def client_id(self) -> str:
        assert self.storage.client is not None and self.storage.client.client_id
        return self.storage.client.client_id

    def claims(self) -> dict[str, Any]:
        return jwt.decode(self.access_token, options={"verify_signature": False})

    def credentials(self) -> dict[str, str]:
        """How the client authenticates at the token-side endpoints: the secret registration gave it, if any."""
        assert self.storage.client is not None
        secret = self.storage.client.client_secret
        return {"client_id": self.client_id, **({"client_secret": secret} if secret else {})}


def sdk_client(url: str, era: str, login: Login) -> tuple[httpx2.AsyncClient, Client]:
    http = httpx2.AsyncClient(auth=login.provider, timeout=30)
    return http, Client(streamable_http_client(url, http_client=http), mode=era, cache=None)


async def call_status(world: World, token: str, name: str = "web_whoami") -> int:
    """The HTTP status of one raw 2026-07-28 tools/call with `token`."""
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "0"},
    }
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": {}, "_meta": meta}}
    headers = {
        "Authorization": f"Bearer {token}",
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": "tools/call",
        "Mcp-Name": name,
    }
    status, _, _ = await world.portal.post(body, headers=headers)
    return status


def refusal(raised: BaseException) -> str:
    while isinstance(raised, BaseExceptionGroup) and len(raised.exceptions) == 1:
        raised = raised.exceptions[0]
    assert isinstance(raised, MCPError), repr(raised)
    return str(raised.data["code"])


# -- (a) discovery to tool call -----------------------------------------------------------------------------------


async def test_an_sdk_client_logs_in_through_the_portal_and_sees_only_the_tools_it_was_granted(
    world: World, people: dict[str, Browser], era: str
) -> None:
    portal = world.portal
    login = Login(portal.mcp(), people["alice"])
    http, client = sdk_client(portal.mcp(), era, login)
    async with http, client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert names == {"hosted_whoami", *(f"web_{tool}" for tool in WEB_TOOLS)}
        assert text_of(await client.call_tool("hosted_whoami", {})) == "hosted"
        assert text_of(await client.call_tool("web_add", {"a": 2, "b": 3})) == "5"
        # A tool of `hosted` other than whoami is not Alice's to call.
        with pytest.raises(MCPError) as refused:
            await client.call_tool("hosted_add", {"a": 2, "b": 3})
        assert refusal(refused.value) == "insufficient_scope"

    # Discovery went from the 401 on /mcp to its metadata and the authorization server's, then registration.
    assert login.storage.client is not None and login.storage.client.client_id
    # The browser went through the portal's pages, as a person would: log in, then consent.
    visited = [url.split("?")[0].removeprefix(portal.base) for url, _, _ in people["alice"].pages]
    assert visited[:5] == ["/oauth/authorize", "/login", "/login", "/consent", "/consent"]
    claims = login.claims()
    assert claims["aud"] == portal.mcp()
    assert claims["iss"] == portal.base
    assert claims["sub"] == "alice"
    assert claims["client_id"] == login.client_id
    # What was asked (tools:*, the endpoint's scope), narrowed to what the operator granted.
    assert claims["scope"] == "tools:hosted:whoami tools:web"
    assert jwt.get_unverified_header(login.access_token)["typ"] == "at+jwt"
    assert {"login", "consent", "issuance"} <= {event.kind for event in world.events}


async def test_a_login_for_a_server_endpoint_gives_a_token_for_that_endpoint_alone(
    world: World, people: dict[str, Browser], era: str
) -> None:
    portal = world.portal
    login = Login(portal.mcp("web"), people["bob"])
    http, client = sdk_client(portal.mcp("web"), era, login)
    async with http, client:
        assert {tool.name for tool in (await client.list_tools()).tools} == set(WEB_TOOLS)
        assert text_of(await client.call_tool("whoami", {})) == "web"
    assert login.claims()["aud"] == portal.mcp("web")
    assert login.claims()["scope"] == "tools:web"
    assert await call_status(world, login.access_token) == 401  # on /mcp


# -- (c), (d) losing access on the next request -------------------------------------------------------------------


async def test_a_blocked_user_loses_access_on_the_next_request_and_cannot_log_in_again(
    world: World, people: dict[str, Browser], era: str
) -> None:
    portal = world.portal
    login = Login(portal.mcp(), people["alice"])
    http, client = sdk_client(portal.mcp(), era, login)
    async with http, client:
        assert text_of(await client.call_tool("web_whoami", {})) == "web"
    token = login.access_token
    assert await call_status(world, token) == 200
    portal.auth.users.set_blocked("alice", True)
    assert await call_status(world, token) == 401
    assert world.kinds("rejection", "failure")[-1].subject == "alice"

    # Authorizing again gets her nowhere: the portal turns the blocked person away at the consent step.
    again = Login(portal.mcp(), people["alice"])
    http, client = sdk_client(portal.mcp(), era, again)
    with pytest.raises(Exception):  # noqa: B017 - the browser step fails inside the SDK's task groups
        async with http, client:
            await client.list_tools()
    assert people["alice"].pages[-1][1] == 403
    assert "blocked" in people["alice"].pages[-1][2]
    assert again.storage.tokens is None


async def test_a_revoked_client_loses_access_on_the_next_request_and_cannot_get_a_new_token(
    world: World, people: dict[str, Browser], era: str
) -> None:
    portal = world.portal
    login = Login(portal.mcp(), people["bob"])
    http, client = sdk_client(portal.mcp(), era, login)
    async with http, client:
        assert text_of(await client.call_tool("hosted_add", {"a": 1, "b": 1})) == "2"
    assert await call_status(world, login.access_token) == 200
    authorize = {
        "response_type": "code",
        "client_id": login.client_id,
        "redirect_uri": REDIRECT_URI,
        "code_challenge": pkce()[1],
        "code_challenge_method": "S256",
        "resource": portal.mcp(),
        "scope": "tools:web",
        "state": "s",
    }
    async with people["bob"].http.get(
        portal.url("/oauth/authorize"), params=authorize, allow_redirects=False
    ) as answer:
        assert answer.status == 303 and answer.headers["Location"].startswith("/consent?")
    portal.auth.clients.revoke(login.client_id)
    assert await call_status(world, login.access_token) == 401

    # Its refresh token is dead too (RFC 6749 §5.2 invalid_grant) ...
    assert login.storage.tokens is not None and login.storage.tokens.refresh_token
    refresh = {"grant_type": "refresh_token", "refresh_token": login.storage.tokens.refresh_token}
    async with portal.http.post(portal.url("/oauth/token"), data={**refresh, **login.credentials()}) as answer:
        assert answer.status in (400, 401), await answer.text()
    # ... and a person sent to authorize it again is shown an error, not the consent page.
    async with people["bob"].http.get(
        portal.url("/oauth/authorize"), params=authorize, allow_redirects=False
    ) as answer:
        assert answer.status >= 400


async def test_a_token_revoked_by_its_client_is_refused_on_the_next_request(
    world: World, people: dict[str, Browser], era: str
) -> None:
    portal = world.portal
    login = Login(portal.mcp(), people["bob"])
    http, client = sdk_client(portal.mcp(), era, login)
    async with http, client:
        assert text_of(await client.call_tool("web_whoami", {})) == "web"
    token = login.access_token
    assert await call_status(world, token) == 200
    # RFC 7009, as the client that holds it.
    async with portal.http.post(
        portal.url("/oauth/revoke"), data={"token": token, "token_type_hint": "access_token", **login.credentials()}
    ) as response:
        assert response.status == 200, await response.text()
    assert await call_status(world, token) == 401
    assert world.kinds("revocation", "success")


async def test_revoking_the_refresh_token_ends_the_access_tokens_of_its_grant(
    world: World, people: dict[str, Browser]
) -> None:
    portal = world.portal
    login = Login(portal.mcp(), people["bob"])
    http, client = sdk_client(portal.mcp(), "2026-07-28", login)
    async with http, client:
        assert text_of(await client.call_tool("web_whoami", {})) == "web"
    assert login.storage.tokens is not None and login.storage.tokens.refresh_token
    async with portal.http.post(
        portal.url("/oauth/revoke"),
        data={"token": login.storage.tokens.refresh_token, **login.credentials()},
    ) as response:
        assert response.status == 200, await response.text()
    assert await call_status(world, login.access_token) == 401


# -- (f) step-up ----------------------------------------------------------------------------------------------------


async def test_the_sdk_steps_up_on_403_and_the_call_succeeds_once_the_person_consents_to_more(
    world: World, people: dict[str, Browser], era: str
) -> None:
    portal = world.portal
    # Bob may use both servers, but at first consents to `web` alone.
    login = Login(portal.mcp(), people["bob"], consents=[["tools:web"]])
    http, client = sdk_client(portal.mcp(), era, login)
    async with http, client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert names == {f"web_{tool}" for tool in WEB_TOOLS}
        assert login.claims()["scope"] == "tools:web"
        # hosted_add is a 403 insufficient_scope naming tools:hosted:add; the SDK asks again, with that scope
        # added to what it had, Bob (still logged in) consents to everything offered, and the call goes through.
        assert text_of(await client.call_tool("hosted_add", {"a": 20, "b": 22})) == "42"
        assert login.rounds == 2
        assert login.claims()["scope"] == "tools:hosted tools:web"
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert "hosted_add" in names and "web_add" in names
    visited = [url.split("?")[0].removeprefix(portal.base) for url, _, _ in people["bob"].pages]
    assert visited.count("/login") == 2  # one login: the second round found Bob's session
    assert len(world.kinds("consent", "success")) == 2


async def test_stepping_up_cannot_get_a_tool_the_operator_did_not_grant(
    world: World, people: dict[str, Browser], era: str
) -> None:
    portal = world.portal
    login = Login(portal.mcp(), people["alice"])
    http, client = sdk_client(portal.mcp(), era, login)
    async with http, client:
        assert text_of(await client.call_tool("hosted_whoami", {})) == "hosted"
        with pytest.raises(MCPError) as refused:
            await client.call_tool("hosted_add", {"a": 1, "b": 2})
        assert refusal(refused.value) == "insufficient_scope"
    # The SDK did ask again; the consent page offered only what Alice was granted, and named what she was not.
    assert login.rounds == 2
    assert "tools:hosted:add" in people["alice"].pages[-2][2]
    assert login.claims()["scope"] == "tools:hosted:whoami tools:web"
