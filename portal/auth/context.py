"""What the grants and endpoints of the authorization server share: stores, settings, events.

Everything here is synchronous (it runs in the worker thread that runs authlib).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from portal.auth.capabilities import intersect, operator_grants
from portal.auth.clients import Clients
from portal.auth.errors import InvalidToken
from portal.auth.events import AuthEventKind, AuthEvents
from portal.auth.families import Families
from portal.auth.keys import KeyRing
from portal.auth.settings import AuthSettings
from portal.auth.tables import UserRow
from portal.auth.tokens import AccessTokens
from portal.auth.users import Users
from portal.settings import Settings

__all__ = ["AuthContext"]


@dataclass
class AuthContext:
    settings: Settings
    users: Users
    clients: Clients
    tokens: AccessTokens
    families: Families
    keys: KeyRing
    events: AuthEvents

    @property
    def auth(self) -> AuthSettings:
        return self.settings.auth

    @property
    def issuer(self) -> str:
        return self.settings.public_url

    def granted(self, user: UserRow) -> frozenset[str]:
        """What the operator granted `user` (until policies land, `[auth.grants]` and `[auth.group_grants]`)."""
        return operator_grants(self.auth, user.subject, user.groups)

    def allowed(self, user: UserRow, asked: Iterable[str]) -> frozenset[str]:
        """`asked` narrowed to what `user` was granted; nothing asked means everything granted."""
        granted = self.granted(user)
        asked_set = frozenset(asked)
        return granted if not asked_set else intersect(asked_set, granted)

    def live_user(self, subject: str) -> UserRow | None:
        user = self.users.get(subject)
        return None if user is None or user.blocked else user

    def decode(self, token: str, *, audience: str | None = None) -> dict[str, Any]:
        """A token's verified claims (signature, `typ`, `iss`, `exp`, `nbf`; `aud` when given) and that it is
        still live; `InvalidToken` otherwise."""
        header = AccessTokens.header(token)
        key = self.keys.public_key(header["kid"])
        if key is None:
            raise InvalidToken("the token is signed with an unknown key")
        claims = self.tokens.decode(token, key, audience=audience)
        self.tokens.check_live(claims)
        return claims

    def issue(
        self,
        *,
        client_id: str,
        subject: str,
        scopes: Iterable[str],
        resource: str,
        grant: str,
        family_id: str | None,
        refresh: bool,
        groups: Sequence[str] = (),
        subject_kind: str = "user",
        actor: dict[str, Any] | None = None,
        parent_jti: str | None = None,
        expires_at: int | None = None,
        event: AuthEventKind = "issuance",
    ) -> dict[str, Any]:
        """Mint an access token (and a refresh token of the same family) and say so; the token response body
        (RFC 6749 §5.1)."""
        scope_set = frozenset(scopes)
        minted = self.tokens.mint(
            subject=subject,
            subject_kind=subject_kind,
            client_id=client_id,
            scopes=scope_set,
            audience=resource,
            ttl=self.auth.access_token_ttl,
            groups=groups,
            actor=actor,
            grant=grant,
            family_id=family_id,
            parent_jti=parent_jti,
            expires_at=expires_at,
        )
        body: dict[str, Any] = {
            "access_token": minted.token,
            "token_type": "Bearer",
            "expires_in": max(0, minted.expires_at - int(time.time())),
            "scope": " ".join(sorted(scope_set)),
        }
        if refresh and family_id is not None:
            body["refresh_token"] = self.families.new_refresh_token(
                family_id=family_id,
                client_id=client_id,
                subject=subject,
                scope=body["scope"],
                resource=resource,
                ttl=self.auth.refresh_token_ttl,
            )
        self.events.emit(event, "success", subject=subject, client_id=client_id, token_id=minted.jti, reason=grant)
        return body

    def revoked(self, jtis: Iterable[str], *, subject: str | None, client_id: str | None, reason: str) -> None:
        for jti in jtis:
            self.events.emit("revocation", "success", subject=subject, client_id=client_id, token_id=jti, reason=reason)
