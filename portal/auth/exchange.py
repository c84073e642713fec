"""RFC 8693 token exchange that only narrows.

A holder of a portal access token trades it for one with fewer (or the same)
capabilities, for the same endpoint, living no longer than the original, with an
`act` claim naming the client it is delegated to (the client making the exchange).
Anything that would widen, retarget or lengthen is refused. The new token records
its parent, so revoking the parent (or blocking its user) ends the delegation too.

authlib's `rfc8693` module is empty, so the grant is built on its `BaseGrant`.
"""

from __future__ import annotations

import time
from typing import Any

from authlib.oauth2.rfc6749 import (
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    UnauthorizedClientError,
)
from authlib.oauth2.rfc6749.grants import BaseGrant, TokenEndpointMixin

from portal.auth.capabilities import minimal
from portal.auth.clients import TOKEN_EXCHANGE, Client
from portal.auth.errors import InvalidToken
from portal.auth.grants import CLIENT_AUTH_METHODS, InvalidTargetError, check_resource, context_of
from portal.auth.scopes import narrower_or_equal, parse_scope

__all__ = ["ACCESS_TOKEN_TYPE", "TokenExchangeGrant"]

ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
SUBJECT_TOKEN_TYPES = frozenset({ACCESS_TOKEN_TYPE, "urn:ietf:params:oauth:token-type:jwt"})


class TokenExchangeGrant(BaseGrant, TokenEndpointMixin):
    GRANT_TYPE = TOKEN_EXCHANGE
    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS

    def validate_token_request(self) -> None:
        client: Client = self.authenticate_token_endpoint_client()
        if not client.check_grant_type(self.GRANT_TYPE):
            raise UnauthorizedClientError("this client may not exchange tokens")
        ctx = context_of(self)
        data = self.request.payload.data
        # RFC 8693 §2.1: subject_token and subject_token_type are required.
        if not data.get("subject_token") or not data.get("subject_token_type"):
            raise InvalidRequestError("subject_token and subject_token_type are required")
        if data["subject_token_type"] not in SUBJECT_TOKEN_TYPES:
            raise InvalidRequestError("subject_token_type must be an access token of this portal")
        if data.get("actor_token") or data.get("actor_token_type"):
            raise InvalidRequestError("actor_token is not supported: the act claim names the exchanging client")
        if data.get("requested_token_type", ACCESS_TOKEN_TYPE) != ACCESS_TOKEN_TYPE:
            raise InvalidRequestError("only access tokens can be requested")
        try:
            claims = ctx.decode(data["subject_token"])
        except InvalidToken as exc:
            raise InvalidGrantError(f"subject_token: {exc.description}") from None
        # RFC 8693 §2.1 resource/audience: an exchanged token keeps the endpoint it was for.
        resources = self.request.payload.datalist.get("resource", [])
        if resources and check_resource(ctx, resources) != claims["aud"]:
            raise InvalidTargetError("an exchanged token keeps the audience of the original")
        if data.get("audience") and data["audience"] != claims["aud"]:
            raise InvalidTargetError("an exchanged token keeps the audience of the original")
        held = parse_scope(claims.get("scope"))
        asked = parse_scope(data.get("scope")) or held
        if not narrower_or_equal(asked, held):
            # SPEC.md, Tokens: an exchange never widens.
            raise InvalidScopeError("the exchange asks for capabilities the subject token does not hold")
        now = int(time.time())
        expires_at = min(int(claims["exp"]), now + ctx.auth.access_token_ttl)
        if data.get("expires_in"):
            try:
                wanted = int(data["expires_in"])
            except ValueError:
                raise InvalidRequestError("expires_in must be a number of seconds") from None
            if wanted <= 0 or now + wanted > int(claims["exp"]):
                raise InvalidRequestError("the exchange would outlive the subject token")
            expires_at = now + wanted
        self.request.client = client
        self.request.exchange = (claims, minimal(asked), expires_at)

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        ctx = context_of(self)
        client: Client = self.request.client
        claims, scopes, expires_at = self.request.exchange
        parent = ctx.tokens.get(claims["jti"])
        # RFC 8693 §4.1: the current actor, with the previous ones nested inside.
        actor: dict[str, Any] = {"sub": client.client_id}
        if isinstance(claims.get("act"), dict):
            actor["act"] = claims["act"]
        body = ctx.issue(
            client_id=client.client_id,
            subject=claims["sub"],
            subject_kind=parent.subject_kind if parent is not None else "user",
            scopes=scopes,
            resource=claims["aud"],
            groups=claims.get("groups") or (),
            grant="token_exchange",
            family_id=None,
            refresh=False,
            actor=actor,
            parent_jti=claims["jti"],
            expires_at=expires_at,
            event="exchange",
        )
        body["issued_token_type"] = ACCESS_TOKEN_TYPE
        return 200, body, self.TOKEN_RESPONSE_HEADER
