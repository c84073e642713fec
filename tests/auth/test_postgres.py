"""The authorization server on PostgreSQL (the scale-out database): the same flows, the same guarantees."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from auth_kit import Kit
from auth_support import Browser, start_portal
from sqlalchemy import text

from portal.auth.settings import AuthSettings
from portal.db import create_engine
from portal.settings import Settings

pytestmark = pytest.mark.postgres


@pytest.fixture
async def kit(tmp_path: Path, postgres_url: str) -> AsyncIterator[Kit]:
    # A schema per test, dropped afterwards with every table in it.
    schema = f"portal_auth_{uuid.uuid4().hex[:12]}"
    admin = create_engine(Settings(database_url=postgres_url))
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in postgres_url else "?"
    url = f"{postgres_url}{separator}options=-csearch_path%3D{schema}"
    portal = await start_portal(tmp_path, auth=AuthSettings(grants={"alice": ("tools:*",)}), database_url=url)
    browser = Browser(portal)
    try:
        async with Kit(portal, browser) as kit:
            yield kit
    finally:
        await browser.close()
        await portal.stop()
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


async def test_codes_refresh_rotation_and_revocation_work_on_postgres(kit: Kit) -> None:
    code = await kit.code(scope="tools:*")
    status, body = await kit.exchange_code(code)
    assert status == 200, body
    assert await kit.verify(body["access_token"]) == (200, None)
    assert kit.outcome(await kit.exchange_code(code)) == (400, "invalid_grant")
    assert await kit.verify(body["access_token"]) == (401, "invalid_token")

    fresh = await kit.tokens(scope="tools:*")
    status, rotated = await kit.refresh(fresh["refresh_token"])
    assert status == 200
    assert kit.outcome(await kit.refresh(fresh["refresh_token"])) == (400, "invalid_grant")
    assert await kit.verify(rotated["access_token"]) == (401, "invalid_token")


async def test_clients_users_and_keys_work_on_postgres(kit: Kit) -> None:
    service = kit.portal.service
    token = service.mint_access_token("alice", "cli-test", ["tools:*"], kit.portal.mcp, 60)
    service.context.keys.rotate()
    assert await kit.verify(token) == (200, None)
    service.clients.revoke("cli-test")
    assert await kit.verify(token) == (401, "invalid_token")
    assert {row.kind for row in service.clients.listing()} >= {"dynamic", "internal"}
    service.users.set_blocked("alice", True)
    assert service.users.authenticate("alice", "correct horse battery") is None
