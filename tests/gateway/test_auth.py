"""The portal as an OAuth resource server on its MCP endpoints (`portal.gateway.transport`, `portal.auth.guard`).

One portal for the module, in front of `hosted` (in process) and `web` (remote, Streamable HTTP), each offering
the test upstream's tools (`whoami`, `add`, ...), a resource `memo://1` and a prompt `greet`. Tokens are minted
by the portal itself for users made here; what a token may reach is its capabilities (SPEC.md, Tokens):

- no token, or a bad one (garbage, expired, another endpoint's, signed by another key), is `401` with a
  `WWW-Authenticate` challenge naming the endpoint's RFC 9728 metadata and scope; a token in the URL is refused;
- a tool the token lacks is `403 insufficient_scope` naming the tool's scope (MCP step-up), and lists show only
  what the token can use; resources and prompts need the server-wide `tools:{server}`;
- a blocked user, a revoked client and a revoked token are refused on their very next request;
- a handshake-era session belongs to the user and client that opened it.

Raw requests show the exact statuses and headers; SDK clients show what a real client sees, in both eras.
The whole OAuth flow (discovery, login, consent) is in tests/auth/test_portal_flow.py.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from gateway_support import MODERN_HEADERS, Launcher, PortalUnderTest, client, modern_body, text_of
from mcp.shared.exceptions import MCPError

from portal.settings import ServerConfig

pytestmark = pytest.mark.asyncio(loop_scope="module")

LEGACY = "2025-11-25"
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 0,
    "method": "initialize",
    "params": {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PortalUnderTest]:
    launch = Launcher(Path(tmp_path_factory.mktemp("auth")))
    try:
        web = await launch.upstream("web")
        p = await launch.portal(
            ServerConfig(name="hosted", module="gateway_hosted"), ServerConfig(name="web", url=web.url)
        )
        await p.wait_listed("hosted", "web")
        for user in ("alice", "bob", "carol", "dave"):
            p.add_user(user)
        yield p
    finally:
        await launch.aclose()


def path_of(server: str | None) -> str:
    return "/mcp" if server is None else f"/servers/{server}/mcp"


def challenge(headers: dict[str, str]) -> dict[str, str]:
    """The parameters of a `WWW-Authenticate: Bearer k="v", ...` header."""
    value = {key.lower(): value for key, value in headers.items()}["www-authenticate"]
    scheme, _, rest = value.partition(" ")
    assert scheme == "Bearer", value
    params = {}
    for part in rest.split(", "):
        key, _, quoted = part.partition("=")
        params[key] = quoted.strip('"')
    return params


def tools_call(name: str, arguments: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """A 2026-07-28 tools/call and its routing headers."""
    body = modern_body("tools/call", {"name": name, "arguments": arguments or {}})
    return body, {**MODERN_HEADERS, "Mcp-Method": "tools/call", "Mcp-Name": name}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def refusal(raised: BaseException) -> str:
    """The portal's error code (`error.data.code`) of what an SDK client raised, from the groups it may come in."""
    while isinstance(raised, BaseExceptionGroup) and len(raised.exceptions) == 1:
        raised = raised.exceptions[0]
    assert isinstance(raised, MCPError), repr(raised)
    return str(raised.data["code"])


async def call_status(p: PortalUnderTest, token: str, name: str = "web_whoami", server: str | None = None) -> int:
    body, headers = tools_call(name)
    status, _, _ = await p.post(body, server=server, headers={**headers, **bearer(token)})
    return status


async def open_session(p: PortalUnderTest, token: str, server: str | None = None) -> dict[str, str]:
    """A handshake-era session opened with `token`; the headers that continue it (without a token)."""
    status, headers, body = await p.post(INITIALIZE, server=server, headers=bearer(token))
    assert status == 200, body
    return {"Mcp-Session-Id": headers["mcp-session-id"], "MCP-Protocol-Version": LEGACY}


def forged(p: PortalUnderTest, key: Ed25519PrivateKey | None = None, **changes: Any) -> str:
    """A token of `tester` for /mcp signed with the portal's own key (or `key`), with `changes` to its claims."""
    now = int(time.time())
    claims = {
        "iss": p.base,
        "sub": "tester",
        "aud": p.mcp(),
        "client_id": "portal-tests",
        "scope": "tools:*",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": f"forged-{now}",
        **changes,
    }
    current = p.auth.context.keys.current()
    return jwt.encode(claims, key or current.private, algorithm="EdDSA", headers={"typ": "at+jwt", "kid": current.kid})


# -- 401: no token, a bad token ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("server", "scope"), [(None, "tools:*"), ("web", "tools:web")])
async def test_a_request_without_a_token_is_401_with_a_challenge_pointing_to_the_endpoints_metadata(
    world: PortalUnderTest, server: str | None, scope: str, era: str
) -> None:
    body, headers = (INITIALIZE, {}) if era == "legacy" else (modern_body("tools/list"), dict(MODERN_HEADERS))
    status, answer_headers, answer = await world.post(body, server=server, headers=headers, auth=False)
    assert status == 401, answer
    metadata_url = f"{world.base}/.well-known/oauth-protected-resource{path_of(server)}"
    # RFC 6750 §3.1: a request that carried no credentials gets no error code, only the challenge.
    assert challenge(answer_headers) == {"resource_metadata": metadata_url, "scope": scope}

    # RFC 9728: the metadata names exactly this endpoint and the portal as its authorization server.
    async with world.http.get(metadata_url) as response:
        assert response.status == 200
        metadata = await response.json()
    assert metadata["resource"] == world.mcp(server)
    assert metadata["authorization_servers"] == [world.base]
    assert scope in metadata["scopes_supported"]
    async with world.http.get(f"{world.base}/.well-known/oauth-authorization-server") as response:
        assert response.status == 200
        assert (await response.json())["issuer"] == world.base


async def test_browser_based_clients_may_read_the_resource_metadata_from_another_origin(
    world: PortalUnderTest,
) -> None:
    url = f"{world.base}/.well-known/oauth-protected-resource/mcp"
    preflight = {"Origin": "http://localhost:6274", "Access-Control-Request-Method": "GET"}
    async with world.http.options(url, headers=preflight) as response:
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == "*"
    async with world.http.get(url, headers={"Origin": "http://localhost:6274"}) as response:
        assert response.status == 200
        assert response.headers["Access-Control-Allow-Origin"] == "*"


async def test_only_the_portals_endpoints_have_resource_metadata(world: PortalUnderTest) -> None:
    for path in ("/servers/nosuch/mcp", "/elsewhere"):
        async with world.http.get(f"{world.base}/.well-known/oauth-protected-resource{path}") as response:
            assert response.status == 404, path


BAD_TOKENS = {
    "garbage": lambda p: "not-a-jwt",
    "expired": lambda p: forged(p, iat=int(time.time()) - 600, nbf=int(time.time()) - 600, exp=int(time.time()) - 60),
    "signed by another key": lambda p: forged(p, key=Ed25519PrivateKey.generate()),
    "unknown to the portal": lambda p: forged(p),
    "for a server endpoint": lambda p: p.token("web"),
    "for another portal": lambda p: forged(p, iss="http://127.0.0.1:1"),
}


@pytest.mark.parametrize("kind", list(BAD_TOKENS))
async def test_a_bad_token_is_401_invalid_token_and_says_why_without_echoing_it(
    world: PortalUnderTest, kind: str
) -> None:
    token = BAD_TOKENS[kind](world)
    body, headers = tools_call("web_whoami")
    status, answer_headers, answer = await world.post(body, headers={**headers, **bearer(token)})
    assert status == 401, answer
    params = challenge(answer_headers)
    assert params["error"] == "invalid_token"
    assert params["resource_metadata"] == f"{world.base}/.well-known/oauth-protected-resource/mcp"
    assert params["scope"] == "tools:*"
    assert params["error_description"]
    assert token not in str(answer_headers)
    assert answer["error"]["data"]["code"] == "invalid_token"


@pytest.mark.parametrize(("minted_for", "used_on"), [(None, "web"), ("web", None), ("hosted", "web")])
async def test_a_token_works_only_on_the_endpoint_it_was_minted_for(
    world: PortalUnderTest, minted_for: str | None, used_on: str | None
) -> None:
    token = world.token(minted_for)
    name = "whoami" if minted_for else "web_whoami"
    assert await call_status(world, token, name, server=minted_for) == 200
    status = await call_status(world, token, "whoami" if used_on else "web_whoami", server=used_on)
    assert status == 401


async def test_an_sdk_client_holding_another_endpoints_token_cannot_connect(world: PortalUnderTest, era: str) -> None:
    with pytest.raises(BaseException) as refused:  # an MCPError, in exception groups while connecting
        async with client(world.mcp(), era, token=world.token("web")) as c:
            await c.list_tools()
    assert refusal(refused.value) == "invalid_token"


async def test_a_scheme_other_than_bearer_is_refused(world: PortalUnderTest) -> None:
    body, headers = tools_call("web_whoami")
    status, answer_headers, _ = await world.post(body, headers={**headers, "Authorization": "Basic dGVzdDp0ZXN0"})
    assert status == 401
    assert challenge(answer_headers)["error"] == "invalid_request"


async def test_a_token_in_the_query_string_is_refused_even_beside_a_good_header(world: PortalUnderTest) -> None:
    token = world.token()
    body, headers = tools_call("web_whoami")
    for sent in ({**headers, **bearer(token)}, headers):
        status, answer_headers, answer = await world.post(
            body, headers=sent, url=f"{world.mcp()}?access_token={token}", auth=False
        )
        assert status == 400, answer
        assert challenge(answer_headers)["error"] == "invalid_request"
        assert answer["error"]["data"]["code"] == "invalid_request"
        assert token not in str(answer) and token not in str(answer_headers)


# -- 403 and filtered lists: what a token's capabilities reach ----------------------------------------------------


async def test_lists_show_only_the_tools_a_token_can_call(world: PortalUnderTest, era: str) -> None:
    token = world.token(scopes=("tools:web:whoami", "tools:hosted"))
    async with client(world.mcp(), era, token=token) as c:
        names = {tool.name for tool in (await c.list_tools()).tools}
        assert "web_whoami" in names and "hosted_add" in names
        assert not {name for name in names if name.startswith("web_")} - {"web_whoami"}
        # Resources and prompts are the server's as a whole: only `hosted`'s are listed.
        uris = {str(resource.uri) for resource in (await c.list_resources()).resources}
        assert uris == {"memo://hosted/1"}
        assert {prompt.name for prompt in (await c.list_prompts()).prompts} == {"hosted_greet"}
        assert text_of(await c.call_tool("web_whoami", {})) == "web"


async def test_calling_a_tool_the_token_lacks_is_403_naming_the_tools_scope(world: PortalUnderTest) -> None:
    token = world.token(scopes=("tools:web:whoami",))
    body, headers = tools_call("web_add", {"a": 1, "b": 2})
    status, answer_headers, answer = await world.post(body, headers={**headers, **bearer(token)})
    assert status == 403, answer
    assert challenge(answer_headers) == {
        "resource_metadata": f"{world.base}/.well-known/oauth-protected-resource/mcp",
        "error": "insufficient_scope",
        "scope": "tools:web:add",
    }
    assert answer["error"]["data"]["code"] == "insufficient_scope"

    # The same in a handshake-era session, and on the server's own endpoint.
    session = await open_session(world, token)
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "web_add", "arguments": {}}}
    status, answer_headers, _ = await world.post(call, headers={**session, **bearer(token)})
    assert status == 403
    assert challenge(answer_headers)["scope"] == "tools:web:add"
    server_token = world.token("web", scopes=("tools:web:whoami",))
    body, headers = tools_call("add", {"a": 1, "b": 2})
    status, answer_headers, _ = await world.post(body, server="web", headers={**headers, **bearer(server_token)})
    assert status == 403
    assert challenge(answer_headers)["scope"] == "tools:web:add"
    assert challenge(answer_headers)["resource_metadata"].endswith(
        "/.well-known/oauth-protected-resource/servers/web/mcp"
    )


@pytest.mark.parametrize(
    ("scopes", "allowed"),
    [
        (("tools:web:add",), True),
        (("tools:web",), True),
        (("tools:*",), True),
        (("tools:web:whoami", "tools:hosted"), False),
        (("codemode",), False),
    ],
)
async def test_a_broader_capability_covers_a_narrower_one(
    world: PortalUnderTest, scopes: tuple[str, ...], allowed: bool
) -> None:
    body, headers = tools_call("web_add", {"a": 2, "b": 3})
    status, _, answer = await world.post(body, headers={**headers, **bearer(world.token(scopes=scopes))})
    assert status == (200 if allowed else 403), answer
    if allowed:
        assert answer["result"]["structuredContent"] == {"result": 5}


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("resources/read", {"uri": "memo://web/1"}),
        ("prompts/get", {"name": "web_greet", "arguments": {"who": "you"}}),
    ],
)
async def test_resources_and_prompts_need_the_servers_whole_capability(
    world: PortalUnderTest, method: str, params: dict[str, Any]
) -> None:
    name = params.get("uri") or params["name"]
    headers = {**MODERN_HEADERS, "Mcp-Method": method, "Mcp-Name": name}
    # Every tool of the server, one by one, is not the server.
    narrow = world.token(scopes=[f"tools:web:{tool}" for tool in ("whoami", "add", "secret", "steps")])
    status, answer_headers, _ = await world.post(modern_body(method, params), headers={**headers, **bearer(narrow)})
    assert status == 403
    assert challenge(answer_headers)["scope"] == "tools:web"
    status, _, answer = await world.post(modern_body(method, params), headers={**headers, **bearer(world.token())})
    assert status == 200, answer


async def test_an_sdk_client_is_refused_a_tool_its_token_lacks_and_can_still_call_the_others(
    world: PortalUnderTest, era: str
) -> None:
    async with client(world.mcp(), era, token=world.token(scopes=("tools:web:whoami",))) as c:
        with pytest.raises(MCPError) as refused:
            await c.call_tool("web_add", {"a": 1, "b": 2})
        assert refusal(refused.value) == "insufficient_scope"
    async with client(world.mcp(), era, token=world.token(scopes=("tools:web:whoami",))) as c:
        assert text_of(await c.call_tool("web_whoami", {})) == "web"


# -- Revocation and blocking: refused on the very next request ----------------------------------------------------


async def test_a_blocked_user_loses_access_on_the_next_request_and_regains_it_when_unblocked(
    world: PortalUnderTest, era: str
) -> None:
    token = world.token(user="alice")
    async with client(world.mcp(), era, token=token) as c:
        assert text_of(await c.call_tool("web_whoami", {})) == "web"
        world.auth.users.set_blocked("alice", True)
        try:
            assert await call_status(world, token) == 401
            with pytest.raises(MCPError) as refused:
                await c.call_tool("web_whoami", {})
            assert refusal(refused.value) == "invalid_token"
        finally:
            world.auth.users.set_blocked("alice", False)
    assert await call_status(world, token) == 200


async def test_a_revoked_client_loses_access_on_the_next_request(world: PortalUnderTest) -> None:
    token = world.token(user="bob", client_id="doomed-agent")
    other = world.token(user="bob")
    session = await open_session(world, token)
    assert await call_status(world, token) == 200
    world.auth.clients.revoke("doomed-agent")
    assert await call_status(world, token) == 401
    status, answer_headers, _ = await world.post(
        {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers={**session, **bearer(token)}
    )
    assert status == 401
    assert "revoked" in challenge(answer_headers)["error_description"]
    # The same user through another client is not affected.
    assert await call_status(world, other) == 200


async def test_a_revoked_token_is_refused_on_the_next_request(world: PortalUnderTest, era: str) -> None:
    token = world.token(user="carol")
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    async with client(world.mcp(), era, token=token) as c:
        assert text_of(await c.call_tool("web_whoami", {})) == "web"
        assert world.auth.context.tokens.revoke(jti) == 1
        assert await call_status(world, token) == 401
        with pytest.raises(MCPError) as refused:
            await c.call_tool("web_whoami", {})
        assert refusal(refused.value) == "invalid_token"


# -- Sessions belong to who opened them ---------------------------------------------------------------------------


async def test_a_handshake_session_cannot_be_used_with_another_users_token(world: PortalUnderTest) -> None:
    dave = world.token(user="dave")
    session = await open_session(world, dave)
    listing = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    status, _, answer = await world.post(listing, headers={**session, **bearer(dave)})
    assert status == 200, answer

    # A valid token of another user, or of the same user through another client, does not open it: 404,
    # as for a session that does not exist, so nothing tells the holder the id is real.
    for intruder in (world.token(user="bob"), world.token(user="dave", client_id="another-client")):
        status, _, answer = await world.post(listing, headers={**session, **bearer(intruder)})
        assert status == 404, answer
        assert answer["error"]["data"]["code"] == "session_not_found"
    async with world.http.delete(world.mcp(), headers={**session, **bearer(world.token(user="bob"))}) as response:
        assert response.status == 404

    # Another token of the same user and client (a refreshed one) carries on with the session.
    status, _, answer = await world.post(listing, headers={**session, **bearer(world.token(user="dave"))})
    assert status == 200, answer
