"""A table of bad tokens and bad requests, each refused with the right status and OAuth error.

Bad tokens are presented to `verify_access_token` (what the gateway calls on every MCP
request): every one is `401 invalid_token`. Bad requests go to the `/oauth` endpoints
and the pages: refused back to the client (`302` with `error=`), on a page (`400`), or
from the token endpoint as JSON (`400`/`401`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest
from auth_kit import Kit, Outcome
from auth_support import REDIRECT_URI, Browser, start_portal
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from portal.auth.settings import AuthSettings, ConfidentialClient

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
BAD = (401, "invalid_token")

STUB_DNS = {"private.example": ["10.0.0.7"], "mapped.example": ["::ffff:192.168.1.1"], "meta.example": ["127.0.0.9"]}


async def stub_resolver(host: str, port: int) -> list[str]:
    if host not in STUB_DNS:
        raise OSError(f"no such host {host}")
    return STUB_DNS[host]


@pytest.fixture
async def kit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Kit]:
    monkeypatch.setenv("SERVICE_SECRET", "service-secret-value")
    auth = AuthSettings(
        grants={"alice": ("tools:*", "codemode"), "bob": ("tools:notes",)},
        clients=(ConfidentialClient("service", "env:SERVICE_SECRET", scopes=("tools:notes",), introspect=True),),
    )
    portal = await start_portal(tmp_path, auth=auth, resolver=stub_resolver, users=[("alice", ["eng"]), ("bob", [])])
    browser = Browser(portal)
    try:
        async with Kit(portal, browser) as kit:
            yield kit
    finally:
        await browser.close()
        await portal.stop()


Run = Callable[[Kit], Awaitable[Outcome]]


@dataclass(frozen=True)
class Case:
    name: str
    run: Run
    expected: Outcome


CASES: list[Case] = []


def case(name: str, expected: Outcome) -> Callable[[Run], Run]:
    def register(run: Run) -> Run:
        CASES.append(Case(name, run, expected))
        return run

    return register


# Bad tokens at the resource server


@case("alg none", BAD)
async def _alg_none(kit: Kit) -> Outcome:
    return await kit.verify(kit.unsigned("none"))


@case("HS256 signed with the public key", BAD)
async def _hs256_public_key(kit: Kit) -> Outcome:
    return await kit.verify(kit.unsigned("HS256"))


@case("unknown kid", BAD)
async def _unknown_kid(kit: Kit) -> Outcome:
    return await kit.verify(kit.forge(header={"kid": "no-such-key"}, key=Ed25519PrivateKey.generate()))


@case("known kid, signed by another key", BAD)
async def _wrong_key(kit: Kit) -> Outcome:
    return await kit.verify(kit.forge(key=Ed25519PrivateKey.generate()))


@case("wrong aud (another endpoint's token)", BAD)
async def _wrong_aud(kit: Kit) -> Outcome:
    body = await kit.tokens(resource=kit.portal.url("/codemode/mcp"))
    assert await kit.verify(body["access_token"], kit.portal.url("/codemode/mcp")) == (200, None)
    return await kit.verify(body["access_token"])


@case("aud as a list containing the endpoint", BAD)
async def _aud_list(kit: Kit) -> Outcome:
    return await kit.verify(kit.forge(aud=[kit.portal.mcp, "https://elsewhere.example/"]))


@case("expired", BAD)
async def _expired(kit: Kit) -> Outcome:
    now = int(time.time())
    return await kit.verify(kit.forge(iat=now - 600, nbf=now - 600, exp=now - 60))


@case("not yet valid", BAD)
async def _not_yet_valid(kit: Kit) -> Outcome:
    return await kit.verify(kit.forge(nbf=int(time.time()) + 120))


@case("issued in the future", BAD)
async def _future_iat(kit: Kit) -> Outcome:
    return await kit.verify(kit.forge(iat=int(time.time()) + 120))


@case("wrong iss", BAD)
async def _wrong_iss(kit: Kit) -> Outcome:
    return await kit.verify(kit.forge(iss="https://evil.example"))


@case("wrong typ (an ID token or plain JWT)", BAD)
async def _wrong_typ(kit: Kit) -> Outcome:
    return await kit.verify(kit.forge(header={"typ": "JWT"}))


@case("missing jti", BAD)
async def _missing_jti(kit: Kit) -> Outcome:
    return await kit.verify(kit.forge(jti=None))


@case("tampered payload", BAD)
async def _tampered(kit: Kit) -> Outcome:
    token = (await kit.tokens())["access_token"]
    header, _payload, signature = token.split(".")
    forged_payload = kit.forge(scope="tools:* admin").split(".")[1]
    return await kit.verify(f"{header}.{forged_payload}.{signature}")


@case("well signed but never issued", BAD)
async def _never_issued(kit: Kit) -> Outcome:
    return await kit.verify(kit.forge())


@case("not a JWT", BAD)
async def _garbage(kit: Kit) -> Outcome:
    return await kit.verify("not-a-token")


@case("revoked (RFC 7009)", BAD)
async def _revoked(kit: Kit) -> Outcome:
    token = (await kit.tokens())["access_token"]
    status, _ = await kit.post("/oauth/revoke", [("token", token), ("client_id", kit.client_id)])
    assert status == 200
    return await kit.verify(token)


@case("user blocked after issuance", BAD)
async def _blocked_user(kit: Kit) -> Outcome:
    token = (await kit.tokens())["access_token"]
    assert await kit.verify(token) == (200, None)
    kit.portal.service.users.set_blocked("alice", True)
    return await kit.verify(token)


@case("client revoked after issuance", BAD)
async def _revoked_client(kit: Kit) -> Outcome:
    token = (await kit.tokens())["access_token"]
    kit.portal.service.clients.revoke(kit.client_id)
    return await kit.verify(token)


@case("exchanged token after its parent was revoked", BAD)
async def _parent_revoked(kit: Kit) -> Outcome:
    parent = (await kit.tokens())["access_token"]
    status, child = await kit.exchange(parent, scope="tools:notes")
    assert status == 200, child
    kit.portal.service.context.tokens.revoke(_jti(parent))
    return await kit.verify(child["access_token"])


def _jti(token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["jti"])


# Bad authorization requests


@case("plain PKCE", (302, "invalid_request"))
async def _plain_pkce(kit: Kit) -> Outcome:
    return await kit.authorize_outcome(code_challenge="x" * 43, code_challenge_method="plain")


@case("PKCE method missing (means plain)", (302, "invalid_request"))
async def _pkce_method_missing(kit: Kit) -> Outcome:
    return await kit.authorize_outcome(drop=["code_challenge_method"])


@case("no code_challenge", (302, "invalid_request"))
async def _no_challenge(kit: Kit) -> Outcome:
    return await kit.authorize_outcome(drop=["code_challenge", "code_challenge_method"])


@case("resource missing", (302, "invalid_target"))
async def _no_resource(kit: Kit) -> Outcome:
    return await kit.authorize_outcome(drop=["resource"])


@case("resource not an endpoint of the portal", (302, "invalid_target"))
async def _foreign_resource(kit: Kit) -> Outcome:
    return await kit.authorize_outcome(resource="https://elsewhere.example/mcp")


@case("unknown capability", (302, "invalid_scope"))
async def _unknown_scope(kit: Kit) -> Outcome:
    return await kit.authorize_outcome(scope="tools:* root")


@case("redirect URI not registered (never redirected to)", (400, "invalid_request"))
async def _unregistered_redirect(kit: Kit) -> Outcome:
    return await kit.authorize_outcome(redirect_uri="http://127.0.0.1:1/elsewhere")


@case("unknown client at authorize", (400, "invalid_client"))
async def _unknown_client_authorize(kit: Kit) -> Outcome:
    return await kit.authorize_outcome(client_id="nobody")


@case("client metadata document on a private address", (400, "invalid_client"))
async def _cimd_private(kit: Kit) -> Outcome:
    outcome = await kit.authorize_outcome(client_id="https://private.example/client.json")
    assert "private or reserved address" in kit.browser.pages[-1][2]
    return outcome


@case("client metadata document on an IPv4-mapped private address", (400, "invalid_client"))
async def _cimd_mapped(kit: Kit) -> Outcome:
    return await kit.authorize_outcome(client_id="https://mapped.example/client.json")


@case("client metadata document over plain http", (400, "invalid_client"))
async def _cimd_http(kit: Kit) -> Outcome:
    # Not a metadata URL at all without https (loopback http only with allow_loopback_http).
    return await kit.authorize_outcome(client_id="http://meta.example/client.json")


@case("user denies consent", (302, "access_denied"))
async def _denied(kit: Kit) -> Outcome:
    answer = await kit.browser.authorize(kit.authorize_url(), decision="deny")
    assert answer["iss"] == kit.portal.base  # RFC 9207 on errors too
    return 302, answer.get("error")


@case("consent form posted without its CSRF token", (403, None))
async def _consent_csrf(kit: Kit) -> Outcome:
    await kit.code()  # logs in
    response = await kit.browser.post(
        kit.portal.url("/consent"), [("client_id", kit.client_id), ("decision", "approve")]
    )
    return response.status, None


# Bad token requests


@case("wrong PKCE verifier", (400, "invalid_grant"))
async def _wrong_verifier(kit: Kit) -> Outcome:
    code = await kit.code()
    return kit.outcome(await kit.exchange_code(code, code_verifier="w" * 64))


@case("code replayed (and what it issued is revoked)", (400, "invalid_grant"))
async def _code_replay(kit: Kit) -> Outcome:
    code = await kit.code()
    status, first = await kit.exchange_code(code)
    assert status == 200
    outcome = kit.outcome(await kit.exchange_code(code))
    assert await kit.verify(first["access_token"]) == BAD
    assert kit.outcome(await kit.refresh(first["refresh_token"])) == (400, "invalid_grant")
    return outcome


@case("redirect URI changed at the token endpoint", (400, "invalid_grant"))
async def _redirect_changed(kit: Kit) -> Outcome:
    code = await kit.code()
    return kit.outcome(await kit.exchange_code(code, redirect_uri=REDIRECT_URI + "x"))


@case("resource changed at the token endpoint", (400, "invalid_target"))
async def _resource_changed(kit: Kit) -> Outcome:
    code = await kit.code()
    return kit.outcome(await kit.exchange_code(code, resource=kit.portal.url("/codemode/mcp")))


@case("code of another client", (400, "invalid_grant"))
async def _other_client_code(kit: Kit) -> Outcome:
    code = await kit.code()
    other = await kit.register(client_name="Other")
    return kit.outcome(await kit.exchange_code(code, client_id=other["client_id"]))


@case("credentials in the query string", (400, "invalid_request"))
async def _query_string(kit: Kit) -> Outcome:
    code = await kit.code()
    query = f"grant_type=authorization_code&code={code}&code_verifier={kit.verifier}"
    return kit.outcome(await kit.post("/oauth/token", [("client_id", kit.client_id)], query=query))


@case("a parameter sent twice", (400, "invalid_request"))
async def _duplicate(kit: Kit) -> Outcome:
    pairs = [("grant_type", "refresh_token"), ("grant_type", "client_credentials"), ("client_id", kit.client_id)]
    return kit.outcome(await kit.post("/oauth/token", pairs))


@case("refresh token reused (its family is revoked)", (400, "invalid_grant"))
async def _refresh_reuse(kit: Kit) -> Outcome:
    first = await kit.tokens()
    status, second = await kit.refresh(first["refresh_token"])
    assert status == 200
    outcome = kit.outcome(await kit.refresh(first["refresh_token"]))
    # The whole family is gone: the newer refresh token and its access token too.
    assert kit.outcome(await kit.refresh(second["refresh_token"])) == (400, "invalid_grant")
    assert await kit.verify(second["access_token"]) == BAD
    return outcome


@case("scope wider than consented, on refresh", (400, "invalid_scope"))
async def _wider_refresh(kit: Kit) -> Outcome:
    answer = await kit.browser.authorize(kit.authorize_url(), keep=["codemode"])
    status, body = await kit.exchange_code(answer["code"])
    assert status == 200 and body["scope"] == "codemode"
    return kit.outcome(await kit.refresh(body["refresh_token"], scope="codemode tools:*"))


@case("refresh after the user was blocked", (400, "invalid_grant"))
async def _refresh_blocked(kit: Kit) -> Outcome:
    body = await kit.tokens()
    kit.portal.service.users.set_blocked("alice", True)
    return kit.outcome(await kit.refresh(body["refresh_token"]))


@case("refresh by a revoked client", (400, "invalid_client"))
async def _refresh_revoked_client(kit: Kit) -> Outcome:
    body = await kit.tokens()
    kit.portal.service.clients.revoke(kit.client_id)
    return kit.outcome(await kit.refresh(body["refresh_token"]))


@case("unknown client at the token endpoint", (400, "invalid_client"))
async def _unknown_client_token(kit: Kit) -> Outcome:
    return kit.outcome(await kit.refresh("whatever", client_id="nobody"))


@case("confidential client with a wrong secret", (401, "invalid_client"))
async def _wrong_secret(kit: Kit) -> Outcome:
    pairs = [("grant_type", "client_credentials"), ("resource", kit.portal.mcp)]
    return kit.outcome(await kit.post("/oauth/token", pairs, basic=("service", "wrong")))


@case("client_credentials by a public client", (401, "invalid_client"))
async def _public_client_credentials(kit: Kit) -> Outcome:
    pairs = [("grant_type", "client_credentials"), ("client_id", kit.client_id), ("resource", kit.portal.mcp)]
    return kit.outcome(await kit.post("/oauth/token", pairs))


@case("introspection by a public client", (401, "invalid_client"))
async def _public_introspection(kit: Kit) -> Outcome:
    token = (await kit.tokens())["access_token"]
    return kit.outcome(await kit.post("/oauth/introspect", [("token", token), ("client_id", kit.client_id)]))


@case("exchange that widens", (400, "invalid_scope"))
async def _exchange_widens(kit: Kit) -> Outcome:
    token = (await kit.tokens(scope="tools:notes"))["access_token"]
    return kit.outcome(await kit.exchange(token, scope="tools:*"))


@case("exchange that lengthens", (400, "invalid_request"))
async def _exchange_lengthens(kit: Kit) -> Outcome:
    token = (await kit.tokens())["access_token"]
    return kit.outcome(await kit.exchange(token, scope="tools:notes", expires_in="3600"))


@case("exchange for another endpoint", (400, "invalid_target"))
async def _exchange_retargets(kit: Kit) -> Outcome:
    token = (await kit.tokens())["access_token"]
    return kit.outcome(await kit.exchange(token, resource=kit.portal.url("/api")))


@case("exchange of a revoked token", (400, "invalid_grant"))
async def _exchange_revoked(kit: Kit) -> Outcome:
    token = (await kit.tokens())["access_token"]
    kit.portal.service.context.tokens.revoke(_jti(token))
    return kit.outcome(await kit.exchange(token))


@case("unsupported grant type", (400, "unsupported_grant_type"))
async def _password_grant(kit: Kit) -> Outcome:
    pairs = [("grant_type", "password"), ("username", "alice"), ("password", "x"), ("client_id", kit.client_id)]
    return kit.outcome(await kit.post("/oauth/token", pairs))


@pytest.mark.parametrize("bad", CASES, ids=[c.name for c in CASES])
async def test_a_bad_token_or_request_is_refused_with_the_right_error(kit: Kit, bad: Case) -> None:
    assert await bad.run(kit) == bad.expected


def test_the_table_has_at_least_25_cases() -> None:
    assert len(CASES) >= 25
