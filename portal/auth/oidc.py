"""Logging in at the portal through an OpenID Connect provider (the portal is the provider's client).

Any issuer with discovery (OpenID Connect Discovery 1.0) works: the portal reads
`{issuer}/.well-known/openid-configuration`, sends the browser to its authorization
endpoint with the authorization code flow, PKCE S256, `state` and `nonce`
(OIDC Core §3.1.2), exchanges the code at its token endpoint, and validates the ID
token (OIDC Core §3.1.3.7: signature with the provider's published keys, `iss`,
`aud`, `azp`, `exp`, `iat`, `nonce`). The person's groups come from the configured
claim of the ID token, or of the userinfo response when the ID token has none.

The provider is configured by the operator, so it is fetched with a plain client
(it may well live on the company network), not with `portal.outbound`.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import time
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import jwt
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from portal.auth.context import AuthContext
from portal.auth.crypto import random_token
from portal.auth.pages import error_page
from portal.auth.sessions import Sessions
from portal.auth.settings import OidcProvider
from portal.auth.web import AuthWeb, safe_next
from portal.settings import resolve_secret

__all__ = ["OidcError", "OidcLogin"]

logger = logging.getLogger("portal.auth")

CALLBACK_PATH = "/login/oidc/callback"
DISCOVERY_SECONDS = 3600.0
_ASYMMETRIC = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]


class OidcError(Exception):
    """A login at a provider that cannot be completed; the message is shown to the person."""


def _groups(value: Any) -> list[str]:
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [str(item) for item in value if isinstance(item, str | int)]
    return []


class OidcLogin:
    """The routes and logic of OIDC logins, for every provider of `[[auth.providers]]`."""

    def __init__(self, ctx: AuthContext, web: AuthWeb, sessions: Sessions) -> None:
        self.ctx = ctx
        self.web = web
        self.sessions = sessions
        self._http: aiohttp.ClientSession | None = None
        self._discovery: dict[str, tuple[dict[str, Any], float]] = {}
        self._jwks: dict[str, dict[str, Any]] = {}

    def links(self, next_url: str) -> list[tuple[str, str, str]]:
        query = f"?{urlencode({'next': next_url})}" if next_url else ""
        return [(p.name, p.display_name or p.name, f"/login/oidc/{p.name}{query}") for p in self.ctx.auth.providers]

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    # Routes

    async def start(self, request: Request) -> Response:
        provider = self.ctx.auth.provider(request.path_params["provider"])
        if provider is None:
            return error_page("Unknown identity provider", "There is no such way to log in here.", status=404)
        next_url = safe_next(request.query_params.get("next")) or ""
        try:
            discovery = await self._discover(provider)
        except OidcError as exc:
            return error_page("Cannot log in", str(exc), status=502)
        state, nonce, verifier = random_token(24), random_token(24), random_token(48)
        scopes = ["openid", *[s for s in provider.scopes if s != "openid"]]
        params = {
            "response_type": "code",
            "client_id": provider.client_id,
            "redirect_uri": self.ctx.issuer + CALLBACK_PATH,
            "scope": " ".join(scopes),
            "state": state,
            "nonce": nonce,
            "code_challenge": create_s256_code_challenge(verifier),
            "code_challenge_method": "S256",
        }
        response = RedirectResponse(f"{discovery['authorization_endpoint']}?{urlencode(params)}", status_code=303)
        self.sessions.set_oidc_state(
            response,
            {"provider": provider.name, "state": state, "nonce": nonce, "verifier": verifier, "next": next_url},
        )
        return response

    async def callback(self, request: Request) -> Response:
        saved = self.sessions.oidc_state(request)
        query = request.query_params
        if saved is None:
            return error_page("Cannot log in", "The login took too long or was not started here; start again.")
        provider = self.ctx.auth.provider(str(saved.get("provider")))
        if provider is None or not hmac.compare_digest(str(saved.get("state")), query.get("state", "")):
            # OIDC Core §3.1.2.7 / RFC 6749 §10.12: the state must be the one this browser sent.
            return error_page("Cannot log in", "The answer of the identity provider does not match this login.")
        if query.get("error"):
            self.ctx.events.emit("login", "failure", reason=f"{provider.name}: {query.get('error')}")
            return error_page("Cannot log in", f"The identity provider refused: {query.get('error')}.", status=403)
        try:
            claims = await self._complete(provider, query.get("code", ""), saved)
        except OidcError as exc:
            self.ctx.events.emit("login", "failure", reason=f"{provider.name}: {exc}")
            return error_page("Cannot log in", str(exc), status=502)
        user = await asyncio.to_thread(
            self.ctx.users.upsert_oidc,
            provider.name,
            str(claims["sub"]),
            groups=claims["_groups"],
            display_name=claims.get("name") or claims.get("preferred_username"),
            email=claims.get("email"),
        )
        if user.blocked:
            self.ctx.events.emit("login", "failure", subject=user.subject, reason="blocked")
            return error_page("Access denied", "Your account is blocked.", status=403)
        self.ctx.events.emit("login", "success", subject=user.subject, reason=f"oidc:{provider.name}")
        response = self.web.logged_in(user.subject, safe_next(saved.get("next")) or "")
        self.sessions.clear_oidc_state(response)
        return response

    # The protocol

    async def _complete(self, provider: OidcProvider, code: str, saved: dict[str, Any]) -> dict[str, Any]:
        discovery = await self._discover(provider)
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.ctx.issuer + CALLBACK_PATH,
            "code_verifier": str(saved["verifier"]),
            "client_id": provider.client_id,
        }
        headers = {}
        if provider.client_secret:
            secret = resolve_secret(provider.client_secret, base_dir=self.ctx.settings.base_dir)
            # RFC 6749 §2.3.1: client_secret_basic, each part form-urlencoded first.
            pair = f"{quote(provider.client_id, safe='')}:{quote(secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        body = await self._request("POST", discovery["token_endpoint"], data=form, headers=headers)
        id_token = body.get("id_token")
        if not isinstance(id_token, str):
            raise OidcError("the identity provider returned no ID token")
        claims = await self._validate_id_token(provider, discovery, id_token, str(saved["nonce"]))
        groups = claims.get(provider.groups_claim)
        if groups is None and discovery.get("userinfo_endpoint") and isinstance(body.get("access_token"), str):
            info = await self._request(
                "GET", discovery["userinfo_endpoint"], headers={"Authorization": f"Bearer {body['access_token']}"}
            )
            if info.get("sub") == claims["sub"]:  # OIDC Core §5.3.2
                groups = info.get(provider.groups_claim)
        claims["_groups"] = _groups(groups)
        return claims

    async def _validate_id_token(
        self, provider: OidcProvider, discovery: dict[str, Any], token: str, nonce: str
    ) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise OidcError("the ID token is malformed") from None
        allowed = [a for a in discovery.get("id_token_signing_alg_values_supported", ["RS256"]) if a in _ASYMMETRIC]
        if header.get("alg") not in allowed:
            raise OidcError("the ID token is signed with an algorithm the portal does not accept")
        key = await self._key(discovery, header.get("kid"))
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[header["alg"]],
                audience=provider.client_id,
                issuer=discovery["issuer"],
                leeway=30,
                options={"require": ["iss", "sub", "aud", "exp", "iat"]},
            )
        except jwt.PyJWTError as exc:
            raise OidcError(f"the ID token is not valid ({type(exc).__name__})") from None
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        if len(audiences) > 1 and claims.get("azp") != provider.client_id:
            raise OidcError("the ID token is not for this portal")
        if not hmac.compare_digest(str(claims.get("nonce", "")), nonce):
            raise OidcError("the ID token does not answer this login (nonce)")
        return claims

    async def _key(self, discovery: dict[str, Any], kid: Any) -> Any:
        uri = discovery["jwks_uri"]
        for fresh in (False, True):
            if fresh or uri not in self._jwks:
                self._jwks[uri] = await self._request("GET", uri)
            try:
                keys = jwt.PyJWKSet.from_dict(self._jwks[uri]).keys
            except jwt.PyJWTError:
                raise OidcError("the identity provider publishes unusable keys") from None
            for key in keys:
                if kid is None or key.key_id == kid:
                    return key.key
        raise OidcError("the ID token is signed with a key the identity provider does not publish")

    async def _discover(self, provider: OidcProvider) -> dict[str, Any]:
        cached = self._discovery.get(provider.name)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        document = await self._request("GET", provider.issuer.rstrip("/") + "/.well-known/openid-configuration")
        # OIDC Discovery §4.3: the issuer in the document must be exactly the configured one.
        if document.get("issuer") != provider.issuer:
            raise OidcError("the identity provider's discovery document names another issuer")
        for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not isinstance(document.get(key), str):
                raise OidcError(f"the identity provider's discovery document lacks {key}")
        self._discovery[provider.name] = (document, time.monotonic() + DISCOVERY_SECONDS)
        return document

    async def _request(self, method: str, url: str, **options: Any) -> dict[str, Any]:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        try:
            async with self._http.request(method, url, **options) as response:
                body = await response.json(content_type=None)
                if response.status != 200 or not isinstance(body, dict):
                    raise OidcError(f"the identity provider answered HTTP {response.status}")
                return body
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise OidcError(f"the identity provider cannot be reached ({type(exc).__name__})") from None
