"""What the authorization server issues when everything is right, and the shape of what it says."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path

import aiohttp
import jwt
import pytest
from auth_kit import Kit
from auth_support import PASSWORD, REDIRECT_URI, Browser, start_portal

from portal.auth.settings import AuthSettings, ConfidentialClient

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"


@pytest.fixture
async def kit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Kit]:
    monkeypatch.setenv("SERVICE_SECRET", "service-secret-value")
    auth = AuthSettings(
        grants={"alice": ("tools:*", "codemode")},
        group_grants={"notes-team": ("tools:notes",)},
        clients=(ConfidentialClient("service", "env:SERVICE_SECRET", scopes=("tools:notes",), introspect=True),),
    )
    portal = await start_portal(tmp_path, auth=auth, users=[("alice", ["eng"]), ("bob", ["notes-team"]), ("carol", [])])
    browser = Browser(portal)
    try:
        async with Kit(portal, browser) as kit:
            yield kit
    finally:
        await browser.close()
        await portal.stop()


def claims_of(token: str) -> dict[str, object]:
    return jwt.decode(token, options={"verify_signature": False})


async def test_the_metadata_document_describes_an_oauth_2_1_server(kit: Kit) -> None:
    async with kit.http.get(kit.portal.url("/.well-known/oauth-authorization-server")) as response:
        document = await response.json()
    base = kit.portal.base
    assert document["issuer"] == base
    assert document["authorization_endpoint"] == f"{base}/oauth/authorize"
    assert document["token_endpoint"] == f"{base}/oauth/token"
    assert document["registration_endpoint"] == f"{base}/oauth/register"
    assert document["jwks_uri"] == f"{base}/oauth/jwks.json"
    assert document["code_challenge_methods_supported"] == ["S256"]
    assert document["response_types_supported"] == ["code"]
    assert document["authorization_response_iss_parameter_supported"] is True
    assert document["client_id_metadata_document_supported"] is True
    assert TOKEN_EXCHANGE in document["grant_types_supported"]


async def test_the_jwks_publishes_the_key_tokens_are_signed_with(kit: Kit) -> None:
    token = (await kit.tokens())["access_token"]
    async with kit.http.get(kit.portal.url("/oauth/jwks.json")) as response:
        keys = (await response.json())["keys"]
    kid = jwt.get_unverified_header(token)["kid"]
    (key,) = [k for k in keys if k["kid"] == kid]
    assert key["kty"] == "OKP" and key["crv"] == "Ed25519" and key["alg"] == "EdDSA"
    assert "d" not in key
    public = jwt.PyJWK(key).key
    assert jwt.decode(token, public, algorithms=["EdDSA"], audience=kit.portal.mcp)["sub"] == "alice"


async def test_the_authorization_response_names_the_issuer_and_echoes_the_state(kit: Kit) -> None:
    answer = await kit.authorize(state="xyz-123")
    assert answer["iss"] == kit.portal.base
    assert answer["state"] == "xyz-123"
    assert "code" in answer


async def test_token_responses_are_never_cached(kit: Kit) -> None:
    code = await kit.code()
    body = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT_URI,
        "client_id": kit.client_id,
        "code_verifier": kit.verifier,
        "resource": kit.portal.mcp,
    }
    async with kit.http.post(kit.portal.url("/oauth/token"), data=body) as response:
        assert response.status == 200
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["Pragma"] == "no-cache"
        token = await response.json()
    assert token["token_type"] == "Bearer" and token["expires_in"] == 300
    assert token["scope"] == "codemode tools:*"
    async with kit.http.post(kit.portal.url("/oauth/token"), data={"grant_type": "nope"}) as response:
        assert response.status == 400 and response.headers["Cache-Control"] == "no-store"


async def test_registration_gives_a_secret_only_to_confidential_clients_and_checks_redirects(kit: Kit) -> None:
    public = await kit.register()
    assert "client_secret" not in public and public["token_endpoint_auth_method"] == "none"
    confidential = await kit.register(token_endpoint_auth_method="client_secret_basic")
    assert confidential["client_secret"] and confidential["client_secret_expires_at"] == 0
    for redirect in ("javascript:alert(1)", "http://example.com/cb", "https://example.com/cb#frag"):
        body = {"redirect_uris": [redirect], "token_endpoint_auth_method": "none"}
        async with kit.http.post(kit.portal.url("/oauth/register"), json=body) as response:
            assert response.status == 400
            assert (await response.json())["error"] == "invalid_client_metadata"


async def test_a_confidential_client_authenticates_with_its_secret_for_an_authorization_code(kit: Kit) -> None:
    registered = await kit.register(token_endpoint_auth_method="client_secret_basic")
    kit.client_id = registered["client_id"]
    code = await kit.code()
    pairs = [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", REDIRECT_URI),
        ("code_verifier", kit.verifier),
        ("resource", kit.portal.mcp),
    ]
    status, body = await kit.post("/oauth/token", pairs, basic=(kit.client_id, registered["client_secret"]))
    assert status == 200, body


async def test_capabilities_are_what_was_asked_within_what_was_granted(kit: Kit) -> None:
    # bob is granted tools:notes through his group; asking for everything gets him just that.
    kit.browser.user = "bob"
    body = await kit.tokens(scope="tools:* admin")
    assert body["scope"] == "tools:notes"
    consent = next(page for url, _, page in kit.browser.pages if "/consent" in url and "Allow access" in page)
    assert "Kit client" in consent and "127.0.0.1:1" in consent
    assert "tools:notes" in consent and "admin" in consent  # offered, and shown as not his to give
    assert claims_of(body["access_token"])["groups"] == ["notes-team"]


async def test_the_person_can_consent_to_less_than_asked(kit: Kit) -> None:
    answer = await kit.browser.authorize(kit.authorize_url(scope="tools:* codemode"), keep=["codemode"])
    status, body = await kit.exchange_code(answer["code"])
    assert status == 200 and body["scope"] == "codemode"


async def test_a_person_granted_nothing_can_only_deny(kit: Kit) -> None:
    kit.browser.user = "carol"
    answer = await kit.browser.authorize(kit.authorize_url(), decision="approve")
    assert answer["error"] == "access_denied"


async def test_client_credentials_gives_a_service_token_within_its_configured_capabilities(kit: Kit) -> None:
    pairs = [("grant_type", "client_credentials"), ("resource", kit.portal.mcp), ("scope", "tools:*")]
    status, body = await kit.post("/oauth/token", pairs, basic=("service", "service-secret-value"))
    assert status == 200, body
    assert body["scope"] == "tools:notes" and "refresh_token" not in body
    claims = claims_of(body["access_token"])
    assert claims["sub"] == "service" and claims["client_id"] == "service"
    principal = await kit.portal.service.verify_access_token(body["access_token"], audience=kit.portal.mcp)
    assert principal.can("tools:notes:create_note") and not principal.can("codemode")


async def test_an_exchange_narrows_shortens_and_names_the_delegate(kit: Kit) -> None:
    parent = (await kit.tokens())["access_token"]
    agent = (await kit.register(client_name="Agent"))["client_id"]
    status, body = await kit.exchange(parent, scope="tools:notes", client_id=agent, expires_in="60")
    assert status == 200, body
    assert body["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    child = claims_of(body["access_token"])
    assert child["scope"] == "tools:notes"
    assert child["act"] == {"sub": agent}
    assert child["aud"] == kit.portal.mcp and child["sub"] == "alice"
    assert child["exp"] <= claims_of(parent)["exp"] and child["exp"] <= time.time() + 61
    principal = await kit.portal.service.verify_access_token(body["access_token"], audience=kit.portal.mcp)
    assert principal.actor == {"sub": agent} and principal.client_id == agent
    # Exchanged again, by the first client: the earlier delegate is nested (RFC 8693 §4.1).
    status, again = await kit.exchange(body["access_token"], scope="tools:notes:get_note")
    assert status == 200, again
    assert claims_of(again["access_token"])["act"] == {"sub": kit.client_id, "act": {"sub": agent}}
    assert kit.portal.kinds("exchange", "success")


async def test_introspection_tells_a_resource_server_whether_a_token_is_active(kit: Kit) -> None:
    body = await kit.tokens()
    service = ("service", "service-secret-value")
    status, info = await kit.post("/oauth/introspect", [("token", body["access_token"])], basic=service)
    assert status == 200 and info["active"] is True
    assert info["sub"] == "alice" and info["aud"] == kit.portal.mcp and info["scope"] == "codemode tools:*"
    status, info = await kit.post("/oauth/introspect", [("token", body["refresh_token"])], basic=service)
    assert info["active"] is True and info["token_type"] == "refresh_token"
    kit.portal.service.users.set_blocked("alice", True)
    status, info = await kit.post("/oauth/introspect", [("token", body["access_token"])], basic=service)
    assert info == {"active": False}
    status, info = await kit.post("/oauth/introspect", [("token", "garbage")], basic=service)
    assert status == 200 and info == {"active": False}


async def test_revoking_a_refresh_token_ends_the_access_tokens_of_its_grant(kit: Kit) -> None:
    body = await kit.tokens()
    status, _ = await kit.post("/oauth/revoke", [("token", body["refresh_token"]), ("client_id", kit.client_id)])
    assert status == 200
    assert await kit.verify(body["access_token"]) == (401, "invalid_token")
    assert kit.outcome(await kit.refresh(body["refresh_token"])) == (400, "invalid_grant")
    # RFC 7009 §2.2: an unknown token is not an error.
    status, _ = await kit.post("/oauth/revoke", [("token", "unknown"), ("client_id", kit.client_id)])
    assert status == 200


async def test_auth_events_never_carry_secrets(kit: Kit) -> None:
    body = await kit.tokens()
    await kit.refresh(body["refresh_token"])
    await kit.exchange(body["access_token"], scope="codemode")
    await kit.verify(body["access_token"] + "x")
    secrets = [body["access_token"], body["refresh_token"], PASSWORD, "service-secret-value"]
    assert {"login", "consent", "issuance", "refresh", "exchange", "rejection"} <= {e.kind for e in kit.portal.events}
    for event in kit.portal.events:
        text = repr(asdict(event))
        assert not any(secret in text for secret in secrets), event
        assert "code=" not in text


async def test_the_login_page_refuses_a_wrong_password_without_saying_which_part_was_wrong(kit: Kit) -> None:
    kit.browser.password = "not the password"
    with pytest.raises(AssertionError):
        await kit.code()
    _url, status, page = kit.browser.pages[-1]
    assert status == 401 and "Wrong user name or password." in page
    failure = kit.portal.kinds("login", "failure")[-1]
    assert failure.subject == "alice" and "not the password" not in repr(failure)


async def test_pages_cannot_be_framed_and_cookies_are_http_only(kit: Kit) -> None:
    async with aiohttp.ClientSession() as http, http.get(kit.portal.url("/login")) as response:
        assert response.headers["X-Frame-Options"] == "DENY"
        policy = response.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in policy and "default-src 'none'" in policy
        assert response.headers["Referrer-Policy"] == "no-referrer"
        cookie = response.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Secure" not in cookie


async def test_browser_clients_may_call_the_token_side_endpoints_but_not_the_pages(kit: Kit) -> None:
    headers = {
        "Origin": "https://inspector.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    async with kit.http.options(kit.portal.url("/oauth/token"), headers=headers) as response:
        assert response.status == 204 and response.headers["Access-Control-Allow-Origin"] == "*"
        assert "Access-Control-Allow-Credentials" not in response.headers
    async with kit.http.get(kit.portal.url("/.well-known/oauth-authorization-server")) as response:
        assert response.headers["Access-Control-Allow-Origin"] == "*"
    async with kit.http.get(kit.portal.url("/login")) as response:
        assert "Access-Control-Allow-Origin" not in response.headers
    async with kit.http.options(kit.portal.url("/consent"), headers=headers) as response:
        assert response.status == 405
