"""The server registry: which upstream servers the portal fronts, and how they are doing.

Servers come from two sources. `[[servers]]` in `portal.toml` are read-only here
(the file is the operator's; the portal never rewrites it), except that one can be
disabled or re-enabled, which is kept as an override row. Servers added at run time
(`portal servers add`, the admin API) live in the database. When a name is in both,
`portal.toml` wins and the database row is shadowed until it is removed.

Every change bumps a one-row counter, `registry_version`, so that a running portal
(or another replica) notices a change made by the CLI by polling one integer. The
running portal writes what it observes of each server into `server_health`, so that
`portal servers list` in another process can show it.

Methods are synchronous; the async portal calls them through a worker thread.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any, Literal, get_args

from sqlalchemy import JSON, Connection, DateTime, Text, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel, col, delete, select

from portal.db import insert_for
from portal.errors import ConfigError, UnknownServer
from portal.settings import ServerConfig, Settings

__all__ = [
    "HEALTH_STATES",
    "HealthRow",
    "HealthState",
    "Registry",
    "RegistryVersionRow",
    "RuntimeServerRow",
    "ServerHealthRow",
    "ServerOverrideRow",
    "seed_rows",
]

HealthState = Literal["starting", "up", "down", "disabled"]
HEALTH_STATES: tuple[str, ...] = get_args(HealthState)

Source = Literal["config", "runtime"]


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes even for timezone-aware columns; they were written in UTC.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class RuntimeServerRow(SQLModel, table=True):
    """A server added at run time: one column per `ServerConfig` field."""

    __tablename__ = "registry_servers"

    name: str = Field(primary_key=True, max_length=32)
    url: str | None = Field(default=None, sa_type=Text)
    command: str | None = Field(default=None, sa_type=Text)
    args: list[str] = Field(default_factory=list, sa_type=JSON)
    env: dict[str, str] = Field(default_factory=dict, sa_type=JSON)
    cwd: str | None = Field(default=None, sa_type=Text)
    module: str | None = Field(default=None, sa_type=Text)
    auth: str = "none"
    timeout: float = 30.0
    enabled: bool = True
    tools_allow: list[str] = Field(default_factory=list, sa_type=JSON)
    tools_deny: list[str] = Field(default_factory=list, sa_type=JSON)
    protocol: str = "auto"
    trust_new_tools: bool = False
    created_at: datetime = Field(default_factory=_now, sa_type=DateTime(timezone=True))


class ServerOverrideRow(SQLModel, table=True):
    """Enables or disables a server defined in `portal.toml`, without touching the file."""

    __tablename__ = "registry_overrides"

    name: str = Field(primary_key=True, max_length=32)
    enabled: bool
    changed_at: datetime = Field(default_factory=_now, sa_type=DateTime(timezone=True))


class RegistryVersionRow(SQLModel, table=True):
    """The one-row change counter (`id` is always 1)."""

    __tablename__ = "registry_version"

    id: int = Field(default=1, primary_key=True)
    version: int = 0


class ServerHealthRow(SQLModel, table=True):
    """The last health a running portal observed for one server."""

    __tablename__ = "server_health"

    name: str = Field(primary_key=True, max_length=32)
    state: str = Field(max_length=16)
    protocol_version: str | None = Field(default=None, max_length=32)
    last_error: str | None = Field(default=None, sa_type=Text)
    checked_at: datetime = Field(sa_type=DateTime(timezone=True))
    latency_p50_ms: float | None = None
    calls: int = 0
    errors: int = 0


@dataclass(frozen=True)
class HealthRow:
    """One server's health as the running portal sees it."""

    name: str
    state: HealthState
    """`starting` (being connected), `up`, `down` (failing; see `last_error`) or `disabled`."""
    checked_at: datetime = field(default_factory=_now)
    protocol_version: str | None = None
    """Protocol version negotiated with the server, once known."""
    last_error: str | None = None
    latency_p50_ms: float | None = None
    """Median latency of recent calls, in milliseconds."""
    calls: int = 0
    errors: int = 0

    def __post_init__(self) -> None:
        if self.state not in HEALTH_STATES:
            raise ValueError(f"health state must be one of {', '.join(HEALTH_STATES)}, got {self.state!r}")
        object.__setattr__(self, "checked_at", _aware(self.checked_at))

    def to_mapping(self) -> dict[str, Any]:
        """The row as JSON-friendly values (`checked_at` in ISO 8601)."""
        out = asdict(self)
        out["checked_at"] = self.checked_at.isoformat()
        return out


_TUPLE_FIELDS = frozenset(f.name for f in fields(ServerConfig) if isinstance(f.default, tuple))


def _to_row(server: ServerConfig) -> RuntimeServerRow:
    values: dict[str, Any] = {}
    for f in fields(ServerConfig):
        value = getattr(server, f.name)
        # JSON columns take lists and dicts, not tuples and read-only mappings.
        values[f.name] = list(value) if f.name in _TUPLE_FIELDS else dict(value) if f.name == "env" else value
    return RuntimeServerRow(**values)


def _to_config(row: RuntimeServerRow) -> ServerConfig:
    values: dict[str, Any] = {f.name: getattr(row, f.name) for f in fields(ServerConfig)}
    for name in _TUPLE_FIELDS:
        values[name] = tuple(values[name] or ())
    values["env"] = dict(values["env"] or {})
    return ServerConfig(**values)


def _to_health(row: ServerHealthRow) -> HealthRow:
    return HealthRow(
        name=row.name,
        state=row.state,  # type: ignore[arg-type]  # written from a HealthRow, so a valid state
        checked_at=row.checked_at,
        protocol_version=row.protocol_version,
        last_error=row.last_error,
        latency_p50_ms=row.latency_p50_ms,
        calls=row.calls,
        errors=row.errors,
    )


def seed_rows(connection: Connection) -> None:
    """Insert the version row if missing (called by `portal.db.init_db`)."""
    insert = insert_for(connection.dialect.name, RegistryVersionRow)
    connection.execute(insert.values(id=1, version=0).on_conflict_do_nothing(index_elements=["id"]))


def _unknown(name: str) -> UnknownServer:
    return UnknownServer(f"unknown server '{name}'", server=name)


class Registry:
    """The merged view of `portal.toml` servers and run-time servers, persisted in the database."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self._engine = engine
        self.engine = engine
        self._config = {server.name: server for server in settings.servers}

    # Reading

    def servers(self) -> list[ServerConfig]:
        """Every server, disabled ones included (`enabled=False`).

        `portal.toml` servers come first, then run-time ones, each group sorted by name.
        """
        with Session(self._engine) as session:
            overrides = {row.name: row.enabled for row in session.exec(select(ServerOverrideRow))}
            runtime = session.exec(select(RuntimeServerRow).order_by(col(RuntimeServerRow.name))).all()
        merged = [self._apply(self._config[name], overrides.get(name)) for name in sorted(self._config)]
        merged += [_to_config(row) for row in runtime if row.name not in self._config]
        return merged

    def get(self, name: str) -> ServerConfig:
        """The server called `name`; `UnknownServer` if there is none."""
        with Session(self._engine) as session:
            if name in self._config:
                override = session.get(ServerOverrideRow, name)
                return self._apply(self._config[name], None if override is None else override.enabled)
            row = session.get(RuntimeServerRow, name)
        if row is None:
            raise _unknown(name)
        return _to_config(row)

    def source(self, name: str) -> Source:
        """Where `name` is defined: `config` (portal.toml) or `runtime` (the database)."""
        if name in self._config:
            return "config"
        with Session(self._engine) as session:
            if session.get(RuntimeServerRow, name) is None:
                raise _unknown(name)
        return "runtime"

    def version(self) -> int:
        """The change counter; cheap enough to poll every few seconds."""
        with Session(self._engine) as session:
            row = session.get(RegistryVersionRow, 1)
        return 0 if row is None else row.version

    def health(self) -> dict[str, HealthRow]:
        """The last recorded health of each server, by name."""
        with Session(self._engine) as session:
            rows = session.exec(select(ServerHealthRow)).all()
        return {row.name: _to_health(row) for row in rows}

    # Changing

    def add(self, server: ServerConfig) -> ServerConfig:
        """Register a run-time server; `ConfigError` if it is invalid or its name is taken."""
        server.validate()
        if server.name in self._config:
            raise ConfigError(f"server '{server.name}' already exists (defined in portal.toml)", server=server.name)
        taken = ConfigError(f"server '{server.name}' already exists", server=server.name)
        try:
            with Session(self._engine) as session:
                if session.get(RuntimeServerRow, server.name) is not None:
                    raise taken
                session.add(_to_row(server))
                self._bump(session)
                session.commit()
        except IntegrityError:
            # Another process added the same name between our check and our insert.
            raise taken from None
        return server

    def remove(self, name: str) -> None:
        """Forget a run-time server and its health; servers of `portal.toml` are edited there."""
        with Session(self._engine) as session:
            row = session.get(RuntimeServerRow, name)
            if row is None:
                if name in self._config:
                    raise ConfigError(
                        f"server '{name}' is defined in portal.toml: remove it from that file, "
                        f"or disable it with `portal servers disable {name}`",
                        server=name,
                    )
                raise _unknown(name)
            session.delete(row)
            session.exec(delete(ServerHealthRow).where(col(ServerHealthRow.name) == name))
            self._bump(session)
            session.commit()

    def set_enabled(self, name: str, enabled: bool) -> ServerConfig:
        """Enable or disable a server of either source; returns it as it now is."""
        with Session(self._engine) as session:
            if name in self._config:
                changed = self._set_override(session, name, enabled)
            else:
                row = session.get(RuntimeServerRow, name)
                if row is None:
                    raise _unknown(name)
                changed = row.enabled != enabled
                row.enabled = enabled
                session.add(row)
            if changed:
                self._bump(session)
            session.commit()
        return self.get(name)

    def record_health(self, rows: Iterable[HealthRow]) -> None:
        """Store the latest health of some servers, replacing what was there for them."""
        values = [
            {
                "name": row.name,
                "state": row.state,
                "protocol_version": row.protocol_version,
                "last_error": row.last_error,
                "checked_at": row.checked_at,
                "latency_p50_ms": row.latency_p50_ms,
                "calls": row.calls,
                "errors": row.errors,
            }
            for row in rows
        ]
        if not values:
            return
        insert = insert_for(self._engine, ServerHealthRow).values(values)
        # An upsert, so that replicas writing at once cannot trip over each other's inserts.
        upsert = insert.on_conflict_do_update(
            index_elements=["name"],
            set_={key: insert.excluded[key] for key in values[0] if key != "name"},
        )
        with self._engine.begin() as connection:
            connection.execute(upsert)

    # Internals

    @staticmethod
    def _apply(server: ServerConfig, override: bool | None) -> ServerConfig:
        if override is None or override == server.enabled:
            return server
        return replace(server, enabled=override)

    def _set_override(self, session: Session, name: str, enabled: bool) -> bool:
        """Record the override; returns whether the effective state changed."""
        row = session.get(ServerOverrideRow, name)
        before = self._config[name].enabled if row is None else row.enabled
        if enabled == self._config[name].enabled:
            # Back to what the file says: drop the override, so a later edit of the file counts again.
            if row is not None:
                session.delete(row)
        elif row is None:
            session.add(ServerOverrideRow(name=name, enabled=enabled))
        else:
            row.enabled = enabled
            row.changed_at = _now()
            session.add(row)
        return before != enabled

    @staticmethod
    def _bump(session: Session) -> None:
        result = session.exec(
            update(RegistryVersionRow)
            .where(col(RegistryVersionRow.id) == 1)
            .values(version=col(RegistryVersionRow.version) + 1)
        )
        if result.rowcount == 0:
            # Only when init_db has not seeded the row; the insert is then the first change.
            session.add(RegistryVersionRow(id=1, version=1))
