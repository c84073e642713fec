"""OAuth clients: how the portal knows who is asking.

Four kinds, one `Client` model (authlib's `ClientMixin`):

- `metadata`: the client id is an https URL serving a Client ID Metadata Document
  (draft-ietf-oauth-client-id-metadata-document), fetched with `portal.outbound`;
- `dynamic`: registered through `/oauth/register` (RFC 7591), for older clients;
- `config`: confidential clients of `[[auth.clients]]`, for `client_credentials`;
- `internal`: the CLI's own client id, which `portal tokens mint` issues under.

Every client the portal has seen has a row, so that `portal clients list` shows it and
`portal clients revoke` can stop it: a revoked client is unknown from then on, and its
tokens stop working on their next use.
"""

from __future__ import annotations

import hmac
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from authlib.oauth2.rfc6749 import ClientMixin, InvalidClientError
from authlib.oauth2.rfc7591 import InvalidClientMetadataError
from authlib.oauth2.rfc7591.claims import ClientMetadataClaims
from joserfc.errors import JoseError
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from portal.auth.capabilities import intersect, unknown_scopes
from portal.auth.crypto import digest, random_token
from portal.auth.errors import oauth_text
from portal.auth.scopes import parse_scope
from portal.auth.settings import AuthSettings, ConfidentialClient
from portal.auth.tables import ClientRow, bump_revision
from portal.db import insert_for
from portal.errors import NotFound
from portal.outbound import OutboundFailed, OutboundRefused
from portal.settings import resolve_secret

__all__ = [
    "CLI_CLIENT_ID",
    "TOKEN_EXCHANGE",
    "Client",
    "Clients",
    "is_metadata_url",
    "valid_redirect_uri",
    "validate_client_metadata",
]

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
CLI_CLIENT_ID = "portal-cli"
"""The client id of tokens minted by `portal tokens mint`."""
METADATA_CACHE_SECONDS = 300.0
"""How long a fetched Client ID Metadata Document is used before it is fetched again."""
USER_GRANT_TYPES = frozenset({"authorization_code", "refresh_token"})
PUBLIC_AND_SECRET_METHODS = ("none", "client_secret_basic", "client_secret_post")
_SECRET_METHODS = ("client_secret_basic", "client_secret_post")
_FORBIDDEN_SCHEMES = {"javascript", "data", "file", "vbscript", "about", "blob", "ftp", "ws", "wss"}
_LOOPBACK_HOSTS = {"127.0.0.1", "::1", "localhost"}

Fetcher = Callable[[str], Awaitable[Any]]


def valid_redirect_uri(uri: str) -> bool:
    """https; http only to a loopback host (RFC 8252 §7.3); or a private-use scheme (RFC 8252 §7.1).
    Never a fragment (RFC 6749 §3.1.2)."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return False
    if parts.fragment or "#" in uri or parts.username or parts.password:
        return False
    if parts.scheme == "https":
        return bool(parts.hostname)
    if parts.scheme == "http":
        return parts.hostname in _LOOPBACK_HOSTS
    return bool(re.fullmatch(r"[a-z][a-z0-9+.-]*", parts.scheme)) and parts.scheme not in _FORBIDDEN_SCHEMES


def is_metadata_url(client_id: str, *, allow_loopback_http: bool = False) -> bool:
    """Whether `client_id` has the shape of a Client ID Metadata Document URL (https, with a path)."""
    try:
        parts = urlsplit(client_id)
    except ValueError:
        return False
    if parts.scheme == "http" and allow_loopback_http:
        secure = parts.hostname in _LOOPBACK_HOSTS
    else:
        secure = parts.scheme == "https"
    segments = parts.path.split("/")
    return (
        secure
        and bool(parts.hostname)
        and parts.path not in ("", "/")
        and not parts.fragment
        and not parts.username
        and not parts.password
        and "." not in segments
        and ".." not in segments
    )


def validate_client_metadata(data: Any, *, auth_methods: Iterable[str]) -> dict[str, Any]:
    """RFC 7591 §2 metadata, checked by authlib's claims and the portal's own rules; the registered claims."""
    if not isinstance(data, dict):
        raise InvalidClientMetadataError("client metadata must be a JSON object")
    options = ClientMetadataClaims.get_claims_options(
        {
            "response_types_supported": ["code"],
            "grant_types_supported": sorted(USER_GRANT_TYPES),
            "token_endpoint_auth_methods_supported": list(auth_methods),
        }
    )
    claims = ClientMetadataClaims(data, {}, options, None)
    try:
        claims.validate()
    except JoseError as exc:
        claim = getattr(exc, "claim", None)
        raise InvalidClientMetadataError(f"invalid {claim}" if claim else f"invalid metadata ({exc.error})") from None
    metadata = dict(claims.get_registered_claims())
    redirects = metadata.get("redirect_uris")
    if not isinstance(redirects, list) or not redirects or not all(isinstance(u, str) for u in redirects):
        raise InvalidClientMetadataError("redirect_uris is required")
    bad = [u for u in redirects if not valid_redirect_uri(u)]
    if bad:
        raise InvalidClientMetadataError("redirect_uris must be https, loopback http or a private-use scheme")
    if metadata.get("scope") and unknown_scopes(parse_scope(metadata["scope"])):
        raise InvalidClientMetadataError("scope names capabilities the portal does not have")
    metadata.setdefault("grant_types", ["authorization_code"])
    metadata.setdefault("token_endpoint_auth_method", "client_secret_basic")
    return metadata


@dataclass
class Client(ClientMixin):
    """One client, whatever its kind."""

    client_id: str
    kind: str
    name: str | None = None
    redirect_uris: tuple[str, ...] = ()
    grant_types: frozenset[str] = frozenset()
    auth_method: str = "none"
    secret_hash: str | None = None
    secret_reference: str | None = None
    base_dir: str = "."
    ceiling: frozenset[str] | None = None
    """The most this client may ever ask for (its registered `scope`, or `[[auth.clients]] scopes`)."""
    may_introspect: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def public(self) -> bool:
        return self.auth_method == "none"

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> None:
        # OAuth 2.1 §4.1.1: the portal always requires redirect_uri, so nothing is implied.
        return None

    def get_allowed_scope(self, scope: str | None) -> str:
        asked = parse_scope(scope)
        if self.ceiling is None:
            return " ".join(sorted(asked))
        return " ".join(sorted(intersect(asked, self.ceiling)))

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        # OAuth 2.1 §2.3.1: exact string comparison.
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        if self.secret_hash is not None:
            return hmac.compare_digest(self.secret_hash, digest(client_secret))
        if self.secret_reference is not None:
            expected = resolve_secret(self.secret_reference, base_dir=self.base_dir)
            return hmac.compare_digest(expected.encode(), client_secret.encode())
        return False

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if endpoint == "introspection" and not self.may_introspect:
            return False
        if self.public:
            return method == "none"
        # A confidential client may send its secret either way (RFC 6749 §2.3.1).
        return method in _SECRET_METHODS

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and "authorization_code" in self.grant_types

    def check_grant_type(self, grant_type: str) -> bool:
        if grant_type == TOKEN_EXCHANGE:
            return self.kind != "internal"
        return grant_type in self.grant_types


def _from_row(row: ClientRow) -> Client:
    return Client(
        client_id=row.client_id,
        kind=row.kind,
        name=row.name,
        redirect_uris=tuple(row.redirect_uris),
        grant_types=frozenset(row.grant_types),
        auth_method=row.token_endpoint_auth_method,
        secret_hash=row.secret_hash,
        ceiling=parse_scope(row.scope) if row.scope else None,
        metadata=dict(row.metadata_json),
    )


class Clients:
    """Every client of one portal: the database's, the configuration's and the fetched ones."""

    def __init__(self, engine: Engine, auth: AuthSettings, *, base_dir: str, fetch: Fetcher | None = None) -> None:
        self._engine = engine
        self._auth = auth
        self._base_dir = base_dir
        self._fetch = fetch
        self._documents: dict[str, tuple[Client, float]] = {}

    # Reading

    def get(self, client_id: str) -> Client | None:
        """The client, or None when it is unknown or revoked (authlib's `query_client`)."""
        if not client_id:
            return None
        with Session(self._engine) as session:
            row = session.get(ClientRow, client_id)
        if row is not None and row.revoked_at is not None:
            return None
        configured = self._auth.client(client_id)
        if configured is not None:
            return self._configured(configured)
        if is_metadata_url(client_id, allow_loopback_http=self._auth.allow_loopback_http):
            cached = self._documents.get(client_id)
            if cached is not None and cached[1] > time.monotonic():
                return cached[0]
            return None
        if row is not None and row.kind in ("dynamic", "internal"):
            return _from_row(row)
        return None

    def listing(self) -> list[ClientRow]:
        with Session(self._engine) as session:
            return list(session.exec(select(ClientRow).order_by(col(ClientRow.created_at))))

    # Changing

    def register(self, metadata: dict[str, Any]) -> tuple[Client, str | None]:
        """Store a dynamically registered client (RFC 7591 §3.2.1); returns it and its secret, if any."""
        client_id = random_token(18)
        method = metadata["token_endpoint_auth_method"]
        secret = random_token(32) if method != "none" else None
        row = ClientRow(
            client_id=client_id,
            kind="dynamic",
            name=metadata.get("client_name"),
            redirect_uris=list(metadata["redirect_uris"]),
            grant_types=list(metadata["grant_types"]),
            token_endpoint_auth_method=method,
            secret_hash=digest(secret) if secret is not None else None,
            scope=metadata.get("scope") or None,
            metadata_json={k: v for k, v in metadata.items() if k != "client_secret"},
            created_at=int(time.time()),
        )
        with Session(self._engine) as session:
            session.add(row)
            session.commit()
            session.refresh(row)
        return _from_row(row), secret

    def ensure_row(self, client_id: str, kind: str, name: str | None, metadata: dict[str, Any] | None = None) -> None:
        """Make sure a client the portal deals with has a row (kept revoked if it was revoked)."""
        now = int(time.time())
        values: dict[str, Any] = {"client_id": client_id, "kind": kind, "name": name, "created_at": now}
        values["last_seen_at"] = now
        if metadata is not None:
            values["metadata_json"] = metadata
            values["redirect_uris"] = list(metadata.get("redirect_uris", []))
            values["grant_types"] = list(metadata.get("grant_types", []))
        insert = insert_for(self._engine, ClientRow).values(**values)
        update = {key: insert.excluded[key] for key in values if key not in ("client_id", "created_at")}
        with self._engine.begin() as connection:
            connection.execute(insert.on_conflict_do_update(index_elements=["client_id"], set_=update))

    def ensure_known(self, client_id: str) -> None:
        """Give an id the portal issues tokens under a row (`internal`), unless it already has one."""
        now = int(time.time())
        insert = insert_for(self._engine, ClientRow).values(
            client_id=client_id, kind="internal", name=client_id, created_at=now, last_seen_at=now
        )
        with self._engine.begin() as connection:
            connection.execute(insert.on_conflict_do_nothing(index_elements=["client_id"]))

    def revoke(self, client_id: str) -> ClientRow:
        with Session(self._engine) as session:
            row = session.get(ClientRow, client_id)
            if row is None:
                raise NotFound(f"unknown client {client_id!r}", client_id=client_id)
            if row.revoked_at is None:
                row.revoked_at = int(time.time())
                session.add(row)
                bump_revision(session)  # cached verdicts of this client's tokens must be re-checked
                session.commit()
                session.refresh(row)
        self._documents.pop(client_id, None)
        return row

    def seed_configured(self) -> None:
        for configured in self._auth.clients:
            self.ensure_row(configured.client_id, "config", configured.name)

    # Client ID Metadata Documents

    async def prefetch(self, client_id: str | None) -> None:
        """Fetch (or reuse) the metadata document of a URL client id; no-op for other ids.

        Raises authlib's `InvalidClientError` with the reason when the document cannot be
        used, so that the person or client sees why rather than a bare "unknown client".
        """
        if not client_id or not is_metadata_url(client_id, allow_loopback_http=self._auth.allow_loopback_http):
            return
        cached = self._documents.get(client_id)
        if cached is not None and cached[1] > time.monotonic():
            return
        if self._fetch is None:
            raise InvalidClientError(description="client metadata documents are not supported here")
        try:
            document = await self._fetch(client_id)
        except (OutboundRefused, OutboundFailed) as exc:
            raise InvalidClientError(description=f"client metadata document: {oauth_text(exc.message)}") from None
        client = self._from_document(client_id, document)
        self._documents[client_id] = (client, time.monotonic() + METADATA_CACHE_SECONDS)
        self.ensure_row(client_id, "metadata", client.name, client.metadata)

    def _from_document(self, client_id: str, document: Any) -> Client:
        if not isinstance(document, dict) or document.get("client_id") != client_id:
            # The document must name itself (CIMD §4.1), so that one URL cannot speak for another.
            raise InvalidClientError(description="client metadata document: client_id does not match its URL")
        if "client_secret" in document or "client_secret_expires_at" in document:
            raise InvalidClientError(description="client metadata document: must not carry a client secret")
        try:
            metadata = validate_client_metadata(
                {k: v for k, v in document.items() if k != "client_id"}, auth_methods=["none"]
            )
        except InvalidClientMetadataError as exc:
            raise InvalidClientError(description=f"client metadata document: {exc.description}") from None
        if "token_endpoint_auth_method" not in document:
            metadata["token_endpoint_auth_method"] = "none"
        if metadata["token_endpoint_auth_method"] != "none":
            raise InvalidClientError(description="client metadata document: token_endpoint_auth_method must be none")
        return Client(
            client_id=client_id,
            kind="metadata",
            name=metadata.get("client_name"),
            redirect_uris=tuple(metadata["redirect_uris"]),
            grant_types=frozenset(metadata["grant_types"]),
            auth_method="none",
            ceiling=parse_scope(metadata["scope"]) if metadata.get("scope") else None,
            metadata=metadata,
        )

    def _configured(self, configured: ConfidentialClient) -> Client:
        return Client(
            client_id=configured.client_id,
            kind="config",
            name=configured.name or configured.client_id,
            grant_types=frozenset({"client_credentials"}),
            auth_method="client_secret_basic",
            secret_reference=configured.client_secret,
            base_dir=self._base_dir,
            ceiling=frozenset(configured.scopes),
            may_introspect=configured.introspect,
        )
