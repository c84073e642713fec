"""Audit log fixtures: a database per test (SQLite file, or a fresh PostgreSQL schema) and a log on it."""

from __future__ import annotations

import contextlib
import secrets
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy.engine import Engine

from portal.audit import AuditLog, AuditSettings
from portal.auth.crypto import MasterKey
from portal.db import create_engine, engine_url, init_db
from portal.settings import Settings

MASTER = MasterKey(bytes(range(32)))


def postgres_engine(url: str, schema: str, *, port: int | None = None) -> Engine:
    # Everything in the URL, none in connect_args: the audit shipper gets the URL alone.
    parts = sqlalchemy.make_url(engine_url(url))
    if port is not None:
        parts = parts.set(host="127.0.0.1", port=port)
    parts = parts.update_query_dict({"options": f"-csearch_path={schema}", "connect_timeout": "2"})
    return sqlalchemy.create_engine(parts.render_as_string(hide_password=False), pool_pre_ping=True)


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        engine = create_engine(Settings(database_url=f"sqlite:///{tmp_path / 'portal.db'}"))
        init_db(engine)
        yield engine
        engine.dispose()
        return
    url = request.getfixturevalue("postgres_url")
    schema = "audit_" + secrets.token_hex(6)
    admin = sqlalchemy.create_engine(engine_url(url))
    with admin.begin() as connection:
        connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
    engine = postgres_engine(url, schema)
    init_db(engine)
    yield engine
    engine.dispose()
    with admin.begin() as connection:
        connection.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
    admin.dispose()


def make_log(engine: Engine, tmp_path: Path, **settings: Any) -> AuditLog:
    settings.setdefault("checkpoint_interval_seconds", 3600.0)
    return AuditLog(engine, AuditSettings(**settings), master=MASTER, spool_path=tmp_path / "spool.jsonl")


class TcpProxy:
    """A loopback TCP proxy that can be stopped (every connection cut) and started again on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._server: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(64)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def stop(self) -> None:
        with self._lock:
            server, self._server = self._server, None
            if server is not None:
                server.close()
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._server is not server:  # stopped while connecting: cut this one too
                    client.close()
                    upstream.close()
                    continue
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
