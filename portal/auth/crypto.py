"""The master key, and what is derived from it.

The master key (32 bytes) encrypts signing keys at rest (AES-256-GCM) and, through
HKDF, keys the HMAC that signs session cookies. It comes from `[auth] master_key`
(a secret reference); when that is unset, from a key file next to `portal.toml`,
created on first use with mode 0600 and a warning (fine for one host, not for
replicas, which must share one key).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from portal.auth.errors import KeyUnavailable
from portal.errors import ConfigError
from portal.settings import Settings, resolve_secret

__all__ = [
    "KEY_FILE_NAME",
    "MasterKey",
    "Signer",
    "b64url",
    "b64url_decode",
    "digest",
    "load_master_key",
    "random_token",
]

logger = logging.getLogger("portal.auth")

KEY_FILE_NAME = "portal-master.key"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def random_token(nbytes: int = 32) -> str:
    """A URL-safe random string of `nbytes` bytes of entropy (codes, refresh tokens, ids)."""
    return secrets.token_urlsafe(nbytes)


def digest(secret: str) -> str:
    """SHA-256 (hex) of a high-entropy secret, which is how codes, refresh tokens and client secrets are stored."""
    return hashlib.sha256(secret.encode()).hexdigest()


class MasterKey:
    """AES-GCM encryption at rest and HMAC signing, from one 32-byte key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ConfigError("the master key must be 32 bytes")
        self._aead = AESGCM(key)
        self._key = key

    def derive(self, purpose: str) -> bytes:
        """A 32-byte key for one purpose (HKDF-SHA256, RFC 5869), so no key serves two uses."""
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=f"portal {purpose}".encode()).derive(
            self._key
        )

    def encrypt(self, plaintext: bytes, associated: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, plaintext, associated)

    def decrypt(self, blob: bytes, associated: bytes) -> bytes:
        try:
            return self._aead.decrypt(blob[:12], blob[12:], associated)
        except InvalidTag:
            raise KeyUnavailable(
                "a signing key cannot be decrypted: the master key differs from the one that encrypted it"
            ) from None


class Signer:
    """Signed, expiring JSON values (session and login-state cookies): `payload.mac`, HMAC-SHA256."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def sign(self, value: dict[str, Any]) -> str:
        payload = b64url(json.dumps(value, separators=(",", ":"), sort_keys=True).encode())
        mac = hmac.new(self._key, payload.encode(), hashlib.sha256).digest()
        return f"{payload}.{b64url(mac)}"

    def unsign(self, text: str | None) -> dict[str, Any] | None:
        """The value, or None when it is missing, tampered with or not a JSON object."""
        if not text or text.count(".") != 1:
            return None
        payload, mac = text.split(".")
        expected = hmac.new(self._key, payload.encode(), hashlib.sha256).digest()
        try:
            if not hmac.compare_digest(expected, b64url_decode(mac)):
                return None
            value = json.loads(b64url_decode(payload))
        except (ValueError, binascii.Error):
            return None
        return value if isinstance(value, dict) else None


def _parse_key(text: str, where: str) -> bytes:
    text = text.strip()
    candidates: list[bytes] = []
    with contextlib.suppress(ValueError):
        candidates.append(bytes.fromhex(text))
    for decode in (base64.b64decode, b64url_decode):
        with contextlib.suppress(ValueError, binascii.Error):
            candidates.append(decode(text + "=" * (-len(text) % 4)))
    for key in candidates:
        if len(key) == 32:
            return key
    raise ConfigError(
        f"{where} must hold 32 random bytes, base64 or hex "
        '(e.g. python -c "import secrets; print(secrets.token_hex(32))")'
    )


def load_master_key(settings: Settings) -> MasterKey:
    """The master key of `settings`: the configured reference, else the data folder's key file."""
    reference = settings.auth.master_key
    if reference:
        return MasterKey(_parse_key(resolve_secret(reference, base_dir=settings.base_dir), "[auth] master_key"))
    path = Path(settings.base_dir) / KEY_FILE_NAME
    if path.exists():
        return MasterKey(_parse_key(path.read_text(), str(path)))
    key = secrets.token_bytes(32)
    try:
        # O_EXCL: when two processes start at once, one creates the file and the other reads it.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return MasterKey(_parse_key(path.read_text(), str(path)))
    with os.fdopen(fd, "w") as file:
        file.write(key.hex() + "\n")
    logger.warning(
        "[auth] master_key is not set: created %s (mode 0600). Keep it safe and back it up; "
        "replicas sharing a database need the same key, set through [auth] master_key.",
        path,
    )
    return MasterKey(key)
