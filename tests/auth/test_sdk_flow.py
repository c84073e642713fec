"""The whole flow as a real client runs it: the MCP SDK's `OAuthClientProvider` against a running portal.

Discovery (RFC 9728 → RFC 8414), dynamic registration, the browser step (log in,
consent) driven by the test, the code exchange with PKCE and `resource`, then a tool
call on the protected endpoint with the token, and a refresh when it runs out.
"""

from __future__ import annotations

import time

import httpx2
import jwt
from auth_support import REDIRECT_URI, Browser, PortalUnderTest
from mcp import Client
from mcp.client.auth import OAuthClientProvider, TokenStorage
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientInformationFull, OAuthClientMetadata, OAuthToken


class MemoryStorage(TokenStorage):
    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


def sdk_provider(portal: PortalUnderTest, browser: Browser, storage: MemoryStorage) -> OAuthClientProvider:
    answers: list[dict[str, str]] = []

    async def redirect_handler(url: str) -> None:
        answers.append(await browser.authorize(url))

    async def callback_handler() -> AuthorizationCodeResult:
        answer = answers.pop()
        return AuthorizationCodeResult(code=answer["code"], state=answer.get("state"), iss=answer.get("iss"))

    metadata = OAuthClientMetadata(
        redirect_uris=[REDIRECT_URI],
        client_name="SDK test client",
        grant_types=["authorization_code", "refresh_token"],
        response_types=["code"],
    )
    return OAuthClientProvider(portal.mcp, metadata, storage, redirect_handler, callback_handler)


async def test_an_sdk_client_logs_in_through_the_browser_and_calls_a_tool(
    portal: PortalUnderTest, browser: Browser
) -> None:
    storage = MemoryStorage()
    async with (
        httpx2.AsyncClient(auth=sdk_provider(portal, browser, storage)) as http,
        Client(streamable_http_client(portal.mcp, http_client=http), mode="legacy") as client,
    ):
        result = await client.call_tool("hello", {})
    assert "hello from a protected endpoint" in str(result.content)

    # The browser went through the portal's pages, as a person would.
    visited = [url.split("?")[0].removeprefix(portal.base) for url, _, _ in browser.pages]
    assert visited[:5] == ["/oauth/authorize", "/login", "/login", "/consent", "/consent"]

    assert storage.tokens is not None and storage.tokens.refresh_token
    claims = jwt.decode(storage.tokens.access_token, options={"verify_signature": False})
    header = jwt.get_unverified_header(storage.tokens.access_token)
    assert header["typ"] == "at+jwt" and header["alg"] == "EdDSA"
    assert claims["aud"] == portal.mcp
    assert claims["iss"] == portal.base
    assert claims["sub"] == "alice"
    assert claims["scope"] == "tools:*"
    assert claims["groups"] == ["eng"]
    assert claims["exp"] - claims["iat"] == 300
    assert portal.principals and portal.principals[-1].subject == "alice"
    assert {"login", "consent", "issuance"} <= {event.kind for event in portal.events}


async def test_the_sdk_client_refreshes_an_expired_token_and_the_old_refresh_token_is_spent(
    portal: PortalUnderTest, browser: Browser
) -> None:
    storage = MemoryStorage()
    provider = sdk_provider(portal, browser, storage)
    async with (
        httpx2.AsyncClient(auth=provider) as http,
        Client(streamable_http_client(portal.mcp, http_client=http), mode="legacy") as client,
    ):
        await client.call_tool("hello", {})
        assert storage.tokens is not None
        first_refresh = storage.tokens.refresh_token
        # Pretend the access token ran out: the provider refreshes before the next request.
        provider.context.token_expiry_time = time.time() - 1
        await client.call_tool("hello", {})
    assert storage.tokens is not None
    assert storage.tokens.refresh_token and storage.tokens.refresh_token != first_refresh
    assert portal.kinds("refresh", "success")
