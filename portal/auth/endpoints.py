"""Revocation (RFC 7009), introspection (RFC 7662) and dynamic registration (RFC 7591), on authlib's endpoints."""

from __future__ import annotations

import time
from typing import Any

from authlib.consts import default_json_headers
from authlib.oauth2.rfc6749 import AccessDeniedError
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7591 import ClientRegistrationEndpoint
from authlib.oauth2.rfc7662 import IntrospectionEndpoint

from portal.auth.clients import PUBLIC_AND_SECRET_METHODS, Client, validate_client_metadata
from portal.auth.context import AuthContext
from portal.auth.errors import InvalidToken
from portal.auth.grants import CLIENT_AUTH_METHODS
from portal.auth.tables import RefreshTokenRow

__all__ = ["Introspection", "Registration", "Revocation", "TokenRef", "find_token"]


class TokenRef:
    """An access or refresh token as the revocation and introspection endpoints see it (`TokenMixin`)."""

    def __init__(
        self,
        kind: str,
        *,
        client_id: str,
        subject: str,
        scope: str,
        expires_at: int,
        issued_at: int,
        active: bool,
        jti: str | None = None,
        family_id: str | None = None,
        audience: str | None = None,
    ) -> None:
        self.kind = kind
        self.client_id = client_id
        self.subject = subject
        self.scope = scope
        self.expires_at = expires_at
        self.issued_at = issued_at
        self.active = active
        self.jti = jti
        self.family_id = family_id
        self.audience = audience

    def check_client(self, client: Client) -> bool:
        return self.client_id == client.client_id

    def get_scope(self) -> str:
        return self.scope

    def is_expired(self) -> bool:
        return self.expires_at < time.time()

    def is_revoked(self) -> bool:
        return not self.active


def _refresh_ref(row: RefreshTokenRow) -> TokenRef:
    return TokenRef(
        "refresh_token",
        client_id=row.client_id,
        subject=row.subject,
        scope=row.scope,
        expires_at=row.expires_at,
        issued_at=row.issued_at,
        active=row.revoked_at is None and row.rotated_at is None,
        family_id=row.family_id,
        audience=row.resource,
    )


def _access_ref(ctx: AuthContext, token: str) -> TokenRef | None:
    try:
        header = ctx.tokens.header(token)
        key = ctx.keys.public_key(header["kid"])
        if key is None:
            return None
        claims = ctx.tokens.decode(token, key, audience=None)
    except InvalidToken:
        return None  # expired, forged or not ours: nothing to revoke, inactive to introspect
    row = ctx.tokens.get(claims["jti"])
    if row is None:
        return None
    try:
        ctx.tokens.check_live(claims)
        active = True
    except InvalidToken:
        active = False
    return TokenRef(
        "access_token",
        client_id=row.client_id,
        subject=row.subject,
        scope=row.scope,
        expires_at=row.expires_at,
        issued_at=row.issued_at,
        active=active,
        jti=row.jti,
        family_id=row.family_id,
        audience=row.audience,
    )


def find_token(ctx: AuthContext, token: str, hint: str | None) -> TokenRef | None:
    """The token whatever its kind; the hint only decides which kind is tried first (RFC 7009 §2.1)."""
    order = ["refresh_token", "access_token"] if hint == "refresh_token" else ["access_token", "refresh_token"]
    for kind in order:
        if kind == "access_token" and token.count(".") == 2:
            found = _access_ref(ctx, token)
            if found is not None:
                return found
        if kind == "refresh_token":
            row = ctx.families.find_refresh_token(token)
            if row is not None:
                return _refresh_ref(row)
    return None


class Revocation(RevocationEndpoint):
    """RFC 7009. Public clients revoke with their client id alone (§2.1 allows it for them)."""

    CLIENT_AUTH_METHODS = CLIENT_AUTH_METHODS

    @property
    def ctx(self) -> AuthContext:
        ctx: AuthContext = self.server.ctx
        return ctx

    def query_token(self, token_string: str, token_type_hint: str | None) -> TokenRef | None:
        return find_token(self.ctx, token_string, token_type_hint)

    def revoke_token(self, token: TokenRef, request: Any) -> None:
        ctx = self.ctx
        if token.kind == "refresh_token" and token.family_id is not None:
            # RFC 7009 §2.1: revoking a refresh token also invalidates the access tokens of its grant.
            revoked = ctx.families.revoke_family(token.family_id)
            ctx.events.emit(
                "revocation", "success", subject=token.subject, client_id=token.client_id, reason="refresh token"
            )
        elif token.jti is not None:
            ctx.tokens.revoke(token.jti)
            revoked = [token.jti]
        else:
            revoked = []
        ctx.revoked(revoked, subject=token.subject, client_id=token.client_id, reason="revoked by client")


class Introspection(IntrospectionEndpoint):
    """RFC 7662, for confidential clients configured with `introspect = true`."""

    CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

    @property
    def ctx(self) -> AuthContext:
        ctx: AuthContext = self.server.ctx
        return ctx

    def query_token(self, token_string: str, token_type_hint: str | None) -> TokenRef | None:
        return find_token(self.ctx, token_string, token_type_hint)

    def check_permission(self, token: TokenRef, client: Client, request: Any) -> bool:
        return client.may_introspect

    def introspect_token(self, token: TokenRef) -> dict[str, Any]:
        # RFC 7662 §2.2
        body: dict[str, Any] = {
            "active": True,
            "scope": token.scope,
            "client_id": token.client_id,
            "sub": token.subject,
            "exp": token.expires_at,
            "iat": token.issued_at,
            "iss": self.ctx.issuer,
            "token_type": "Bearer" if token.kind == "access_token" else "refresh_token",
        }
        if token.audience:
            body["aud"] = token.audience
        if token.jti:
            body["jti"] = token.jti
        return body


class Registration(ClientRegistrationEndpoint):
    """RFC 7591 open registration (no initial access token), kept for clients without metadata documents."""

    @property
    def ctx(self) -> AuthContext:
        ctx: AuthContext = self.server.ctx
        return ctx

    def create_registration_response(self, request: Any) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        ctx = self.ctx
        if not ctx.auth.registration:
            raise AccessDeniedError("dynamic client registration is disabled", status_code=403)
        metadata = validate_client_metadata(request.payload.data, auth_methods=PUBLIC_AND_SECRET_METHODS)
        client, secret = ctx.clients.register(metadata)
        # RFC 7591 §3.2.1: the registered metadata, the client id, and the secret when there is one.
        body: dict[str, Any] = dict(metadata)
        body["client_id"] = client.client_id
        body["client_id_issued_at"] = int(time.time())
        if secret is not None:
            body["client_secret"] = secret
            body["client_secret_expires_at"] = 0
        ctx.events.emit("issuance", "success", client_id=client.client_id, reason="client registered")
        return 201, body, default_json_headers
