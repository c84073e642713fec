"""Signing keys: Ed25519, encrypted at rest, rotated by `portal keys rotate`.

The current key signs; retired keys stay published at `/oauth/jwks.json` and keep
verifying until every token they can have signed has expired (`drop_after`), then
they are dropped. Public keys are cached in-process by `kid` (a key never changes
under its `kid`, an RFC 7638 thumbprint); an unknown `kid` makes the ring re-read
the database, at most once a second, so that a key rotated by the CLI or another
replica is picked up without letting random `kid`s hammer the database.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, delete, select

from portal.auth.crypto import MasterKey, b64url
from portal.auth.tables import SigningKeyRow

__all__ = ["KeyRing", "SigningKey", "jwk_of", "thumbprint"]

CURRENT_REFRESH_SECONDS = 10.0
"""How long a process signs with the key it last read before looking for a newer one."""
MISS_RELOAD_SECONDS = 1.0
"""Least time between two database reads caused by unknown `kid`s."""


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def thumbprint(public: bytes) -> str:
    """RFC 7638 JWK thumbprint of an Ed25519 public key (RFC 8037 §2 members, in order)."""
    members = {"crv": "Ed25519", "kty": "OKP", "x": b64url(public)}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return b64url(hashlib.sha256(canonical).digest())


def jwk_of(kid: str, public: bytes) -> dict[str, str]:
    """The public JWK (RFC 8037) of a signing key."""
    return {"kty": "OKP", "crv": "Ed25519", "x": b64url(public), "kid": kid, "use": "sig", "alg": "EdDSA"}


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private: Ed25519PrivateKey
    created_at: int


class KeyRing:
    """The signing keys of one database, as one process sees them."""

    def __init__(self, engine: Engine, master: MasterKey, *, retire_grace: int) -> None:
        self._engine = engine
        self._master = master
        self._retire_grace = retire_grace
        self._lock = threading.Lock()
        self._public: dict[str, Ed25519PublicKey] = {}
        self._current: SigningKey | None = None
        self._current_read = 0.0
        self._last_miss_reload = 0.0

    # Signing

    def current(self) -> SigningKey:
        """The key to sign with: the newest unretired one, created when there is none."""
        with self._lock:
            if self._current is not None and time.monotonic() - self._current_read < CURRENT_REFRESH_SECONDS:
                return self._current
        with Session(self._engine) as session:
            row = session.exec(
                select(SigningKeyRow)
                .where(col(SigningKeyRow.retired_at).is_(None))
                .order_by(col(SigningKeyRow.created_at).desc(), col(SigningKeyRow.kid))
            ).first()
        key = self._decrypt(row) if row is not None else self._create()
        with self._lock:
            self._current = key
            self._current_read = time.monotonic()
            self._public[key.kid] = key.private.public_key()
        return key

    def rotate(self) -> str:
        """Make a new current key; the old ones are retired and dropped once their tokens expired."""
        self.prune()
        now = int(time.time())
        with Session(self._engine) as session:
            session.exec(
                update(SigningKeyRow)
                .where(col(SigningKeyRow.retired_at).is_(None))
                .values(retired_at=now, drop_after=now + self._retire_grace)
            )
            session.commit()
        key = self._create()
        with self._lock:
            self._current = key
            self._current_read = time.monotonic()
        return key.kid

    def prune(self) -> int:
        """Drop retired keys past `drop_after`; returns how many."""
        with Session(self._engine) as session:
            result = session.exec(
                delete(SigningKeyRow).where(
                    col(SigningKeyRow.drop_after).is_not(None), col(SigningKeyRow.drop_after) < int(time.time())
                )
            )
            session.commit()
        return int(result.rowcount or 0)

    # Verifying

    def cached_public_key(self, kid: str) -> Ed25519PublicKey | None:
        """The public key of `kid` if this process knows it (no I/O)."""
        return self._public.get(kid)

    def public_key(self, kid: str) -> Ed25519PublicKey | None:
        """The public key of `kid`, re-reading the database (rate-limited) when it is not cached."""
        key = self._public.get(kid)
        if key is not None:
            return key
        with self._lock:
            if time.monotonic() - self._last_miss_reload < MISS_RELOAD_SECONDS:
                return None
            self._last_miss_reload = time.monotonic()
        self.published()
        return self._public.get(kid)

    def published(self) -> list[tuple[str, bytes, SigningKeyRow]]:
        """Every key that still verifies, newest first (and caches their public halves)."""
        now = int(time.time())
        with Session(self._engine) as session:
            rows = session.exec(select(SigningKeyRow).order_by(col(SigningKeyRow.created_at).desc())).all()
        live = [row for row in rows if row.drop_after is None or row.drop_after >= now]
        with self._lock:
            for row in live:
                if row.kid not in self._public:
                    self._public[row.kid] = Ed25519PublicKey.from_public_bytes(row.public_key)
        return [(row.kid, row.public_key, row) for row in live]

    def jwks(self) -> dict[str, Any]:
        """The JWK Set of `/oauth/jwks.json` (RFC 7517 §5)."""
        return {"keys": [jwk_of(kid, public) for kid, public, _ in self.published()]}

    # Internals

    def _create(self) -> SigningKey:
        private = Ed25519PrivateKey.generate()
        public = _raw_public(private.public_key())
        kid = thumbprint(public)
        raw = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        now = int(time.time())
        with Session(self._engine) as session:
            session.add(
                SigningKeyRow(
                    kid=kid,
                    created_at=now,
                    private_key=self._master.encrypt(raw, kid.encode()),
                    public_key=public,
                )
            )
            session.commit()
        with self._lock:
            self._public[kid] = private.public_key()
        return SigningKey(kid, private, now)

    def _decrypt(self, row: SigningKeyRow) -> SigningKey:
        raw = self._master.decrypt(row.private_key, row.kid.encode())
        return SigningKey(row.kid, Ed25519PrivateKey.from_private_bytes(raw), row.created_at)
