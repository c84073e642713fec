"""Alembic migrations of every portal table (`portal db upgrade`).

`upgrade(engine)` runs them programmatically; `env.py` takes the engine's connection from
`config.attributes["connection"]`, and its target metadata is `portal.db.metadata()`. A database
made by `init_db` (tests, older portals) is adopted: when the tables exist but Alembic's version
table does not, the missing tables of the first revision are created and it is stamped at it.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import Engine

from portal.db import TABLE_MODULES, metadata

__all__ = ["INITIAL_REVISION", "alembic_config", "upgrade"]

INITIAL_REVISION = "0001"
HERE = Path(__file__).resolve().parent


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(HERE))
    return config


def upgrade(engine: Engine, revision: str = "head") -> str:
    """Migrate the database of `engine` to `revision`; returns the revision it is at."""
    import importlib

    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        current = MigrationContext.configure(connection).get_current_revision()
        if current is None and inspect(connection).has_table("registry_servers"):
            # Made by `init_db`: add whatever tables of the first revision it lacks, then stamp it.
            metadata().create_all(connection)
            command.stamp(config, INITIAL_REVISION)
        command.upgrade(config, revision)
        # Seed rows (the audit head, ...) exactly as `init_db` does.
        for module in TABLE_MODULES:
            seed = getattr(importlib.import_module(module), "seed_rows", None)
            if seed is not None:
                seed(connection)
        head = MigrationContext.configure(connection).get_current_revision()
    return head or ScriptDirectory.from_config(config).get_current_head() or "base"
