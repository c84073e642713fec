"""The portal's authlib `AuthorizationServer`, and its RFC 8414 metadata.

authlib's server is framework-neutral and synchronous; `portal.auth.adapter` carries
requests to it and replies back, and `portal.auth.web` calls it from a worker thread.
"""

from __future__ import annotations

import logging
from typing import Any

from authlib.oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import InvalidScopeError
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata
from authlib.oauth2.rfc9207 import IssuerParameter

from portal.auth.adapter import Reply
from portal.auth.capabilities import unknown_scopes
from portal.auth.clients import TOKEN_EXCHANGE, Client
from portal.auth.context import AuthContext
from portal.auth.endpoints import Introspection, Registration, Revocation
from portal.auth.exchange import TokenExchangeGrant
from portal.auth.grants import ClientCredentialsGrant, CodeGrant, RefreshGrant, ResourceIndicator, S256Only
from portal.auth.scopes import ADMIN_SCOPES, parse_scope

__all__ = ["PortalAuthorizationServer", "metadata"]

logger = logging.getLogger("portal.auth")

SCOPES_SUPPORTED = ["tools:*", "codemode", *sorted(ADMIN_SCOPES)]
"""The capabilities advertised; `tools:{server}` and `tools:{server}:{tool}` are accepted too."""


def metadata(ctx: AuthContext) -> dict[str, Any]:
    """RFC 8414 §2 authorization server metadata (plus the MCP-relevant extensions)."""
    base = ctx.issuer
    auth_methods = ["none", "client_secret_basic", "client_secret_post"]
    document: dict[str, Any] = {
        "issuer": base,
        "authorization_endpoint": f"{base}/oauth/authorize",
        "token_endpoint": f"{base}/oauth/token",
        "jwks_uri": f"{base}/oauth/jwks.json",
        "revocation_endpoint": f"{base}/oauth/revoke",
        "introspection_endpoint": f"{base}/oauth/introspect",
        "scopes_supported": SCOPES_SUPPORTED,
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials", TOKEN_EXCHANGE],
        "token_endpoint_auth_methods_supported": auth_methods,
        "revocation_endpoint_auth_methods_supported": auth_methods,
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "code_challenge_methods_supported": ["S256"],
        # RFC 9207 §3
        "authorization_response_iss_parameter_supported": True,
        # draft-ietf-oauth-client-id-metadata-document §5
        "client_id_metadata_document_supported": True,
        # RFC 9068 / RFC 8707: tokens are JWTs for one resource
        "resource_indicators_supported": True,
    }
    if ctx.auth.registration:
        document["registration_endpoint"] = f"{base}/oauth/register"
    return document


class _Issuer(IssuerParameter):
    def __init__(self, issuer: str) -> None:
        self._issuer = issuer

    def get_issuer(self) -> str:
        return self._issuer

    def add_issuer_parameter(self, authorization_server: Any, response: Reply) -> None:
        # RFC 9207 §2: every authorization response, errors included, names the issuer.
        response.add_params({"iss": self._issuer})


class PortalAuthorizationServer(AuthorizationServer):
    """authlib's authorization server, wired to the portal's stores."""

    def __init__(self, ctx: AuthContext) -> None:
        super().__init__(scopes_supported=SCOPES_SUPPORTED)
        self.ctx = ctx
        self.issuer_parameter = _Issuer(ctx.issuer)
        self.register_extension(lambda server: self.issuer_parameter(server))
        self.register_grant(CodeGrant, [S256Only(required=True), ResourceIndicator()])
        self.register_grant(RefreshGrant)
        self.register_grant(ClientCredentialsGrant)
        self.register_grant(TokenExchangeGrant)
        self.register_endpoint(Revocation)
        self.register_endpoint(Introspection)
        self.register_endpoint(Registration(self))
        try:
            AuthorizationServerMetadata(metadata(ctx)).validate()
        except ValueError as exc:
            logger.warning(
                "OAuth metadata is not valid (%s): public_url should be https, or http on a loopback address", exc
            )

    def query_client(self, client_id: str) -> Client | None:
        return self.ctx.clients.get(client_id)

    def save_token(self, token: dict[str, Any], request: Any) -> None:
        return None  # recorded when minted (AuthContext.issue)

    def generate_token(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        raise RuntimeError("the portal's grants mint tokens through AuthContext.issue")

    def create_oauth2_request(self, request: Any) -> Any:
        return request  # already a FormRequest (portal.auth.adapter)

    def create_json_request(self, request: Any) -> Any:
        return request  # already a JsonBodyRequest

    def handle_response(self, status: int, body: Any, headers: list[tuple[str, str]]) -> Reply:
        return Reply(status, body, headers)

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        return None  # the portal emits its own auth events

    def validate_requested_scope(self, scope: str | None) -> None:
        # RFC 6749 §3.3: scopes that are not capabilities of the portal are `invalid_scope`.
        unknown = unknown_scopes(parse_scope(scope))
        if unknown:
            raise InvalidScopeError(f"unknown capabilities: {' '.join(unknown)}")
