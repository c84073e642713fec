"""Authorization codes and refresh tokens, grouped into grant families.

One authorization (a code, or a `client_credentials` grant) starts a family; every
access and refresh token issued from it carries the family id. That makes the two
replay defences one operation each:

- a code used twice revokes everything issued from it (RFC 6749 §4.1.2, RFC 9700 §4.2.4);
- a refresh token used after it was rotated revokes the whole family (RFC 9700 §4.14.2).

Codes and refresh tokens are stored as SHA-256 digests, and each is claimed with one
conditional UPDATE, so two concurrent uses cannot both succeed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from portal.auth.crypto import digest, random_token
from portal.auth.tables import AccessTokenRow, AuthCodeRow, RefreshTokenRow
from portal.auth.tokens import AccessTokens

__all__ = ["CodeClaim", "Families", "RefreshClaim"]


@dataclass(frozen=True)
class CodeClaim:
    """The outcome of presenting a code: the code's row when it was fresh, else why not."""

    row: AuthCodeRow | None
    replayed: bool = False
    revoked_tokens: tuple[str, ...] = ()


@dataclass(frozen=True)
class RefreshClaim:
    row: RefreshTokenRow | None
    reused: bool = False
    revoked_tokens: tuple[str, ...] = ()


class Families:
    """Codes, refresh tokens and their families, in one database."""

    def __init__(self, engine: Engine, tokens: AccessTokens) -> None:
        self._engine = engine
        self._tokens = tokens

    # Authorization codes

    def store_code(
        self,
        code: str,
        *,
        ttl: int,
        client_id: str,
        subject: str,
        redirect_uri: str,
        scope: str,
        resource: str,
        code_challenge: str,
        code_challenge_method: str,
    ) -> None:
        """Store a new code (RFC 6749 §4.1.2: bound to its client, redirect URI and PKCE challenge)."""
        now = int(time.time())
        row = AuthCodeRow(
            code_hash=digest(code),
            family_id=random_token(12),
            client_id=client_id,
            subject=subject,
            redirect_uri=redirect_uri,
            scope=scope,
            resource=resource,
            code_challenge=code_challenge,
            code_challenge_method=code_challenge_method,
            created_at=now,
            expires_at=now + ttl,
        )
        with Session(self._engine) as session:
            session.add(row)
            session.commit()

    def claim_code(self, code: str) -> CodeClaim:
        """Use a code, once. A second use revokes every token issued from it."""
        key = digest(code)
        now = int(time.time())
        with Session(self._engine) as session:
            claimed = session.exec(
                update(AuthCodeRow)
                .where(col(AuthCodeRow.code_hash) == key, col(AuthCodeRow.used_at).is_(None))
                .values(used_at=now)
            )
            row = session.get(AuthCodeRow, key)
            if row is None:
                return CodeClaim(None)
            if not claimed.rowcount:
                revoked = self._revoke_family(session, row.family_id, now)
                session.commit()
                return CodeClaim(None, replayed=True, revoked_tokens=tuple(revoked))
            session.commit()
            session.refresh(row)
        if row.expires_at < now:
            return CodeClaim(None)
        return CodeClaim(row)

    # Refresh tokens

    def new_refresh_token(
        self, *, family_id: str, client_id: str, subject: str, scope: str, resource: str, ttl: int
    ) -> str:
        token = random_token(32)
        now = int(time.time())
        row = RefreshTokenRow(
            token_hash=digest(token),
            family_id=family_id,
            client_id=client_id,
            subject=subject,
            scope=scope,
            resource=resource,
            issued_at=now,
            expires_at=now + ttl,
        )
        with Session(self._engine) as session:
            session.add(row)
            session.commit()
        return token

    def find_refresh_token(self, token: str) -> RefreshTokenRow | None:
        with Session(self._engine) as session:
            return session.get(RefreshTokenRow, digest(token))

    def claim_refresh_token(self, token: str) -> RefreshClaim:
        """Rotate a refresh token: it works once; presenting it again revokes its family."""
        key = digest(token)
        now = int(time.time())
        with Session(self._engine) as session:
            claimed = session.exec(
                update(RefreshTokenRow)
                .where(
                    col(RefreshTokenRow.token_hash) == key,
                    col(RefreshTokenRow.rotated_at).is_(None),
                    col(RefreshTokenRow.revoked_at).is_(None),
                    col(RefreshTokenRow.expires_at) >= now,
                )
                .values(rotated_at=now)
            )
            row = session.get(RefreshTokenRow, key)
            if row is None:
                return RefreshClaim(None)
            if not claimed.rowcount:
                if row.rotated_at is not None:
                    revoked = self._revoke_family(session, row.family_id, now)
                    session.commit()
                    return RefreshClaim(None, reused=True, revoked_tokens=tuple(revoked))
                return RefreshClaim(None)
            session.commit()
            session.refresh(row)
        return RefreshClaim(row)

    def revoke_family(self, family_id: str) -> list[str]:
        """Revoke every refresh and access token of a family; returns the access token ids revoked."""
        with Session(self._engine) as session:
            revoked = self._revoke_family(session, family_id, int(time.time()))
            session.commit()
        return revoked

    def revoke_subject(self, subject: str, on_each: Callable[[str], None] | None = None) -> int:
        """Revoke every token of a user (or of a client's own `client_credentials` tokens)."""
        now = int(time.time())
        with Session(self._engine) as session:
            families = set(
                session.exec(
                    select(RefreshTokenRow.family_id).where(
                        col(RefreshTokenRow.subject) == subject, col(RefreshTokenRow.revoked_at).is_(None)
                    )
                )
            )
            for family in families:
                self._revoke_family(session, family, now)
            jtis = list(
                session.exec(
                    select(AccessTokenRow.jti).where(
                        col(AccessTokenRow.subject) == subject, col(AccessTokenRow.revoked_at).is_(None)
                    )
                )
            )
            session.commit()
        count = 0
        for jti in jtis:
            count += self._tokens.revoke(jti)
            if on_each is not None:
                on_each(jti)
        return count

    def _revoke_family(self, session: Session, family_id: str, now: int) -> list[str]:
        session.exec(
            update(RefreshTokenRow)
            .where(col(RefreshTokenRow.family_id) == family_id, col(RefreshTokenRow.revoked_at).is_(None))
            .values(revoked_at=now)
        )
        return self._tokens.revoke_family(session, family_id, now)
