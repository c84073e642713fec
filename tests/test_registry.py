"""The server registry and its database: SQLite always, PostgreSQL when one is configured."""

from __future__ import annotations

import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # importable without installing the project
    sys.path.insert(0, str(REPO_ROOT))

from portal.db import create_engine, engine_url, init_db  # noqa: E402
from portal.errors import ConfigError, UnknownServer  # noqa: E402
from portal.registry import HealthRow, Registry, RuntimeServerRow, ServerOverrideRow  # noqa: E402
from portal.settings import ServerConfig, Settings  # noqa: E402

CONFIG_SERVERS = (
    ServerConfig(name="notes", module="servers.notes"),
    ServerConfig(name="docs", command="python", args=("-m", "servers.docs")),
    ServerConfig(name="archive", url="http://127.0.0.1:9/mcp", enabled=False),
)

MakeRegistry = Callable[..., Registry]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database URL of each kind, empty, removed after the test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'portal.db'}"
        return
    base = request.getfixturevalue("postgres_url")
    # A schema per test: tests cannot see each other's rows, and dropping it removes every table.
    schema = f"portal_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(Settings(database_url=base))
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in base else "?"
    try:
        yield f"{base}{separator}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def make_registry(database_url: str) -> Iterator[MakeRegistry]:
    """A factory of registries on the test database, each with an engine of its own (as in another process)."""
    engines: list[Engine] = []

    def make(servers: tuple[ServerConfig, ...] = CONFIG_SERVERS) -> Registry:
        settings = Settings(database_url=database_url, servers=servers)
        engine = create_engine(settings)
        engines.append(engine)
        init_db(engine)
        return Registry(settings, engine)

    yield make
    for engine in engines:
        engine.dispose()


@pytest.fixture
def registry(make_registry: MakeRegistry) -> Registry:
    return make_registry()


# The database


def test_postgresql_urls_are_given_the_psycopg_driver() -> None:
    assert engine_url("postgresql://u@h:5432/db") == "postgresql+psycopg://u@h:5432/db"
    assert engine_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert engine_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
    assert engine_url("sqlite:///x.db") == "sqlite:///x.db"


def test_an_unsupported_database_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="mysql"):
        create_engine(Settings(database_url="mysql://u@h/db"))


def test_sqlite_connections_use_wal_a_busy_timeout_and_foreign_keys(tmp_path: Path) -> None:
    engine = create_engine(Settings(database_url=f"sqlite:///{tmp_path / 'p.db'}"))
    with engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert int(connection.execute(text("PRAGMA busy_timeout")).scalar() or 0) >= 1000
        assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1
    engine.dispose()


def test_a_relative_sqlite_path_lands_in_the_folder_of_portal_toml(tmp_path: Path) -> None:
    engine = create_engine(Settings(database_url="sqlite:///data.db", base_dir=str(tmp_path)))
    init_db(engine)
    engine.dispose()
    assert (tmp_path / "data.db").is_file()


def test_init_db_is_idempotent_and_starts_the_version_at_zero(make_registry: MakeRegistry) -> None:
    first = make_registry()
    second = make_registry()  # init_db again, on the same database
    assert first.version() == second.version() == 0


def test_init_db_from_several_processes_at_once_creates_the_tables_once(database_url: str) -> None:
    engines = [create_engine(Settings(database_url=database_url)) for _ in range(4)]
    barrier = threading.Barrier(len(engines))
    errors: list[BaseException] = []

    def start(engine: Engine) -> None:
        barrier.wait()
        try:
            init_db(engine)
        except BaseException as exc:  # collected: an exception in a thread would otherwise vanish
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for engine in engines:
        engine.dispose()
    assert errors == []


# Listing


def test_config_servers_come_first_then_runtime_servers_each_sorted_by_name(registry: Registry) -> None:
    registry.add(ServerConfig(name="zeta", url="http://127.0.0.1:1/mcp"))
    registry.add(ServerConfig(name="alpha", module="servers.clock"))
    assert [s.name for s in registry.servers()] == ["archive", "docs", "notes", "alpha", "zeta"]


def test_disabled_servers_are_listed_with_enabled_false(registry: Registry) -> None:
    registry.add(ServerConfig(name="off", module="servers.clock", enabled=False))
    enabled = {s.name: s.enabled for s in registry.servers()}
    assert enabled == {"archive": False, "docs": True, "notes": True, "off": False}


def test_a_runtime_server_keeps_every_field_in_another_process(make_registry: MakeRegistry) -> None:
    server = ServerConfig(
        name="local",
        command="node",
        args=("server.js", "--verbose"),
        env={"TOKEN": "env:LOCAL_TOKEN", "MODE": "fast"},
        cwd="/srv/local",
        timeout=12.5,
        enabled=False,
        tools_allow=("read", "write"),
        tools_deny=("write",),
        protocol="2025-11-25",
    )
    make_registry().add(server)
    assert make_registry().get("local") == server


def test_every_server_config_field_has_a_column() -> None:
    columns = set(RuntimeServerRow.model_fields)
    assert {f.name for f in fields(ServerConfig)} <= columns


def test_a_config_server_is_returned_as_portal_toml_defines_it(registry: Registry) -> None:
    assert registry.get("docs") == CONFIG_SERVERS[1]
    assert registry.source("docs") == "config"


# Adding and removing


def test_adding_a_name_taken_in_portal_toml_or_the_database_is_a_config_error(registry: Registry) -> None:
    with pytest.raises(ConfigError, match=r"portal\.toml"):
        registry.add(ServerConfig(name="notes", url="http://127.0.0.1:1/mcp"))
    registry.add(ServerConfig(name="extra", url="http://127.0.0.1:1/mcp"))
    with pytest.raises(ConfigError, match="already exists"):
        registry.add(ServerConfig(name="extra", module="servers.clock"))
    assert registry.source("extra") == "runtime"


@pytest.mark.parametrize(
    "server",
    [
        ServerConfig(name="Bad_Name", module="m"),
        ServerConfig(name="two", module="m", url="http://x/mcp"),
        ServerConfig(name="none"),
        ServerConfig(name="ftp", url="ftp://x/mcp"),
        ServerConfig(name="slow", module="m", timeout=0),
    ],
    ids=["name", "two-targets", "no-target", "not-http", "timeout"],
)
def test_add_refuses_an_invalid_server_and_changes_nothing(registry: Registry, server: ServerConfig) -> None:
    with pytest.raises(ConfigError):
        registry.add(server)
    assert registry.version() == 0
    assert len(registry.servers()) == len(CONFIG_SERVERS)


def test_removing_a_runtime_server_forgets_it_and_its_health(registry: Registry) -> None:
    registry.add(ServerConfig(name="extra", url="http://127.0.0.1:1/mcp"))
    registry.record_health([HealthRow("extra", "up")])
    registry.remove("extra")
    assert "extra" not in {s.name for s in registry.servers()}
    assert "extra" not in registry.health()


def test_removing_a_config_server_is_a_config_error_telling_to_edit_portal_toml(registry: Registry) -> None:
    with pytest.raises(ConfigError, match=r"portal\.toml.*portal servers disable notes"):
        registry.remove("notes")
    assert registry.get("notes").enabled


@pytest.mark.parametrize("call", ["get", "remove", "enable", "source"])
def test_unknown_names_raise_unknown_server(registry: Registry, call: str) -> None:
    actions: dict[str, Callable[[], object]] = {
        "get": lambda: registry.get("ghost"),
        "remove": lambda: registry.remove("ghost"),
        "enable": lambda: registry.set_enabled("ghost", True),
        "source": lambda: registry.source("ghost"),
    }
    with pytest.raises(UnknownServer, match="ghost"):
        actions[call]()


# Enabling and disabling


def test_disabling_a_config_server_persists_and_enabling_it_again_drops_the_override(
    make_registry: MakeRegistry,
) -> None:
    assert make_registry().set_enabled("docs", False).enabled is False
    other = make_registry()
    assert other.get("docs").enabled is False
    other.set_enabled("docs", True)
    assert make_registry().get("docs").enabled is True
    with other._engine.connect() as connection:
        assert connection.execute(text(f"SELECT count(*) FROM {ServerOverrideRow.__tablename__}")).scalar() == 0


def test_a_server_disabled_in_portal_toml_can_be_enabled_at_run_time(make_registry: MakeRegistry) -> None:
    make_registry().set_enabled("archive", True)
    assert make_registry().get("archive").enabled is True


def test_disabling_a_runtime_server_persists(make_registry: MakeRegistry) -> None:
    make_registry().add(ServerConfig(name="extra", url="http://127.0.0.1:1/mcp"))
    make_registry().set_enabled("extra", False)
    assert make_registry().get("extra").enabled is False


# The version counter


def test_every_change_bumps_the_version_and_reads_and_no_ops_do_not(registry: Registry) -> None:
    registry.add(ServerConfig(name="extra", url="http://127.0.0.1:1/mcp"))
    assert registry.version() == 1
    registry.set_enabled("extra", False)
    registry.set_enabled("notes", False)
    assert registry.version() == 3
    registry.set_enabled("notes", False)  # already disabled
    registry.servers()
    registry.get("extra")
    registry.record_health([HealthRow("notes", "disabled")])
    assert registry.version() == 3
    registry.remove("extra")
    assert registry.version() == 4


def test_a_change_through_one_registry_is_seen_by_another_on_the_same_database(make_registry: MakeRegistry) -> None:
    portal, cli = make_registry(), make_registry()
    seen = portal.version()
    cli.add(ServerConfig(name="extra", url="http://127.0.0.1:1/mcp"))
    assert portal.version() > seen
    assert "extra" in {s.name for s in portal.servers()}


def test_concurrent_adds_from_several_threads_all_land(registry: Registry) -> None:
    errors: list[BaseException] = []

    def add(index: int) -> None:
        try:
            registry.add(ServerConfig(name=f"s{index}", url=f"http://127.0.0.1:{1000 + index}/mcp"))
        except BaseException as exc:  # collected: an exception in a thread would otherwise vanish
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert registry.version() == 8
    assert len(registry.servers()) == len(CONFIG_SERVERS) + 8


def test_concurrent_adds_of_one_name_let_exactly_one_win(make_registry: MakeRegistry) -> None:
    registries = [make_registry() for _ in range(4)]
    barrier = threading.Barrier(len(registries))
    outcomes: list[str] = []

    def add(registry: Registry) -> None:
        barrier.wait()
        try:
            registry.add(ServerConfig(name="race", url="http://127.0.0.1:1/mcp"))
            outcomes.append("added")
        except ConfigError:
            outcomes.append("taken")
        except BaseException as exc:
            outcomes.append(repr(exc))

    threads = [threading.Thread(target=add, args=(r,)) for r in registries]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["added", "taken", "taken", "taken"]
    assert registries[0].version() == 1


# Health


def test_recorded_health_replaces_the_previous_row_of_each_server(make_registry: MakeRegistry) -> None:
    portal = make_registry()
    checked = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    portal.record_health([HealthRow("notes", "starting"), HealthRow("docs", "up", calls=3)])
    portal.record_health(
        [
            HealthRow(
                "notes",
                "down",
                checked_at=checked,
                protocol_version="2026-07-28",
                last_error="server 'notes' crashed",
                latency_p50_ms=4.5,
                calls=10,
                errors=2,
            )
        ]
    )
    health = make_registry().health()
    assert health["notes"] == HealthRow(
        "notes",
        "down",
        checked_at=checked,
        protocol_version="2026-07-28",
        last_error="server 'notes' crashed",
        latency_p50_ms=4.5,
        calls=10,
        errors=2,
    )
    assert health["docs"].state == "up"
    assert health["docs"].calls == 3


def test_recording_no_health_rows_is_a_no_op(registry: Registry) -> None:
    registry.record_health([])
    assert registry.health() == {}


def test_health_rows_refuse_unknown_states() -> None:
    with pytest.raises(ValueError, match="starting"):
        HealthRow("notes", "sleepy")  # type: ignore[arg-type]


def test_health_rows_are_json_friendly() -> None:
    row = HealthRow("notes", "up", checked_at=datetime(2026, 1, 2, tzinfo=UTC))
    assert row.to_mapping()["checked_at"] == "2026-01-02T00:00:00+00:00"
