"""The portal's one settings object.

Read once from `portal.toml` and `PORTAL_*` environment variables, then frozen.
Every field is documented here and in `docs/configuration.md`. Environment
variables win over the file: `PORTAL_DATABASE_URL` sets `[portal] database_url`,
and so on for every `[portal]` field.

Secrets are never literals in the file: a value that holds one is a reference,
`env:NAME` or `file:PATH`, resolved by `resolve_secret` when it is used.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from portal.audit.settings import AuditSettings
from portal.auth.settings import AuthSettings, parse_auth_settings
from portal.errors import ConfigError
from portal.inbound import normalize_host, normalize_origin

__all__ = [
    "PROTOCOL_CHOICES",
    "SERVER_NAME",
    "ServerConfig",
    "Settings",
    "load_settings",
    "resolve_secret",
]

SERVER_NAME = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
"""SPEC.md, Names: server names."""

PROTOCOL_CHOICES = ("auto", "2025-11-25", "2026-07-28")

Protocol = Literal["auto", "2025-11-25", "2026-07-28"]


@dataclass(frozen=True)
class ServerConfig:
    """One upstream MCP server: exactly one of `url`, `command` or `module`."""

    name: str
    """Unique name, `^[a-z][a-z0-9-]{0,31}$`; prefixes the server's tools on `/mcp`."""
    url: str | None = None
    """Remote Streamable HTTP endpoint of the server."""
    command: str | None = None
    """Executable of a stdio server the portal starts and supervises."""
    args: tuple[str, ...] = ()
    """Arguments of `command`."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Extra environment of `command`; values may be `env:NAME` or `file:PATH` references."""
    cwd: str | None = None
    """Working directory of `command` (default: the directory of `portal.toml`)."""
    module: str | None = None
    """Python module in `servers/` (or any importable module) exposing an MCP server, served in-process."""
    auth: str = "none"
    """How the portal authenticates to the upstream; `none` until upstream credentials land."""
    timeout: float = 30.0
    """Seconds a request to this server may take before the client gets a timeout error."""
    enabled: bool = True
    """A disabled server is not started, not listed and not callable."""
    tools_allow: tuple[str, ...] = ()
    """If not empty, only these tools of the server are exposed."""
    tools_deny: tuple[str, ...] = ()
    """These tools of the server are never exposed."""
    protocol: Protocol = "auto"
    """Protocol era towards this server: `auto` (probe 2026-07-28, fall back to the handshake),
    `2025-11-25` or `2026-07-28`."""
    trust_new_tools: bool = False
    """Offer tools the server adds after its first sync at once, instead of holding them until
    `portal servers approve` (issue 7). Changed tools, and tools whose description the scan flags,
    are held either way."""

    @property
    def kind(self) -> Literal["remote", "stdio", "hosted"]:
        if self.url is not None:
            return "remote"
        if self.command is not None:
            return "stdio"
        return "hosted"

    def exposes(self, tool: str) -> bool:
        """Whether the allow and deny lists let `tool` through."""
        if tool in self.tools_deny:
            return False
        return not self.tools_allow or tool in self.tools_allow

    def validate(self) -> ServerConfig:
        if not SERVER_NAME.fullmatch(self.name):
            raise ConfigError(f"server name {self.name!r} must match ^[a-z][a-z0-9-]{{0,31}}$", server=self.name)
        given = [key for key in ("url", "command", "module") if getattr(self, key) is not None]
        if len(given) != 1:
            raise ConfigError(
                f"server '{self.name}' needs exactly one of url, command or module (got {', '.join(given) or 'none'})",
                server=self.name,
            )
        if self.url is not None and not re.match(r"^https?://", self.url):
            raise ConfigError(f"server '{self.name}': url must be http(s)", server=self.name)
        if not self.timeout > 0:
            raise ConfigError(f"server '{self.name}': timeout must be positive", server=self.name)
        if self.protocol not in PROTOCOL_CHOICES:
            raise ConfigError(
                f"server '{self.name}': protocol must be one of {', '.join(PROTOCOL_CHOICES)}", server=self.name
            )
        if self.auth != "none":
            raise ConfigError(f"server '{self.name}': auth {self.auth!r} is not supported", server=self.name)
        if not isinstance(self.trust_new_tools, bool):
            raise ConfigError(f"server '{self.name}': trust_new_tools must be true or false", server=self.name)
        return self

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> ServerConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        name = str(raw.get("name", "?"))
        if unknown:
            raise ConfigError(f"server '{name}': unknown keys {', '.join(unknown)}", server=name)
        values = dict(raw)
        for key in ("args", "tools_allow", "tools_deny"):
            if key in values:
                if not isinstance(values[key], list | tuple) or not all(isinstance(v, str) for v in values[key]):
                    raise ConfigError(f"server '{name}': {key} must be a list of strings", server=name)
                values[key] = tuple(values[key])
        if "env" in values:
            env = values["env"]
            if not isinstance(env, Mapping) or not all(isinstance(v, str) for v in env.values()):
                raise ConfigError(f"server '{name}': env must be a table of strings", server=name)
            values["env"] = dict(env)
        if "timeout" in values:
            values["timeout"] = float(values["timeout"])
        return cls(**values).validate()

    def to_mapping(self) -> dict[str, Any]:
        """The server as a TOML/JSON-friendly mapping, without empty fields."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or value == () or value == {}:
                continue
            out[f.name] = list(value) if isinstance(value, tuple) else (dict(value) if f.name == "env" else value)
        return out


@dataclass(frozen=True)
class Settings:
    """Everything the portal reads from `portal.toml` and `PORTAL_*` variables."""

    public_url: str = "http://127.0.0.1:8000"
    """The URL clients use to reach the portal; endpoint URLs and metadata are built from it."""
    database_url: str = "sqlite:///portal.db"
    """SQLAlchemy URL of the database (SQLite by default; `postgresql+psycopg://...` for scale-out).
    A relative SQLite path is relative to the directory of `portal.toml`."""
    redis_url: str | None = None
    """Redis for state shared between replicas (optional)."""
    sqlite_synchronous: str = "normal"
    """SQLite's `synchronous` (WAL mode): `normal` makes a commit durable against a crash of the portal,
    without an fsync per commit; `full` also against a power loss or an OS crash, at an fsync per commit
    (audit start records are group-committed either way). Ignored on PostgreSQL."""
    policies_dir: str = "policies"
    """Folder of Cedar policies, relative to the directory of `portal.toml`."""
    allowed_hosts: tuple[str, ...] = ()
    """`Host` values served besides the host of `public_url` (DNS rebinding protection, see
    `portal.inbound`): `name` (any port) or `name:port`; `*` turns the check off. Others get HTTP 421."""
    allowed_origins: tuple[str, ...] = ()
    """Browser origins (`https://app.example.com`) allowed to call the MCP endpoints besides the
    origin of `public_url`. A request with another `Origin` gets HTTP 403; one without passes."""
    max_body_bytes: int = 4 * 1024 * 1024
    """Largest request body accepted on an MCP endpoint; larger ones get HTTP 413."""
    max_json_depth: int = 64
    """Deepest JSON nesting accepted in a request body."""
    session_secret: str | None = None
    """Reference (`env:NAME`/`file:PATH`) to the key that signs handshake-era session ids, so that
    every replica accepts every session. Default: a random key per process (one replica)."""
    registry_poll_seconds: float = 2.0
    """How often a running portal looks for servers added or changed through the CLI or another replica."""
    health_interval_seconds: float = 15.0
    """How often an idle upstream is pinged to keep its health current."""
    base_dir: str = "."
    """Directory of `portal.toml`; relative paths in the file are resolved against it (not read from the file)."""
    servers: tuple[ServerConfig, ...] = ()
    """`[[servers]]` tables of the file."""
    auth: AuthSettings = field(default_factory=AuthSettings)
    """`[auth]`: tokens, identity providers, clients and grants (see `portal.auth.settings`)."""
    audit: AuditSettings = field(default_factory=AuditSettings)
    """`[audit]`: spool, result bodies, checkpoints (see `portal.audit.settings`)."""

    def resolve_path(self, value: str) -> Path:
        path = Path(value)
        return path if path.is_absolute() else Path(self.base_dir) / path

    @property
    def resolved_database_url(self) -> str:
        """`database_url` with a relative SQLite path anchored at `base_dir`."""
        prefix = "sqlite:///"
        url = self.database_url
        if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
            return prefix + str(self.resolve_path(url[len(prefix) :]).resolve())
        return url


def _string_list(value: Any) -> tuple[str, ...]:
    """A TOML list of strings, or (from an environment variable) a comma-separated string."""
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise TypeError("not a list of strings")


_string_list.__name__ = "list of strings"

_PORTAL_KEYS: dict[str, Any] = {
    "public_url": str,
    "database_url": str,
    "redis_url": str,
    "sqlite_synchronous": str,
    "policies_dir": str,
    "allowed_hosts": _string_list,
    "allowed_origins": _string_list,
    "max_body_bytes": int,
    "max_json_depth": int,
    "session_secret": str,
    "registry_poll_seconds": float,
    "health_interval_seconds": float,
}


def load_settings(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read `path` (if it exists) and the `PORTAL_*` variables of `env` into frozen settings."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    base_dir = Path.cwd()
    if path is not None:
        file = Path(path)
        if not file.exists():
            raise ConfigError(f"configuration file {str(file)!r} does not exist")
        try:
            raw = tomllib.loads(file.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: {exc}") from None
        base_dir = file.resolve().parent
    section = raw.get("portal", {})
    unknown = sorted(set(section) - set(_PORTAL_KEYS))
    if unknown:
        raise ConfigError(f"[portal]: unknown keys {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for key, kind in _PORTAL_KEYS.items():
        value = env.get(f"PORTAL_{key.upper()}", section.get(key))
        if value is None:
            continue
        try:
            values[key] = kind(value)
        except (TypeError, ValueError):
            raise ConfigError(f"[portal] {key} must be a {kind.__name__}") from None
    servers = tuple(ServerConfig.from_mapping(s) for s in raw.get("servers", []))
    names = [s.name for s in servers]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"duplicate server names: {', '.join(duplicates)}")
    auth = parse_auth_settings(raw.get("auth", {}), env)
    audit = AuditSettings.from_mapping(raw.get("audit", {}))
    settings = Settings(base_dir=str(base_dir), servers=servers, auth=auth, audit=audit, **values)
    if settings.sqlite_synchronous not in ("normal", "full"):
        raise ConfigError("[portal] sqlite_synchronous must be 'normal' or 'full'")
    if not settings.public_url.startswith(("http://", "https://")):
        raise ConfigError("[portal] public_url must be an http(s) URL")
    _check_inbound(settings)
    return replace(settings, public_url=settings.public_url.rstrip("/"))


def _check_inbound(settings: Settings) -> None:
    for host in settings.allowed_hosts:
        try:
            if host != "*":
                normalize_host(host)
        except ValueError:
            raise ConfigError(f"[portal] allowed_hosts: {host!r} is not a host name or host:port") from None
    for origin in settings.allowed_origins:
        try:
            normalize_origin(origin)
        except ValueError:
            raise ConfigError(f"[portal] allowed_origins: {origin!r} is not an origin (scheme://host[:port])") from None


def resolve_secret(reference: str, *, base_dir: str = ".") -> str:
    """Resolve an `env:NAME` or `file:PATH` reference; anything else is refused.

    Refusing literals keeps secrets out of config files and out of the database.
    """
    kind, _, target = reference.partition(":")
    if kind == "env" and target:
        value = os.environ.get(target)
        if value is None:
            raise ConfigError(f"secret reference env:{target} names an unset variable")
        return value
    if kind == "file" and target:
        file = Path(target)
        if not file.is_absolute():
            file = Path(base_dir) / file
        try:
            return file.read_text().strip()
        except OSError:
            raise ConfigError(f"secret reference file:{target} cannot be read") from None
    raise ConfigError("a secret must be a reference, env:NAME or file:PATH")
