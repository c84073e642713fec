"""Signing keys: encrypted at rest under the master key, rotated without breaking live tokens."""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from sqlmodel import Session, select

from portal.auth.crypto import KEY_FILE_NAME
from portal.auth.errors import InvalidToken, KeyUnavailable
from portal.auth.service import AuthService
from portal.auth.settings import AuthSettings
from portal.auth.tables import SigningKeyRow
from portal.db import create_engine, init_db
from portal.errors import ConfigError
from portal.settings import Settings

BASE = "http://127.0.0.1:8000"
MCP = f"{BASE}/mcp"


def make_settings(tmp_path: Path, **auth: object) -> Settings:
    return Settings(
        public_url=BASE,
        database_url=f"sqlite:///{tmp_path}/portal.db",
        base_dir=str(tmp_path),
        auth=AuthSettings(**auth),  # type: ignore[arg-type]
    )


@pytest.fixture
def service(tmp_path: Path) -> Iterator[AuthService]:
    settings = make_settings(tmp_path)
    engine = create_engine(settings)
    init_db(engine)
    auth = AuthService(settings, engine)
    auth.users.add("alice", None)
    yield auth
    engine.dispose()


def kid_of(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


async def test_rotation_keeps_old_tokens_valid_and_signs_new_ones_with_the_new_key(service: AuthService) -> None:
    old = service.mint_access_token("alice", "c", ["tools:*"], MCP, 300)
    new_kid = service.context.keys.rotate()
    new = service.mint_access_token("alice", "c", ["tools:*"], MCP, 300)
    assert kid_of(new) == new_kid != kid_of(old)
    assert {k["kid"] for k in service.context.keys.jwks()["keys"]} == {kid_of(old), new_kid}
    assert (await service.verify_access_token(old, audience=MCP)).subject == "alice"
    assert (await service.verify_access_token(new, audience=MCP)).subject == "alice"


async def test_a_retired_key_is_dropped_once_its_tokens_have_expired(service: AuthService) -> None:
    old = service.mint_access_token("alice", "c", ["tools:*"], MCP, 300)
    service.context.keys.rotate()
    with Session(service.engine) as session:
        row = session.get(SigningKeyRow, kid_of(old))
        assert row is not None and row.drop_after is not None
        # The grace covers the longest life a token can have (max_minted_ttl), plus a minute.
        assert row.drop_after >= time.time() + service.settings.auth.max_minted_ttl
        row.drop_after = int(time.time()) - 1
        session.add(row)
        session.commit()
    assert service.context.keys.prune() == 1
    assert kid_of(old) not in {k["kid"] for k in service.context.keys.jwks()["keys"]}
    fresh = AuthService(service.settings, service.engine)  # another process: no cached public keys
    with pytest.raises(InvalidToken, match="unknown key"):
        await fresh.verify_access_token(old, audience=MCP)


async def test_a_key_rotated_by_another_process_is_picked_up_by_a_running_one(service: AuthService) -> None:
    running = service
    running.context.keys.current()
    cli = AuthService(service.settings, service.engine)
    cli.context.keys.rotate()
    token = cli.mint_access_token("alice", "c", ["codemode"], MCP, 60)
    assert running.context.keys.cached_public_key(kid_of(token)) is None
    assert (await running.verify_access_token(token, audience=MCP)).scopes == {"codemode"}


def test_private_keys_are_stored_encrypted_and_need_the_master_key(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    engine = create_engine(settings)
    init_db(engine)
    key = AuthService(settings, engine).context.keys.current()
    raw = key.private.private_bytes_raw()
    with Session(engine) as session:
        (row,) = session.exec(select(SigningKeyRow)).all()
    assert raw not in row.private_key and len(row.private_key) == 12 + 32 + 16
    (tmp_path / KEY_FILE_NAME).write_text("11" * 32)
    with pytest.raises(KeyUnavailable):
        AuthService(settings, engine).context.keys.current()
    engine.dispose()


def test_without_a_configured_master_key_a_private_key_file_is_made_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(tmp_path)
    engine = create_engine(settings)
    init_db(engine)
    with caplog.at_level(logging.WARNING, logger="portal.auth"):
        AuthService(settings, engine).context.keys.current()
    path = tmp_path / KEY_FILE_NAME
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert "master_key is not set" in caplog.text
    engine.dispose()


def test_a_configured_master_key_is_used_and_no_file_is_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORTAL_TEST_MASTER", "ab" * 32)
    settings = make_settings(tmp_path, master_key="env:PORTAL_TEST_MASTER")
    engine = create_engine(settings)
    init_db(engine)
    AuthService(settings, engine).context.keys.current()
    assert not (tmp_path / KEY_FILE_NAME).exists()
    monkeypatch.setenv("PORTAL_TEST_MASTER", "too short")
    with pytest.raises(ConfigError, match="32 random bytes"):
        _ = AuthService(settings, engine).context
    engine.dispose()
