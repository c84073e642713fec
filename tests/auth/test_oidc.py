"""Logging in through an OpenID Connect provider: a small authlib provider on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import jwt
import pytest
from auth_kit import Kit
from auth_support import Browser, PortalUnderTest, Running, form_fields, serve_app, start_portal
from oidc_provider import OidcProvider as Provider
from oidc_provider import Person

from portal.auth.settings import AuthSettings, OidcProvider


@pytest.fixture
async def provider() -> AsyncIterator[tuple[Provider, Running]]:
    idp = Provider(client_id="portal", client_secret="idp-secret")
    running = await serve_app(idp.app)
    try:
        yield idp, running
    finally:
        await running.stop()


@pytest.fixture
async def kit(
    tmp_path: Path, provider: tuple[Provider, Running], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Kit]:
    idp, running = provider
    monkeypatch.setenv("IDP_SECRET", "idp-secret")
    auth = AuthSettings(
        local_users=False,
        providers=(
            OidcProvider(
                name="corp",
                issuer=running.base,
                client_id="portal",
                client_secret="env:IDP_SECRET",
                display_name="Corp SSO",
            ),
        ),
        group_grants={"eng": ("tools:notes", "codemode")},
    )
    portal = await start_portal(tmp_path, auth=auth, users=[])
    idp.client.redirect_uris.append(portal.url("/login/oidc/callback"))
    browser = Browser(portal)
    try:
        async with Kit(portal, browser) as kit:
            yield kit
    finally:
        await browser.close()
        await portal.stop()


async def login_through_provider(kit: Kit, portal: PortalUnderTest) -> dict[str, str]:
    """Authorize, choosing the provider's button on the login page; the client's redirect parameters."""
    browser = kit.browser
    response = await browser.get(kit.authorize_url(scope="tools:* codemode"))
    assert response.status == 303 and response.headers["Location"].startswith("/login")
    response = await browser.get(browser.absolute(response.headers["Location"]))
    page = browser.pages[-1][2]
    assert "Log in with Corp SSO" in page and "type=password id" not in page
    start = page.split('href="')[1].split('"')[0].replace("&amp;", "&")
    url = browser.absolute(start)
    # Portal -> provider -> portal callback -> consent: follow the redirects as a browser would.
    for _ in range(5):
        response = await browser.get(url)
        if response.status == 200:
            break
        assert response.status in (302, 303), browser.pages[-1][2][:300]
        url = browser.absolute(response.headers["Location"])
    assert "/consent" in url, url
    fields = form_fields(browser.pages[-1][2])
    response = await browser.post(portal.url("/consent"), [*fields, ("decision", "approve")])
    assert response.status == 302
    return {k: v for k, v in (p.split("=", 1) for p in response.headers["Location"].split("?", 1)[1].split("&"))}


async def test_a_person_logs_in_through_the_provider_and_gets_their_groups_capabilities(kit: Kit) -> None:
    answer = await login_through_provider(kit, kit.portal)
    status, body = await kit.exchange_code(answer["code"])
    assert status == 200, body
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["sub"] == "corp:u-123"
    assert claims["groups"] == ["eng", "fbi"]
    assert claims["scope"] == "codemode tools:notes"
    user = kit.portal.service.users.get("corp:u-123")
    assert user is not None and user.source == "oidc:corp" and user.email == "dana@example.com"
    assert [e.reason for e in kit.portal.kinds("login", "success")] == ["oidc:corp"]


async def test_a_blocked_person_cannot_log_in_through_the_provider(kit: Kit) -> None:
    await login_through_provider(kit, kit.portal)
    kit.portal.service.users.set_blocked("corp:u-123", True)
    kit.browser = Browser(kit.portal)
    try:
        with pytest.raises(AssertionError):
            await login_through_provider(kit, kit.portal)
        assert kit.browser.pages[-1][1] == 403 and "blocked" in kit.browser.pages[-1][2]
    finally:
        await kit.browser.close()


async def test_a_callback_with_a_forged_state_is_refused(kit: Kit) -> None:
    response = await kit.browser.get(kit.portal.url("/login/oidc/callback?code=abc&state=forged"))
    assert response.status == 400
    assert "does not match" in kit.browser.pages[-1][2] or "start again" in kit.browser.pages[-1][2]


async def test_an_id_token_for_another_audience_is_refused(kit: Kit, provider: tuple[Provider, Running]) -> None:
    idp, _ = provider
    idp.person = Person()
    original = idp.server._token_grants[0][1][1].get_client_claims

    def wrong_audience(client: object) -> dict[str, object]:
        return {"iss": idp.base, "aud": ["someone-else"]}

    idp.server._token_grants[0][1][1].get_client_claims = wrong_audience
    try:
        with pytest.raises(AssertionError):
            await login_through_provider(kit, kit.portal)
        assert kit.browser.pages[-1][1] == 502 and "ID token is not valid" in kit.browser.pages[-1][2]
    finally:
        idp.server._token_grants[0][1][1].get_client_claims = original
    assert kit.portal.kinds("login", "failure")
