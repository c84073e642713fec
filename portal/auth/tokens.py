"""Access tokens: RFC 9068 JWTs, EdDSA, recorded by `jti`, checked on every use.

Signing and decoding are here; so are the checks that need the database (the token
is known and not revoked, its user is not blocked, its client not revoked), which
`check_live` runs on every verification: a blocked user or a revoked client loses
access on the next request, not when the token expires.

Both halves are cached without weakening that. The claims of a token string (signature,
header and claim checks, which cannot change) are kept until the token expires; `exp`, `nbf`,
`iat` and the audience are checked again on every hit. The database verdict of a `jti` is kept
with the value of the revision counter (`auth_revision`, see `portal.auth.tables`) it was
computed at: every change that can take access away bumps the counter in the same transaction,
and each verification reads the counter (SQLite: one primary-key read on a dedicated
connection; PostgreSQL: in a worker thread), reusing the verdict only while it is unchanged.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import bindparam, update
from sqlalchemy import select as sa_select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, SQLModel, col, select

from portal.auth.crypto import random_token
from portal.auth.errors import InvalidToken
from portal.auth.keys import KeyRing
from portal.auth.principal import Principal
from portal.auth.scopes import parse_scope
from portal.auth.tables import REVISION_TABLE, AccessTokenRow, ClientRow, UserRow, bump_revision

__all__ = ["LEEWAY_SECONDS", "TOKEN_TYPE", "AccessTokens", "MintedToken"]

TOKEN_TYPE = "at+jwt"
"""RFC 9068 §2.1: the `typ` header of a JWT access token."""
LEEWAY_SECONDS = 30
"""Clock skew tolerated on `exp`, `nbf` and `iat`."""
MAX_DELEGATION_DEPTH = 8
"""How many exchanges deep a token may be; each hop is checked on every use."""
_REQUIRED = ["exp", "iat", "nbf", "iss", "aud", "sub", "jti", "client_id"]
CACHE_SIZE = 10_000
"""How many tokens' claims, and how many `jti`s' database verdicts, one process keeps."""
REVISION_READ_TIMEOUT = 0.05
"""Seconds the event loop may wait for SQLite's lock on the revision read before a worker thread takes over."""


_TOKENS, _USERS, _CLIENTS = (SQLModel.metadata.tables[t.__tablename__] for t in (AccessTokenRow, UserRow, ClientRow))
_LIVE_QUERY = (
    sa_select(
        _TOKENS.c.revoked_at, _TOKENS.c.subject_kind, _TOKENS.c.parent_jti, _USERS.c.blocked, _CLIENTS.c.revoked_at
    )
    .select_from(
        _TOKENS.outerjoin(_USERS, _USERS.c.subject == _TOKENS.c.subject).outerjoin(
            _CLIENTS, _CLIENTS.c.client_id == _TOKENS.c.client_id
        )
    )
    .where(_TOKENS.c.jti == bindparam("jti"))
)
"""One row per check: the token's state, its user's and its client's (built once; see `check_live`)."""


_REVISION_QUERY = sa_select(REVISION_TABLE.c.value).where(REVISION_TABLE.c.id == 1)
_REVISION_SQL = "SELECT value FROM auth_revision WHERE id = 1"


class Revisions:
    """Reads the revision counter: on SQLite files through a dedicated connection per thread."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        url = engine.url
        database = url.database or ""
        local = engine.dialect.name == "sqlite" and not url.query and database not in ("", ":memory:")
        self._path = database if local and not database.startswith("file:") else None
        self._local = threading.local()

    def read_local(self) -> int | None:
        """The counter without leaving the thread (SQLite files only); None when it cannot be read so."""
        if self._path is None:
            return None
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        try:
            if connection is None:
                # Autocommit: every read is its own transaction, so it sees every commit of
                # every process (WAL); the short timeout keeps a locked file off the event loop.
                connection = sqlite3.connect(self._path, timeout=REVISION_READ_TIMEOUT, isolation_level=None)
                connection.execute("PRAGMA query_only=ON")
                self._local.connection = connection
            row = connection.execute(_REVISION_SQL).fetchone()
        except sqlite3.Error:
            return None
        return int(row[0]) if row is not None else None

    def read(self) -> int | None:
        """The counter through the engine (blocking); None when there is none (no caching then)."""
        try:
            with self._engine.connect() as connection:
                value = connection.execute(_REVISION_QUERY).scalar()
        except DBAPIError:
            return None
        return int(value) if value is not None else None


@dataclass(frozen=True)
class MintedToken:
    token: str
    jti: str
    expires_at: int
    scopes: frozenset[str]


def _invalid(description: str) -> InvalidToken:
    return InvalidToken(description)


class AccessTokens:
    """Issue, decode, check and revoke the access tokens of one portal."""

    def __init__(self, engine: Engine, keys: KeyRing, *, issuer: str) -> None:
        self._engine = engine
        self._keys = keys
        self.issuer = issuer
        self.revisions = Revisions(engine)
        self._claims: dict[str, dict[str, Any]] = {}
        """Token string -> its verified claims (see `cached_claims`)."""
        self._live: dict[str, tuple[int, int]] = {}
        """`jti` -> (revision its database check passed at, `exp`)."""
        self._cache_lock = threading.Lock()

    # Issuing

    def mint(
        self,
        *,
        subject: str,
        client_id: str,
        scopes: Iterable[str],
        audience: str,
        ttl: int,
        groups: Sequence[str] = (),
        actor: dict[str, Any] | None = None,
        grant: str,
        subject_kind: str = "user",
        family_id: str | None = None,
        parent_jti: str | None = None,
        expires_at: int | None = None,
    ) -> MintedToken:
        """Sign and record one access token (RFC 9068 §2.2 claims)."""
        key = self._keys.current()
        now = int(time.time())
        exp = min(now + ttl, expires_at) if expires_at is not None else now + ttl
        jti = random_token(18)
        scope_set = frozenset(scopes)
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": subject,
            "aud": audience,
            "client_id": client_id,
            "scope": " ".join(sorted(scope_set)),
            "iat": now,
            "nbf": now,
            "exp": exp,
            "jti": jti,
        }
        if groups:
            claims["groups"] = list(groups)
        if actor:
            claims["act"] = actor  # RFC 8693 §4.1
        token = jwt.encode(claims, key.private, algorithm="EdDSA", headers={"typ": TOKEN_TYPE, "kid": key.kid})
        row = AccessTokenRow(
            jti=jti,
            subject=subject,
            subject_kind=subject_kind,
            client_id=client_id,
            audience=audience,
            scope=claims["scope"],
            kid=key.kid,
            grant=grant,
            family_id=family_id,
            parent_jti=parent_jti,
            issued_at=now,
            expires_at=exp,
        )
        with Session(self._engine) as session:
            session.add(row)
            session.commit()
        return MintedToken(token, jti, exp, scope_set)

    # Verifying

    @staticmethod
    def header(token: str) -> dict[str, Any]:
        """The JOSE header, checked before any key is looked up (RFC 9068 §4, RFC 8725 §3.1)."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _invalid("the token is not a well-formed JWT") from None
        if header.get("alg") != "EdDSA":
            # RFC 8725 §3.1: only the algorithm the portal signs with; never `none`, never HMAC.
            raise _invalid("the token's algorithm is not accepted")
        if header.get("typ", "").lower() not in (TOKEN_TYPE, "application/" + TOKEN_TYPE):
            # RFC 9068 §4: the resource server MUST check `typ` is at+jwt.
            raise _invalid("the token is not an access token (typ must be at+jwt)")
        if not isinstance(header.get("kid"), str):
            raise _invalid("the token names no signing key")
        return header

    def decode(self, token: str, key: Ed25519PublicKey, *, audience: str | None) -> dict[str, Any]:
        """Signature and claims (RFC 9068 §4); `audience=None` skips `aud` (introspection, exchange)."""
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=["EdDSA"],
                issuer=self.issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": _REQUIRED, "verify_aud": False},
            )
        except jwt.ExpiredSignatureError:
            raise _invalid("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise _invalid("the token is not valid yet") from None
        except jwt.InvalidIssuerError:
            raise _invalid("the token was not issued by this portal") from None
        except jwt.MissingRequiredClaimError as exc:
            raise _invalid(f"the token lacks the {exc.claim} claim") from None
        except jwt.InvalidSignatureError:
            raise _invalid("the token's signature does not verify") from None
        except jwt.PyJWTError:
            raise _invalid("the token is malformed") from None
        if claims["iat"] > time.time() + LEEWAY_SECONDS:
            raise _invalid("the token was issued in the future")
        # RFC 9068 §4 / RFC 8707: the audience must be exactly this endpoint.
        if audience is not None and claims["aud"] != audience:
            raise _invalid("the token is not for this endpoint")
        if not isinstance(claims["aud"], str) or not isinstance(claims.get("scope", ""), str):
            raise _invalid("the token is malformed")
        return claims

    # Caches

    def cached_claims(self, token: str, *, audience: str) -> dict[str, Any] | None:
        """The claims of a token verified before (times and audience checked again); None if unseen."""
        claims = self._claims.get(token)
        if claims is None:
            return None
        now = time.time()
        if claims["exp"] <= now - LEEWAY_SECONDS:
            self._claims.pop(token, None)
            raise _invalid("the token has expired")
        if claims["nbf"] > now + LEEWAY_SECONDS:
            raise _invalid("the token is not valid yet")
        if claims["iat"] > now + LEEWAY_SECONDS:
            raise _invalid("the token was issued in the future")
        if claims["aud"] != audience:
            raise _invalid("the token is not for this endpoint")
        return claims

    def remember_claims(self, token: str, claims: dict[str, Any]) -> None:
        """Keep the claims `decode` verified for `token` (until it expires)."""
        with self._cache_lock:
            if len(self._claims) >= CACHE_SIZE:
                now = time.time() - LEEWAY_SECONDS
                _evict(self._claims, lambda c: bool(c["exp"] <= now))
            self._claims[token] = claims

    def _remember_live(self, claims: dict[str, Any], revision: int) -> None:
        with self._cache_lock:
            if len(self._live) >= CACHE_SIZE:
                now = time.time() - LEEWAY_SECONDS
                _evict(self._live, lambda entry: entry[1] <= now)
            self._live[str(claims["jti"])] = (revision, int(claims["exp"]))

    def _live_at(self, jti: str, revision: int) -> bool:
        entry = self._live.get(jti)
        return entry is not None and entry[0] == revision

    async def ensure_live(self, claims: dict[str, Any]) -> None:
        """`check_live`, skipped while nothing that can take access away changed since it last passed."""
        revision = self.revisions.read_local()
        if revision is None:
            await asyncio.to_thread(self.check_live_cached, claims)
        elif not self._live_at(str(claims["jti"]), revision):
            await asyncio.to_thread(self._check_at, claims, revision)

    def check_live_cached(self, claims: dict[str, Any]) -> None:
        """`check_live` unless it passed at the current revision (read first, through the engine)."""
        revision = self.revisions.read()
        if revision is not None and self._live_at(str(claims["jti"]), revision):
            return
        self._check_at(claims, revision)

    def _check_at(self, claims: dict[str, Any], revision: int | None) -> None:
        # `revision` was read before the check: a change committed in between bumps it past
        # `revision`, so the verdict recorded here is re-checked on the next request.
        self.check_live(claims)
        if revision is not None:
            self._remember_live(claims, revision)

    def check_live(self, claims: dict[str, Any]) -> None:
        """The database side of verification: known, unrevoked, user unblocked, client unrevoked."""
        jti = claims["jti"]
        with self._engine.connect() as connection:
            for _ in range(MAX_DELEGATION_DEPTH):
                found = connection.execute(_LIVE_QUERY, {"jti": jti}).first()
                if found is None:
                    raise _invalid("the token is not known to this portal")
                revoked_at, subject_kind, parent_jti, blocked, client_revoked = found
                if revoked_at is not None:
                    raise _invalid("the token has been revoked")
                if subject_kind == "user" and (blocked is None or blocked):
                    raise _invalid("the token's user is blocked or unknown")
                if client_revoked is not None:
                    raise _invalid("the token's client has been revoked")
                if parent_jti is None:
                    return
                # An exchanged token lives only as long as the one it was exchanged from.
                jti = parent_jti
        raise _invalid("the token is delegated too many times")

    @staticmethod
    def principal(claims: dict[str, Any]) -> Principal:
        known = {"iss", "sub", "aud", "client_id", "scope", "iat", "nbf", "exp", "jti", "groups", "act"}
        groups = claims.get("groups") or []
        actor = claims.get("act")
        return Principal(
            subject=str(claims["sub"]),
            client_id=str(claims["client_id"]),
            scopes=parse_scope(claims.get("scope")),
            token_id=str(claims["jti"]),
            audience=str(claims["aud"]),
            expires_at=int(claims["exp"]),
            groups=tuple(str(g) for g in groups) if isinstance(groups, list) else (),
            actor=actor if isinstance(actor, dict) else None,
            extra={k: v for k, v in claims.items() if k not in known},
        )

    # Revoking and listing

    def get(self, jti: str) -> AccessTokenRow | None:
        with Session(self._engine) as session:
            return session.get(AccessTokenRow, jti)

    def revoke(self, jti: str) -> int:
        """Revoke a token and every token exchanged from it; returns how many were live."""
        now = int(time.time())
        count = 0
        frontier = [jti]
        with Session(self._engine) as session:
            while frontier:
                result = session.exec(
                    update(AccessTokenRow)
                    .where(col(AccessTokenRow.jti).in_(frontier), col(AccessTokenRow.revoked_at).is_(None))
                    .values(revoked_at=now)
                )
                count += int(result.rowcount or 0)
                frontier = list(
                    session.exec(select(AccessTokenRow.jti).where(col(AccessTokenRow.parent_jti).in_(frontier)))
                )
            bump_revision(session)
            session.commit()
        return count

    def revoke_family(self, session: Session, family_id: str, now: int) -> list[str]:
        """Revoke (in `session`) the access tokens of one grant family; returns their ids."""
        jtis = list(
            session.exec(
                select(AccessTokenRow.jti).where(
                    col(AccessTokenRow.family_id) == family_id, col(AccessTokenRow.revoked_at).is_(None)
                )
            )
        )
        if jtis:
            session.exec(update(AccessTokenRow).where(col(AccessTokenRow.jti).in_(jtis)).values(revoked_at=now))
            bump_revision(session)
        return jtis

    def listing(self, *, subject: str | None = None, include_inactive: bool = False) -> list[AccessTokenRow]:
        """Tokens, newest first; by default only those still usable (unexpired, unrevoked)."""
        query = select(AccessTokenRow).order_by(col(AccessTokenRow.issued_at).desc())
        if subject is not None:
            query = query.where(col(AccessTokenRow.subject) == subject)
        if not include_inactive:
            query = query.where(
                col(AccessTokenRow.revoked_at).is_(None), col(AccessTokenRow.expires_at) > int(time.time())
            )
        with Session(self._engine) as session:
            return list(session.exec(query))


def _evict(cache: dict[str, Any], expired: Any) -> None:
    """Drop the expired entries of a full cache, then the oldest until a tenth is free."""
    for key in [key for key, value in cache.items() if expired(value)]:
        del cache[key]
    excess = len(cache) - CACHE_SIZE * 9 // 10
    if excess > 0:
        for key in list(cache)[:excess]:
            del cache[key]
