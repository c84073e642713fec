"""The grants of the token endpoint, on authlib's grant classes.

authlib does the protocol checks it does well (client authentication, redirect URI
and code binding, PKCE verification, scope of a refresh); the portal adds what it
lacks or gets wrong for OAuth 2.1 and MCP:

- PKCE is required and only `S256` is accepted (`S256Only`; authlib accepts `plain`
  and a missing challenge);
- RFC 8707 `resource` is required on the authorization request, names one portal
  endpoint, and becomes the token's `aud` (`ResourceIndicator`);
- codes are claimed atomically, and a replayed one revokes what it issued;
- refresh tokens rotate on every use and a reused one revokes its family;
- tokens are minted by `AuthContext.issue`, not authlib's bearer generator.
"""

from __future__ import annotations

from typing import Any

from authlib.oauth2.rfc6749 import (
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    OAuth2Error,
    UnauthorizedClientError,
    grants,
)
from authlib.oauth2.rfc7636 import CodeChallenge

from portal.auth.adapter import FormRequest
from portal.auth.capabilities import intersect, is_resource
from portal.auth.clients import Client
from portal.auth.context import AuthContext
from portal.auth.crypto import random_token
from portal.auth.scopes import parse_scope
from portal.auth.tables import AuthCodeRow, RefreshTokenRow, UserRow

__all__ = [
    "CLIENT_AUTH_METHODS",
    "ClientCredentialsGrant",
    "CodeGrant",
    "InvalidTargetError",
    "RefreshGrant",
    "ResourceIndicator",
    "S256Only",
    "check_resource",
]

CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]


class InvalidTargetError(OAuth2Error):
    """RFC 8707 §2: the resource is invalid, unknown, or not allowed here."""

    error = "invalid_target"


def check_resource(ctx: AuthContext, values: list[str]) -> str:
    """The one `resource` of a request (RFC 8707 §2), which must be an endpoint of this portal."""
    if len(values) != 1:
        raise InvalidTargetError("exactly one resource parameter is required (RFC 8707)")
    resource = values[0]
    if not is_resource(ctx.issuer, resource):
        raise InvalidTargetError("the resource is not an endpoint of this portal")
    return resource


def context_of(grant: Any) -> AuthContext:
    ctx: AuthContext = grant.server.ctx
    return ctx


class S256Only(CodeChallenge):
    """PKCE as OAuth 2.1 §4.1.1 and RFC 9700 §2.1.1 want it: always, and only `S256`."""

    DEFAULT_CODE_CHALLENGE_METHOD = "S256"
    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]

    def validate_code_challenge(self, grant: Any, redirect_uri: Any) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("code_challenge is required (PKCE with S256)")
        # RFC 7636 §4.3: an absent method means `plain`, which is refused like an explicit one.
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("code_challenge_method must be S256")
        super().validate_code_challenge(grant, redirect_uri)


class ResourceIndicator:
    """Authorization-request extension: RFC 8707 `resource`, required and checked (§2, §2.1)."""

    def __call__(self, grant: Any) -> None:
        grant.register_hook("after_validate_authorization_request_payload", self.validate)

    def validate(self, grant: Any, result: Any) -> None:
        request: FormRequest = grant.request
        request.resource = check_resource(context_of(grant), request.payload.datalist.get("resource", []))


class _Code:
    """authlib's view of a claimed code (`AuthorizationCodeMixin` plus PKCE fields)."""

    def __init__(self, row: AuthCodeRow) -> None:
        self.row = row
        self.code_challenge = row.code_challenge
        self.code_challenge_method = row.code_challenge_method

    def get_redirect_uri(self) -> str:
        return self.row.redirect_uri

    def get_scope(self) -> str:
        return self.row.scope


class CodeGrant(grants.AuthorizationCodeGrant):
    """Authorization code grant (RFC 6749 §4.1, OAuth 2.1 §4.1)."""

    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS

    def generate_authorization_code(self) -> str:
        return random_token(32)

    def save_authorization_code(self, code: str, request: FormRequest) -> None:
        data = request.payload.data
        ctx = context_of(self)
        ctx.families.store_code(
            code,
            ttl=ctx.auth.authorization_code_ttl,
            client_id=request.client.client_id,
            subject=request.user.subject,
            redirect_uri=data["redirect_uri"],
            scope=request.granted_scope,
            resource=request.resource or "",
            code_challenge=data["code_challenge"],
            code_challenge_method=data["code_challenge_method"],
        )

    def query_authorization_code(self, code: str, client: Client) -> _Code | None:
        ctx = context_of(self)
        claim = ctx.families.claim_code(code)
        if claim.replayed:
            # RFC 6749 §4.1.2: a code used twice revokes the tokens issued from it.
            ctx.revoked(claim.revoked_tokens, subject=None, client_id=client.client_id, reason="code replayed")
            raise InvalidGrantError("the authorization code was already used; its tokens are revoked")
        if claim.row is None or claim.row.client_id != client.client_id:
            return None
        return _Code(claim.row)

    def delete_authorization_code(self, authorization_code: _Code) -> None:
        return None  # claimed (marked used) when it was queried

    def authenticate_user(self, authorization_code: _Code) -> UserRow | None:
        return context_of(self).live_user(authorization_code.row.subject)

    def validate_token_request(self) -> None:
        super().validate_token_request()
        code: _Code = self.request.authorization_code
        # RFC 8707 §2.2: the token request may repeat the resource, but not change it.
        resources = self.request.payload.datalist.get("resource", [])
        if resources and check_resource(context_of(self), resources) != code.row.resource:
            raise InvalidTargetError("the resource differs from the authorization request's")

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        ctx = context_of(self)
        client: Client = self.request.client
        code: _Code = self.request.authorization_code
        user = self.authenticate_user(code)
        if user is None:
            raise InvalidGrantError("the user of this code is blocked or unknown")
        # Re-intersect: a grant the operator withdrew since the consent is not issued.
        scopes = intersect(parse_scope(code.row.scope), ctx.granted(user))
        body = ctx.issue(
            client_id=client.client_id,
            subject=user.subject,
            scopes=scopes,
            resource=code.row.resource,
            groups=user.groups,
            grant="authorization_code",
            family_id=code.row.family_id,
            refresh=client.check_grant_type("refresh_token"),
        )
        return 200, body, self.TOKEN_RESPONSE_HEADER


class RefreshGrant(grants.RefreshTokenGrant):
    """Refresh token grant (RFC 6749 §6) with rotation and reuse detection (OAuth 2.1 §4.3.1)."""

    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True

    def authenticate_refresh_token(self, refresh_token: str) -> _Refresh | None:
        ctx = context_of(self)
        claim = ctx.families.claim_refresh_token(refresh_token)
        if claim.reused:
            # RFC 9700 §4.14.2: a rotated refresh token presented again means one of two parties
            # holds a stolen copy; revoke the whole family, so that both lose access.
            ctx.revoked(claim.revoked_tokens, subject=None, client_id=None, reason="refresh token reused")
            raise InvalidGrantError("the refresh token was already used; its grant is revoked")
        return _Refresh(claim.row) if claim.row is not None else None

    def authenticate_user(self, refresh_token: _Refresh) -> UserRow | None:
        return context_of(self).live_user(refresh_token.row.subject)

    def validate_token_request(self) -> None:
        super().validate_token_request()
        refresh: _Refresh = self.request.refresh_token
        resources = self.request.payload.datalist.get("resource", [])
        if resources and check_resource(context_of(self), resources) != refresh.row.resource:
            raise InvalidTargetError("the resource differs from the original grant's")

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        ctx = context_of(self)
        refresh: _Refresh = self.request.refresh_token
        user = self.authenticate_user(refresh)
        if user is None:
            ctx.families.revoke_family(refresh.row.family_id)
            raise InvalidGrantError("the user of this grant is blocked or unknown")
        asked = parse_scope(self.request.payload.scope) or parse_scope(refresh.row.scope)
        scopes = intersect(asked, ctx.granted(user))
        body = ctx.issue(
            client_id=refresh.row.client_id,
            subject=user.subject,
            scopes=scopes,
            resource=refresh.row.resource,
            groups=user.groups,
            grant="refresh_token",
            family_id=refresh.row.family_id,
            refresh=True,
            event="refresh",
        )
        return 200, body, self.TOKEN_RESPONSE_HEADER


class _Refresh:
    def __init__(self, row: RefreshTokenRow) -> None:
        self.row = row

    def check_client(self, client: Client) -> bool:
        return self.row.client_id == client.client_id

    def get_scope(self) -> str:
        return self.row.scope


class ClientCredentialsGrant(grants.ClientCredentialsGrant):
    """Client credentials grant (RFC 6749 §4.4), for the confidential clients of `[[auth.clients]]`."""

    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

    def validate_token_request(self) -> None:
        super().validate_token_request()
        client: Client = self.request.client
        if client.kind != "config":
            raise UnauthorizedClientError("only pre-registered confidential clients may use client_credentials")
        self.request.resource = check_resource(context_of(self), self.request.payload.datalist.get("resource", []))
        asked = parse_scope(self.request.payload.scope)
        ceiling = client.ceiling or frozenset()
        if asked and not intersect(asked, ceiling):
            raise InvalidScopeError("none of the requested capabilities is allowed to this client")

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        ctx = context_of(self)
        client: Client = self.request.client
        ceiling = client.ceiling or frozenset()
        asked = parse_scope(self.request.payload.scope)
        scopes = intersect(asked, ceiling) if asked else ceiling
        body = ctx.issue(
            client_id=client.client_id,
            subject=client.client_id,
            subject_kind="client",
            scopes=scopes,
            resource=self.request.resource,
            grant="client_credentials",
            family_id=None,
            refresh=False,
        )
        return 200, body, self.TOKEN_RESPONSE_HEADER
