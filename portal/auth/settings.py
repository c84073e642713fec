"""The `[auth]` section of `portal.toml`: tokens, people, clients and grants.

```toml
[auth]
access_token_ttl = 300
master_key = "env:PORTAL_MASTER_KEY"

[auth.grants]            # what the operator grants each user (until policies land)
demo = ["tools:*", "codemode"]

[auth.group_grants]      # ... and each group
eng = ["tools:github"]

[[auth.providers]]       # OIDC identity providers
name = "corp"
issuer = "https://login.example.com"
client_id = "portal"
client_secret = "env:CORP_OIDC_SECRET"

[[auth.clients]]         # pre-registered confidential clients (client_credentials)
client_id = "nightly-report"
client_secret = "file:/run/secrets/nightly"
scopes = ["tools:notes"]
```

Scalar fields can be overridden with `PORTAL_AUTH_<FIELD>` variables, e.g.
`PORTAL_AUTH_MASTER_KEY=env:VAULT_KEY`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from portal.auth.scopes import KNOWN_SCOPE
from portal.errors import ConfigError

__all__ = ["AuthSettings", "ConfidentialClient", "OidcProvider", "parse_auth_settings"]

PROVIDER_NAME = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
_REFERENCE = re.compile(r"^(env:.+|file:.+)$")


@dataclass(frozen=True)
class OidcProvider:
    """One OpenID Connect identity provider people can log in with (`[[auth.providers]]`)."""

    name: str
    """Short name, `^[a-z][a-z0-9-]{0,31}$`; prefixes the subjects of its users (`corp:<sub>`)."""
    issuer: str
    """Issuer URL; `{issuer}/.well-known/openid-configuration` must serve its discovery document."""
    client_id: str
    """The portal's client id at the provider."""
    client_secret: str | None = None
    """Reference (`env:NAME`/`file:PATH`) to the portal's client secret there; none for a public client."""
    groups_claim: str = "groups"
    """Claim of the ID token (or userinfo) listing the person's groups."""
    scopes: tuple[str, ...] = ("openid", "profile", "email")
    """Scopes the portal asks the provider for; `openid` is always added."""
    display_name: str | None = None
    """Label of the provider's button on the login page (default: `name`)."""


@dataclass(frozen=True)
class ConfidentialClient:
    """A pre-registered confidential client (`[[auth.clients]]`), e.g. a service agent."""

    client_id: str
    client_secret: str
    """Reference (`env:NAME`/`file:PATH`) to the client's secret."""
    scopes: tuple[str, ...] = ()
    """The most a `client_credentials` token of this client may carry."""
    name: str | None = None
    """What people see (client lists, audit)."""
    introspect: bool = False
    """Whether the client may call `/oauth/introspect` (RFC 7662), e.g. a resource server."""


@dataclass(frozen=True)
class AuthSettings:
    """Everything `[auth]` configures; defaults are safe for one portal on one host."""

    access_token_ttl: int = 300
    """Life of an access token, in seconds (SPEC: 5 minutes)."""
    refresh_token_ttl: int = 30 * 24 * 3600
    """Life of a refresh token, in seconds; every use rotates it and restarts its life."""
    max_minted_ttl: int = 24 * 3600
    """Longest life `portal tokens mint` may give a token, in seconds."""
    authorization_code_ttl: int = 120
    """Life of an authorization code, in seconds (RFC 6749 §4.1.2 recommends at most 10 minutes)."""
    session_ttl: int = 8 * 3600
    """How long a login at the portal (its session cookie) lasts, in seconds."""
    master_key: str | None = None
    """Reference (`env:NAME`/`file:PATH`) to the key that encrypts signing keys at rest and signs
    sessions: 32 random bytes, base64 or hex. Unset: a key file `portal-master.key` is created
    (mode 0600) next to `portal.toml`, with a warning. Every replica needs the same key."""
    local_users: bool = True
    """Whether people may log in with a local user name and password (`portal users add`)."""
    registration: bool = True
    """Whether `/oauth/register` accepts dynamic client registration (RFC 7591) for older clients."""
    allow_loopback_http: bool = False
    """Development only: accept `http://` loopback URLs as client ids (metadata documents) and
    fetch them from loopback addresses. Loopback redirect URIs (RFC 8252) are always allowed."""
    login_attempts_per_minute: int = 10
    """Login form posts allowed per user name and client IP, a minute (a burst of this many, then
    evenly spread); more get HTTP 429 with `Retry-After`. 0 turns the limit off."""
    login_attempts_per_minute_per_ip: int = 30
    """Login form posts allowed per client IP a minute, whatever the user names (password spraying)."""
    token_requests_per_minute: int = 60
    """Requests allowed per client IP a minute on `/oauth/token`, and as many again on `/oauth/register`;
    more get HTTP 429, `Retry-After` and the OAuth error `slow_down`. 0 turns the limit off."""
    providers: tuple[OidcProvider, ...] = ()
    """`[[auth.providers]]`: OpenID Connect identity providers."""
    clients: tuple[ConfidentialClient, ...] = ()
    """`[[auth.clients]]`: pre-registered confidential clients."""
    grants: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """`[auth.grants]`: user subject -> the capabilities the operator grants that user."""
    group_grants: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """`[auth.group_grants]`: group name -> the capabilities granted to its members."""

    def provider(self, name: str) -> OidcProvider | None:
        return next((p for p in self.providers if p.name == name), None)

    def client(self, client_id: str) -> ConfidentialClient | None:
        return next((c for c in self.clients if c.client_id == client_id), None)


_SCALARS: dict[str, type] = {
    "access_token_ttl": int,
    "refresh_token_ttl": int,
    "max_minted_ttl": int,
    "authorization_code_ttl": int,
    "session_ttl": int,
    "master_key": str,
    "local_users": bool,
    "registration": bool,
    "allow_loopback_http": bool,
    "login_attempts_per_minute": int,
    "login_attempts_per_minute_per_ip": int,
    "token_requests_per_minute": int,
}
_TABLES = {"providers", "clients", "grants", "group_grants"}


def _scalar(key: str, kind: type, value: Any) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise ConfigError(f"[auth] {key} must be true or false")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"[auth] {key} must be a {kind.__name__}") from None


def _strings(where: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} must be a list of strings")
    return tuple(value)


def _scopes(where: str, value: Any) -> tuple[str, ...]:
    scopes = _strings(where, value)
    bad = [s for s in scopes if not KNOWN_SCOPE.fullmatch(s)]
    if bad:
        raise ConfigError(f"{where}: unknown capabilities {', '.join(bad)}")
    return scopes


def _reference(where: str, value: Any) -> str:
    if not isinstance(value, str) or not _REFERENCE.fullmatch(value):
        raise ConfigError(f"{where} must be a secret reference, env:NAME or file:PATH")
    return value


def _table(cls: type, where: str, raw: Any) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a table")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown keys {', '.join(unknown)}")
    return dict(raw)


def _provider(raw: Any) -> OidcProvider:
    values = _table(OidcProvider, "[[auth.providers]]", raw)
    name = str(values.get("name", ""))
    where = f"[[auth.providers]] {name or '?'}"
    if not PROVIDER_NAME.fullmatch(name):
        raise ConfigError(f"{where}: name must match ^[a-z][a-z0-9-]{{0,31}}$")
    for key in ("issuer", "client_id"):
        if not isinstance(values.get(key), str) or not values[key]:
            raise ConfigError(f"{where}: {key} is required")
    if not re.match(r"^https?://", values["issuer"]):
        raise ConfigError(f"{where}: issuer must be an http(s) URL")
    if values.get("client_secret") is not None:
        values["client_secret"] = _reference(f"{where}: client_secret", values["client_secret"])
    if "scopes" in values:
        values["scopes"] = _strings(f"{where}: scopes", values["scopes"])
    return OidcProvider(**values)


def _client(raw: Any) -> ConfidentialClient:
    values = _table(ConfidentialClient, "[[auth.clients]]", raw)
    client_id = values.get("client_id")
    if not isinstance(client_id, str) or not re.fullmatch(r"[A-Za-z0-9._~-]{1,128}", client_id):
        raise ConfigError("[[auth.clients]]: client_id must be 1-128 of A-Z a-z 0-9 . _ ~ -")
    where = f"[[auth.clients]] {client_id}"
    values["client_secret"] = _reference(f"{where}: client_secret", values.get("client_secret"))
    if "scopes" in values:
        values["scopes"] = _scopes(f"{where}: scopes", values["scopes"])
    if "introspect" in values:
        values["introspect"] = _scalar("introspect", bool, values["introspect"])
    return ConfidentialClient(**values)


def _grants(where: str, raw: Any) -> dict[str, tuple[str, ...]]:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a table of lists")
    return {str(key): _scopes(f"{where} {key}", value) for key, value in raw.items()}


def parse_auth_settings(section: Mapping[str, Any], env: Mapping[str, str]) -> AuthSettings:
    """`[auth]` of `portal.toml` plus `PORTAL_AUTH_*` variables, validated."""
    if not isinstance(section, Mapping):
        raise ConfigError("[auth] must be a table")
    unknown = sorted(set(section) - set(_SCALARS) - _TABLES)
    if unknown:
        raise ConfigError(f"[auth]: unknown keys {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for key, kind in _SCALARS.items():
        value = env.get(f"PORTAL_AUTH_{key.upper()}", section.get(key))
        if value is not None:
            values[key] = _scalar(key, kind, value)
    for key in ("access_token_ttl", "refresh_token_ttl", "max_minted_ttl", "authorization_code_ttl", "session_ttl"):
        if key in values and values[key] <= 0:
            raise ConfigError(f"[auth] {key} must be positive")
    for key in ("login_attempts_per_minute", "login_attempts_per_minute_per_ip", "token_requests_per_minute"):
        if key in values and values[key] < 0:
            raise ConfigError(f"[auth] {key} must be 0 (no limit) or positive")
    if "master_key" in values:
        _reference("[auth] master_key", values["master_key"])
    providers = tuple(_provider(p) for p in section.get("providers", []))
    clients = tuple(_client(c) for c in section.get("clients", []))
    for table, names in (("providers", [p.name for p in providers]), ("clients", [c.client_id for c in clients])):
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"[auth] {table}: duplicate names {', '.join(duplicates)}")
    settings = AuthSettings(
        providers=providers,
        clients=clients,
        grants=_grants("[auth.grants]", section.get("grants", {})),
        group_grants=_grants("[auth.group_grants]", section.get("group_grants", {})),
        **values,
    )
    if settings.access_token_ttl > settings.max_minted_ttl:
        raise ConfigError("[auth] access_token_ttl must not exceed max_minted_ttl")
    return settings
