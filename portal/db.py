"""The portal's database: one SQLAlchemy engine per process, SQLite or PostgreSQL.

SQLite (the default, a file next to `portal.toml`) is for one host: the portal and
the CLI share the file, so every connection runs in WAL mode (readers never block
the writer) with a busy timeout (a CLI write waits for the portal's instead of
failing). PostgreSQL, through psycopg 3, is for running several replicas.

Tables are SQLModel classes in the modules named by `TABLE_MODULES`; `metadata()`
imports them, so that `init_db` and (later) the Alembic environment see the same set.
Such a module may define `seed_rows(connection)`, which `init_db` calls after creating
the tables to insert the rows it relies on (idempotently).
"""

from __future__ import annotations

import functools
import importlib
import sqlite3
import time
from typing import Any

import sqlalchemy
from sqlalchemy import Connection, MetaData, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

from portal.errors import ConfigError
from portal.settings import Settings

__all__ = [
    "BUSY_TIMEOUT_MS",
    "TABLE_MODULES",
    "create_engine",
    "create_engine_for",
    "engine_url",
    "init_db",
    "insert_for",
    "metadata",
]

BUSY_TIMEOUT_MS = 10_000
"""How long a SQLite write waits for another process's write to finish before failing."""

TABLE_MODULES: tuple[str, ...] = (
    "portal.registry",
    "portal.auth.tables",
    "portal.audit.tables",
    "portal.policy.obligations",
    "portal.pinning",
)
"""Modules defining SQLModel tables; a module that adds tables is listed here."""

# Any 64-bit constant works; it only has to be the same in every replica.
_INIT_LOCK_KEY = 0x706F7274616C  # "portal"


def engine_url(database_url: str) -> str:
    """The SQLAlchemy URL for `database_url`: PostgreSQL URLs get the psycopg 3 driver."""
    for prefix in ("postgresql://", "postgres://"):
        if database_url.startswith(prefix):
            return "postgresql+psycopg://" + database_url[len(prefix) :]
    if database_url.startswith(("sqlite:", "postgresql+")):
        return database_url
    scheme = database_url.partition(":")[0] or database_url
    raise ConfigError(f"database_url: unsupported database {scheme!r} (use sqlite:/// or postgresql://)")


def create_engine(settings: Settings) -> Engine:
    """An engine for `settings.resolved_database_url`, configured for concurrent use."""
    return create_engine_for(settings.resolved_database_url, sqlite_synchronous=settings.sqlite_synchronous)


def create_engine_for(database_url: str, *, sqlite_synchronous: str = "normal") -> Engine:
    """`create_engine` from a URL alone (what a helper process such as the audit shipper receives)."""
    url = engine_url(database_url)
    if url.startswith("sqlite:"):
        engine = sqlalchemy.create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})
        synchronous = "FULL" if sqlite_synchronous == "full" else "NORMAL"
        event.listen(engine, "connect", functools.partial(_configure_sqlite, synchronous=synchronous))
        return engine
    # Replicas sit behind load balancers and poolers that drop idle connections.
    return sqlalchemy.create_engine(url, pool_pre_ping=True)


def _configure_sqlite(dbapi_connection: sqlite3.Connection, _record: Any, *, synchronous: str = "NORMAL") -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        # WAL lets the CLI read while the portal writes; it is a no-op for ":memory:".
        # Switching a new file to WAL needs an exclusive lock, and SQLite answers BUSY at
        # once (without the busy handler) when another connection is doing the same, so retry.
        for attempt in range(50):
            try:
                cursor.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError:
                if attempt == 49:
                    raise
                time.sleep(0.02)
        # In WAL mode NORMAL syncs at checkpoints rather than at every commit: a commit survives a
        # crash of the process; FULL (the setting) also survives a power loss.
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        # 32 MiB of page cache rather than 2: the audit tables' indexes stay in memory while appended to.
        cursor.execute("PRAGMA cache_size=-32768")
        # SQLite ignores REFERENCES clauses unless asked, per connection.
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def metadata() -> MetaData:
    """The metadata of every portal table (imports the modules that define them)."""
    for module in TABLE_MODULES:
        importlib.import_module(module)
    return SQLModel.metadata


def insert_for(engine_or_dialect: Engine | str, table: Any) -> Any:
    """A dialect-specific INSERT for `table`, which offers `on_conflict_do_update/nothing`.

    Both supported databases have an upsert; using it avoids the read-then-write race
    between two processes writing the same row.
    """
    name = engine_or_dialect if isinstance(engine_or_dialect, str) else engine_or_dialect.dialect.name
    if name == "sqlite":
        return sqlite.insert(table)
    if name == "postgresql":
        return postgresql.insert(table)
    raise ConfigError(f"unsupported database dialect {name!r}")


def init_db(engine: Engine) -> None:
    """Create missing tables and seed the rows every portal expects; safe to call on every start."""
    tables = metadata()
    if engine.dialect.name == "sqlite":
        _init_sqlite(engine, tables)
        return
    with engine.begin() as connection:
        # Replicas starting together would otherwise race on CREATE TABLE.
        connection.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _INIT_LOCK_KEY})
        _create(connection, tables)


def _init_sqlite(engine: Engine, tables: MetaData) -> None:
    # pysqlite runs DDL outside any transaction, so a portal and a CLI opening a new file at the
    # same moment could both try CREATE TABLE. SQLite DDL is transactional: take the write lock
    # first (BEGIN IMMEDIATE; the busy timeout makes the others wait), then check and create.
    with engine.connect() as raw:
        connection = raw.execution_options(isolation_level="AUTOCOMMIT")
        connection.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            _create(connection, tables)
        except BaseException:
            connection.exec_driver_sql("ROLLBACK")
            raise
        connection.exec_driver_sql("COMMIT")


def _create(connection: Connection, tables: MetaData) -> None:
    tables.create_all(connection)
    for module in TABLE_MODULES:
        seed = getattr(importlib.import_module(module), "seed_rows", None)
        if seed is not None:
            seed(connection)
