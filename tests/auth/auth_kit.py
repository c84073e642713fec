"""`Kit`: raw OAuth requests against a running test portal, for tests that take the protocol apart.

Where `auth_support.Browser` plays the person, `Kit` plays a client that speaks HTTP by
hand (so it can send what a correct client never would), and a forger holding the
portal's signing key (so tokens can be made wrong in exactly one way).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

import aiohttp
import jwt
from auth_support import REDIRECT_URI, Browser, PortalUnderTest, pkce
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from portal.auth.crypto import b64url, b64url_decode, random_token
from portal.auth.errors import InvalidToken

__all__ = ["Kit", "Outcome"]

Outcome = tuple[int, str | None]
"""(HTTP status, OAuth error code or None)."""


class Kit:
    def __init__(self, portal: PortalUnderTest, browser: Browser) -> None:
        self.portal = portal
        self.browser = browser
        self.http = aiohttp.ClientSession()
        self.client_id = ""
        self.verifier = ""
        self.resource = portal.mcp

    async def __aenter__(self) -> Kit:
        registered = await self.register()
        self.client_id = registered["client_id"]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.close()

    # Clients

    async def register(self, **metadata: Any) -> dict[str, Any]:
        body = {
            "redirect_uris": [REDIRECT_URI],
            "client_name": "Kit client",
            "grant_types": ["authorization_code", "refresh_token"],
            "token_endpoint_auth_method": "none",
            **metadata,
        }
        async with self.http.post(self.portal.url("/oauth/register"), json=body) as response:
            assert response.status == 201, await response.text()
            result: dict[str, Any] = await response.json()
            return result

    # Authorization

    def authorize_url(self, *, drop: Sequence[str] = (), **params: str) -> str:
        self.verifier, challenge = pkce()
        values = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": REDIRECT_URI,
            "scope": "tools:* codemode",
            "state": random_token(8),
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "resource": self.portal.mcp,
            **params,
        }
        self.resource = values["resource"]
        query = urlencode([(k, v) for k, v in values.items() if k not in drop])
        return self.portal.url(f"/oauth/authorize?{query}")

    async def authorize(self, **params: str) -> dict[str, str]:
        return await self.browser.authorize(self.authorize_url(**params))

    async def authorize_outcome(self, *, drop: Sequence[str] = (), **params: str) -> Outcome:
        """Where an authorization request ends: (302, error) when refused back to the client, or the
        status and error of the page the person sees."""
        try:
            answer = await self.browser.authorize(self.authorize_url(drop=drop, **params))
        except AssertionError:
            _url, status, page = self.browser.pages[-1]
            match = re.search(r"<p>([a-z_]+): ", page)
            return status, match.group(1) if match else None
        return 302, answer.get("error")

    async def code(self, **params: str) -> str:
        answer = await self.authorize(**params)
        assert "code" in answer, answer
        return answer["code"]

    # Token endpoint

    async def post(
        self, path: str, pairs: Sequence[tuple[str, str]], *, query: str = "", basic: tuple[str, str] | None = None
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if basic is not None:
            headers["Authorization"] = "Basic " + base64.b64encode(f"{basic[0]}:{basic[1]}".encode()).decode()
        url = self.portal.url(path) + (f"?{query}" if query else "")
        async with self.http.post(url, data=urlencode(list(pairs)), headers=headers) as response:
            body = await response.json(content_type=None)
            return response.status, body

    async def exchange_code(self, code: str, **params: str) -> tuple[int, dict[str, Any]]:
        values = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT_URI,
            "client_id": self.client_id,
            "code_verifier": self.verifier,
            "resource": self.resource,
            **params,
        }
        return await self.post("/oauth/token", list(values.items()))

    async def tokens(self, **params: str) -> dict[str, Any]:
        """A full, successful authorization: the token response."""
        status, body = await self.exchange_code(await self.code(**params))
        assert status == 200, body
        return body

    async def refresh(self, refresh_token: str, **params: str) -> tuple[int, dict[str, Any]]:
        values = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": self.client_id, **params}
        return await self.post("/oauth/token", list(values.items()))

    async def exchange(self, subject_token: str, **params: str) -> tuple[int, dict[str, Any]]:
        values = {
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token": subject_token,
            "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
            "client_id": self.client_id,
            **params,
        }
        return await self.post("/oauth/token", list(values.items()))

    @staticmethod
    def outcome(result: tuple[int, dict[str, Any]]) -> Outcome:
        status, body = result
        return status, body.get("error")

    # Resource side

    async def verify(self, token: str, audience: str | None = None) -> Outcome:
        try:
            await self.portal.service.verify_access_token(token, audience=audience or self.portal.mcp)
        except InvalidToken as exc:
            return exc.http_status, exc.code
        return 200, None

    # Forgery

    def claims(self, **changes: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.portal.base,
            "sub": "alice",
            "aud": self.portal.mcp,
            "client_id": self.client_id,
            "scope": "tools:*",
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            "jti": random_token(18),
        }
        claims.update(changes)
        return {k: v for k, v in claims.items() if v is not None}

    def forge(
        self, *, header: dict[str, Any] | None = None, key: Ed25519PrivateKey | None = None, **claims: Any
    ) -> str:
        """A token signed with the portal's own current key (or `key`), with `claims` changed."""
        current = self.portal.service.context.keys.current()
        headers = {"typ": "at+jwt", "kid": current.kid, **(header or {})}
        return jwt.encode(self.claims(**claims), key or current.private, algorithm="EdDSA", headers=headers)

    def unsigned(self, alg: str, **claims: Any) -> str:
        """A token with `alg` none or an HMAC made with the public key as secret (the classic confusion)."""
        current = self.portal.service.context.keys.current()
        header = {"alg": alg, "typ": "at+jwt", "kid": current.kid}
        signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(self.claims(**claims)).encode())
        if alg == "none":
            return signing_input + "."
        jwk = self.portal.service.context.keys.jwks()["keys"][0]
        mac = hmac.new(b64url_decode(jwk["x"]), signing_input.encode(), hashlib.sha256).digest()
        return signing_input + "." + b64url(mac)
