"""Alembic environment: the portal's metadata, on the connection `portal.migrations.upgrade` hands over."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from portal.db import metadata

config = context.config
target_metadata = metadata()


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("set sqlalchemy.url, or use `portal db upgrade`")
    engine = create_engine(url)
    with engine.begin() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


run()
