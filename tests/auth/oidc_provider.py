"""A small OpenID Connect provider built with authlib, served on 127.0.0.1 for the OIDC login tests.

It knows one client (the portal) and one person, whom it logs in without asking
(the test is about the portal's side). ID tokens are RS256, signed with a key
generated per provider, as most real providers do.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from authlib.oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin, OAuth2Error, grants
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import UserInfo
from authlib.oidc.core.grants import OpenIDCode
from joserfc.jwk import RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from portal.auth.adapter import FormRequest, Reply, read_form
from portal.auth.crypto import random_token

__all__ = ["OidcProvider", "Person"]


@dataclass
class Person:
    sub: str = "u-123"
    name: str = "Dana Scully"
    email: str = "dana@example.com"
    groups: list[str] = field(default_factory=lambda: ["eng", "fbi"])


@dataclass
class _Client(ClientMixin):
    client_id: str
    secret: str
    redirect_uris: list[str]

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str:
        return self.redirect_uris[0]

    def get_allowed_scope(self, scope: str) -> str:
        return scope

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return client_secret == self.secret

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == "client_secret_basic"

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "authorization_code"


@dataclass
class _Code:
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    person: Person
    auth_time: int = field(default_factory=lambda: int(time.time()))

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.auth_time

    def get_acr(self) -> None:
        return None

    def get_amr(self) -> None:
        return None


class OidcProvider:
    """The provider's authlib server and Starlette app; `base` is set once it listens."""

    def __init__(self, *, client_id: str, client_secret: str, person: Person | None = None) -> None:
        self.base = ""
        self.person = person or Person()
        self.client = _Client(client_id, client_secret, [])
        self.key = RSAKey.generate_key(2048, parameters={"kid": "idp-key-1", "use": "sig", "alg": "RS256"})
        self.codes: dict[str, _Code] = {}
        self.server = self._server()

    def _server(self) -> AuthorizationServer:
        provider = self

        class Code(grants.AuthorizationCodeGrant):  # type: ignore[misc]
            TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic"]

            def save_authorization_code(self, code: str, request: Any) -> None:
                data = request.payload.data
                provider.codes[code] = _Code(
                    code,
                    request.client.client_id,
                    data["redirect_uri"],
                    request.scope,
                    data.get("nonce"),
                    data.get("code_challenge"),
                    data.get("code_challenge_method"),
                    request.user,
                )

            def query_authorization_code(self, code: str, client: Any) -> _Code | None:
                found = provider.codes.get(code)
                return found if found is not None and found.client_id == client.client_id else None

            def delete_authorization_code(self, authorization_code: _Code) -> None:
                provider.codes.pop(authorization_code.code, None)

            def authenticate_user(self, authorization_code: _Code) -> Person:
                return authorization_code.person

        class IdToken(OpenIDCode):  # type: ignore[misc]
            def resolve_client_private_key(self, client: Any) -> RSAKey:
                return provider.key

            def get_client_algorithm(self, client: Any) -> str:
                return "RS256"

            def get_encode_header(self, client: Any) -> dict[str, str]:
                return {"alg": "RS256", "kid": "idp-key-1"}

            def get_client_claims(self, client: Any) -> dict[str, Any]:
                return {"iss": provider.base, "aud": [client.client_id]}

            def exists_nonce(self, nonce: str, request: Any) -> bool:
                return False

            def generate_user_info(self, user: Person, scope: str) -> UserInfo:
                return UserInfo(sub=user.sub, name=user.name, email=user.email, groups=user.groups)

        class Server(AuthorizationServer):  # type: ignore[misc]
            def query_client(self, client_id: str) -> _Client | None:
                return provider.client if client_id == provider.client.client_id else None

            def save_token(self, token: Any, request: Any) -> None:
                return None

            def create_oauth2_request(self, request: Any) -> Any:
                return request

            def handle_response(self, status: int, body: Any, headers: Any) -> Reply:
                return Reply(status, body, headers)

            def send_signal(self, *args: Any, **kwargs: Any) -> None:
                return None

        server = Server()
        server.register_grant(Code, [CodeChallenge(required=True), IdToken(require_nonce=True)])
        server.register_token_generator("default", BearerTokenGenerator(lambda *a, **k: random_token(24)))
        return server

    def app(self, base: str) -> Starlette:
        self.base = base

        async def discovery(request: Request) -> Response:
            return JSONResponse(
                {
                    "issuer": base,
                    "authorization_endpoint": f"{base}/authorize",
                    "token_endpoint": f"{base}/token",
                    "jwks_uri": f"{base}/jwks",
                    "response_types_supported": ["code"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["RS256"],
                    "code_challenge_methods_supported": ["S256"],
                }
            )

        async def jwks(request: Request) -> Response:
            return JSONResponse({"keys": [self.key.as_dict(private=False)]})

        async def authorize(request: Request) -> Response:
            oreq = FormRequest("GET", f"{base}/authorize", request.headers, list(request.query_params.multi_items()))
            try:
                grant = await asyncio.to_thread(self.server.get_consent_grant, oreq, self.person)
            except OAuth2Error as error:
                return Reply(*error()).response()
            reply: Reply = await asyncio.to_thread(self.server.create_authorization_response, oreq, self.person, grant)
            return reply.response()

        async def token(request: Request) -> Response:
            oreq = FormRequest("POST", f"{base}/token", request.headers, await read_form(request))
            reply: Reply = await asyncio.to_thread(self.server.create_token_response, oreq)
            return reply.response()

        return Starlette(
            routes=[
                Route("/.well-known/openid-configuration", discovery),
                Route("/jwks", jwks),
                Route("/authorize", authorize),
                Route("/token", token, methods=["POST"]),
            ]
        )
