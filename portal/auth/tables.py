"""The authorization server's tables (listed in `portal.db.TABLE_MODULES`).

Times are Unix seconds (integers), as in the JWTs they mirror. Secrets are never
stored as given: authorization codes, refresh tokens and client secrets are kept as
SHA-256 digests (they are long random strings, so a digest is enough), passwords as
argon2id hashes, and signing keys encrypted with the master key (AES-GCM).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Connection, Index, LargeBinary, Text, update
from sqlmodel import Field, Session, SQLModel

from portal.db import insert_for

__all__ = [
    "AccessTokenRow",
    "AuthCodeRow",
    "AuthRevisionRow",
    "ClientRow",
    "RefreshTokenRow",
    "SigningKeyRow",
    "UserRow",
    "bump_revision",
    "seed_rows",
]


class UserRow(SQLModel, table=True):
    """A person who can log in: a local user, or one first seen through an OIDC provider."""

    __tablename__ = "auth_users"

    subject: str = Field(primary_key=True, max_length=255)
    """`sub` of their tokens: the local user name, or `{provider}:{sub at the provider}`."""
    source: str = Field(max_length=64)
    """`local`, or `oidc:{provider}`."""
    password_hash: str | None = Field(default=None, sa_type=Text)
    """argon2id hash (PHC string) of a local user's password; none for OIDC users."""
    groups: list[str] = Field(default_factory=list, sa_type=JSON)
    display_name: str | None = Field(default=None, sa_type=Text)
    email: str | None = Field(default=None, sa_type=Text)
    blocked: bool = False
    created_at: int = Field(sa_type=BigInteger)
    last_login_at: int | None = Field(default=None, sa_type=BigInteger)


class ClientRow(SQLModel, table=True):
    """An OAuth client the portal has seen: registered (RFC 7591), by metadata document, or configured."""

    __tablename__ = "auth_clients"

    client_id: str = Field(primary_key=True, sa_type=Text)
    kind: str = Field(max_length=16)
    """`dynamic` (RFC 7591), `metadata` (Client ID Metadata Document), `config` (`[[auth.clients]]`)
    or `internal` (tokens minted by the CLI)."""
    name: str | None = Field(default=None, sa_type=Text)
    redirect_uris: list[str] = Field(default_factory=list, sa_type=JSON)
    grant_types: list[str] = Field(default_factory=list, sa_type=JSON)
    token_endpoint_auth_method: str = Field(default="none", max_length=32)
    secret_hash: str | None = Field(default=None, max_length=64)
    """SHA-256 (hex) of the client secret of a registered confidential client."""
    scope: str | None = Field(default=None, sa_type=Text)
    metadata_json: dict[str, object] = Field(default_factory=dict, sa_type=JSON)
    """The metadata the client registered or published (never its secret)."""
    created_at: int = Field(sa_type=BigInteger)
    last_seen_at: int | None = Field(default=None, sa_type=BigInteger)
    revoked_at: int | None = Field(default=None, sa_type=BigInteger)


class AuthCodeRow(SQLModel, table=True):
    """An authorization code (RFC 6749 §4.1.2): single use, short-lived, bound to client and redirect."""

    __tablename__ = "auth_codes"

    code_hash: str = Field(primary_key=True, max_length=64)
    family_id: str = Field(max_length=64)
    """Ties the code to every token issued from it, so that a replay can revoke them (RFC 6749 §4.1.2)."""
    client_id: str = Field(sa_type=Text)
    subject: str = Field(max_length=255)
    redirect_uri: str = Field(sa_type=Text)
    scope: str = Field(default="", sa_type=Text)
    resource: str = Field(sa_type=Text)
    code_challenge: str = Field(max_length=128)
    code_challenge_method: str = Field(max_length=8)
    created_at: int = Field(sa_type=BigInteger)
    expires_at: int = Field(sa_type=BigInteger)
    used_at: int | None = Field(default=None, sa_type=BigInteger)


class AccessTokenRow(SQLModel, table=True):
    """Every access token issued, by its `jti`: what `portal tokens list|revoke` and verification read."""

    __tablename__ = "auth_access_tokens"
    __table_args__ = (
        Index("ix_auth_access_tokens_family", "family_id"),
        Index("ix_auth_access_tokens_subject", "subject"),
        Index("ix_auth_access_tokens_parent", "parent_jti"),
    )

    jti: str = Field(primary_key=True, max_length=64)
    subject: str = Field(max_length=255)
    subject_kind: str = Field(max_length=8)
    """`user` (the subject must be a known, unblocked user) or `client` (`client_credentials`)."""
    client_id: str = Field(sa_type=Text)
    audience: str = Field(sa_type=Text)
    scope: str = Field(default="", sa_type=Text)
    kid: str = Field(max_length=64)
    grant: str = Field(max_length=32)
    """How it was issued: `authorization_code`, `refresh_token`, `client_credentials`, `token_exchange`, `mint`."""
    family_id: str | None = Field(default=None, max_length=64)
    parent_jti: str | None = Field(default=None, max_length=64)
    """For an exchanged token: the token it was exchanged from; revoking that one revokes this one."""
    issued_at: int = Field(sa_type=BigInteger)
    expires_at: int = Field(sa_type=BigInteger)
    revoked_at: int | None = Field(default=None, sa_type=BigInteger)


class RefreshTokenRow(SQLModel, table=True):
    """A refresh token; rotated on every use, and a reuse revokes its whole family (RFC 9700 §4.14.2)."""

    __tablename__ = "auth_refresh_tokens"
    __table_args__ = (Index("ix_auth_refresh_tokens_family", "family_id"),)

    token_hash: str = Field(primary_key=True, max_length=64)
    family_id: str = Field(max_length=64)
    client_id: str = Field(sa_type=Text)
    subject: str = Field(max_length=255)
    scope: str = Field(default="", sa_type=Text)
    resource: str = Field(sa_type=Text)
    issued_at: int = Field(sa_type=BigInteger)
    expires_at: int = Field(sa_type=BigInteger)
    rotated_at: int | None = Field(default=None, sa_type=BigInteger)
    revoked_at: int | None = Field(default=None, sa_type=BigInteger)


class SigningKeyRow(SQLModel, table=True):
    """An Ed25519 signing key; the private half encrypted with the master key (AES-GCM)."""

    __tablename__ = "auth_signing_keys"

    kid: str = Field(primary_key=True, max_length=64)
    created_at: int = Field(sa_type=BigInteger)
    private_key: bytes = Field(sa_type=LargeBinary)
    """nonce (12 bytes) || AES-GCM ciphertext of the raw 32-byte private key, `kid` as associated data."""
    public_key: bytes = Field(sa_type=LargeBinary)
    """The raw 32-byte public key."""
    retired_at: int | None = Field(default=None, sa_type=BigInteger)
    """When `portal keys rotate` replaced it; it still verifies tokens until `drop_after`."""
    drop_after: int | None = Field(default=None, sa_type=BigInteger)


class AuthRevisionRow(SQLModel, table=True):
    """One row (`id` 1): a counter bumped in the same transaction as every change that can take
    access away (a token, its family or its parent revoked, a user blocked or unblocked, a client
    revoked). Verification caches its database verdict per token with the revision it was computed
    at, and reuses it only while the revision is unchanged (see `portal.auth.tokens.Liveness`)."""

    __tablename__ = "auth_revision"

    id: int = Field(primary_key=True)
    value: int = Field(default=0, sa_type=BigInteger)


REVISION_TABLE: Any = getattr(AuthRevisionRow, "__table__")  # noqa: B009


def seed_rows(connection: Connection) -> None:
    """The revision row."""
    statement = insert_for(connection.dialect.name, REVISION_TABLE).values(id=1, value=0)
    connection.execute(statement.on_conflict_do_nothing(index_elements=["id"]))


def bump_revision(session: Session) -> None:
    """Advance the revision inside `session`'s transaction (commit it with the change it covers)."""
    session.exec(update(REVISION_TABLE).where(REVISION_TABLE.c.id == 1).values(value=REVISION_TABLE.c.value + 1))
