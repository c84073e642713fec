"""Verification caches what cannot change, and never what can: access is lost on the very next request.

`verify_access_token` keeps a token's verified claims until it expires and its database verdict
while the revision counter is unchanged; these tests make the changes from another engine or
another process on the same database, as the CLI does.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

import portal.auth.tokens as tokens_module
from portal.auth.errors import InvalidToken
from portal.auth.service import AuthService
from portal.auth.settings import AuthSettings
from portal.db import create_engine
from portal.settings import Settings

BASE = "http://portal.test"
MCP = f"{BASE}/mcp"
ROOT = Path(__file__).resolve().parents[2]


def _settings(tmp_path: Path, database_url: str | None = None) -> Settings:
    return Settings(
        public_url=BASE,
        database_url=database_url or f"sqlite:///{tmp_path}/portal.db",
        base_dir=str(tmp_path),
        auth=AuthSettings(grants={"alice": ("tools:*",)}),
    )


async def _service(settings: Settings) -> AuthService:
    service = AuthService(settings, create_engine(settings))
    await service.start()
    return service


async def _stop(service: AuthService) -> None:
    await service.close()
    service.engine.dispose()


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[AuthService, AuthService]]:
    """The portal, and a second service (its own engine) on the same SQLite file, with user alice."""
    settings = _settings(tmp_path)
    portal = await _service(settings)
    other = await _service(settings)
    portal.users.add("alice", "correct horse battery staple")
    try:
        yield portal, other
    finally:
        await _stop(other)
        await _stop(portal)


def _in_other_process(tmp_path: Path, code: str) -> None:
    """Run `code` with `auth` (an `AuthService` on the same database) in a new Python process."""
    script = textwrap.dedent(
        f"""
        from portal.auth.service import AuthService
        from portal.auth.settings import AuthSettings
        from portal.db import create_engine
        from portal.settings import Settings

        settings = Settings(
            public_url={BASE!r},
            database_url={f"sqlite:///{tmp_path}/portal.db"!r},
            base_dir={str(tmp_path)!r},
            auth=AuthSettings(grants={{"alice": ("tools:*",)}}),
        )
        auth = AuthService(settings, create_engine(settings))
        """
    ) + textwrap.dedent(code)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT, timeout=60)


async def _warm(service: AuthService, token: str) -> None:
    """Verify twice, so that both caches hold the token."""
    for _ in range(2):
        assert (await service.verify_access_token(token, audience=MCP)).subject == "alice"


async def _refused(service: AuthService, token: str, reason: str, audience: str = MCP) -> None:
    with pytest.raises(InvalidToken) as caught:
        await service.verify_access_token(token, audience=audience)
    assert caught.value.description == reason


async def test_a_user_blocked_through_another_engine_is_refused_on_the_next_request(
    pair: tuple[AuthService, AuthService],
) -> None:
    portal, other = pair
    token = portal.mint_access_token("alice", "cli-test", ["tools:*"], MCP, 600)
    await _warm(portal, token)
    other.users.set_blocked("alice", True)
    await _refused(portal, token, "the token's user is blocked or unknown")
    other.users.set_blocked("alice", False)
    await _warm(portal, token)


async def test_a_client_revoked_through_another_engine_is_refused_on_the_next_request(
    pair: tuple[AuthService, AuthService],
) -> None:
    portal, other = pair
    token = portal.mint_access_token("alice", "cli-test", ["tools:*"], MCP, 600)
    await _warm(portal, token)
    other.clients.revoke("cli-test")
    await _refused(portal, token, "the token's client has been revoked")


async def test_a_token_revoked_through_another_engine_is_refused_on_the_next_request(
    pair: tuple[AuthService, AuthService],
) -> None:
    portal, other = pair
    token = portal.mint_access_token("alice", "cli-test", ["tools:*"], MCP, 600)
    kept = portal.mint_access_token("alice", "cli-test", ["tools:*"], MCP, 600)
    await _warm(portal, token)
    await _warm(portal, kept)
    other.context.tokens.revoke(str(_claims(portal, token)["jti"]))
    await _refused(portal, token, "the token has been revoked")
    await _warm(portal, kept)  # another token of the same user is unaffected


async def test_a_users_tokens_revoked_through_another_engine_are_refused_on_the_next_request(
    pair: tuple[AuthService, AuthService],
) -> None:
    portal, other = pair
    token = portal.mint_access_token("alice", "cli-test", ["tools:*"], MCP, 600)
    await _warm(portal, token)
    assert other.context.families.revoke_subject("alice") == 1
    await _refused(portal, token, "the token has been revoked")


async def test_changes_made_by_another_process_are_seen_on_the_next_request(
    pair: tuple[AuthService, AuthService], tmp_path: Path
) -> None:
    portal, _ = pair
    token = portal.mint_access_token("alice", "cli-test", ["tools:*"], MCP, 600)
    await _warm(portal, token)
    _in_other_process(tmp_path, 'auth.users.set_blocked("alice", True)')
    await _refused(portal, token, "the token's user is blocked or unknown")
    _in_other_process(tmp_path, 'auth.users.set_blocked("alice", False)')
    await _warm(portal, token)
    _in_other_process(tmp_path, 'auth.clients.revoke("cli-test")')
    await _refused(portal, token, "the token's client has been revoked")

    fresh = portal.mint_access_token("alice", "other-client", ["tools:*"], MCP, 600)
    await _warm(portal, fresh)
    jti = str(_claims(portal, fresh)["jti"])
    _in_other_process(tmp_path, f"auth.context.tokens.revoke({jti!r})")
    await _refused(portal, fresh, "the token has been revoked")


async def test_a_cached_token_still_expires_on_time(
    pair: tuple[AuthService, AuthService], monkeypatch: pytest.MonkeyPatch
) -> None:
    portal, _ = pair
    token = portal.mint_access_token("alice", "cli-test", ["tools:*"], MCP, 60)
    await _warm(portal, token)

    class Later:
        """`time` as seen 60 s + leeway later, for the token module only."""

        @staticmethod
        def time() -> float:
            return time.time() + 60 + tokens_module.LEEWAY_SECONDS + 1

    monkeypatch.setattr(tokens_module, "time", Later)
    await _refused(portal, token, "the token has expired")


async def test_a_cached_token_is_still_refused_for_another_audience(pair: tuple[AuthService, AuthService]) -> None:
    portal, _ = pair
    token = portal.mint_access_token("alice", "cli-test", ["tools:*"], MCP, 600)
    await _warm(portal, token)
    await _refused(portal, token, "the token is not for this endpoint", audience=f"{BASE}/other/mcp")
    await _warm(portal, token)


async def test_a_tampered_token_is_not_taken_from_the_cache(pair: tuple[AuthService, AuthService]) -> None:
    portal, _ = pair
    token = portal.mint_access_token("alice", "cli-test", ["tools:*"], MCP, 600)
    await _warm(portal, token)
    head, body, signature = token.split(".")
    forged = f"{head}.{body}.{signature[:-4]}{'AAAA' if signature[-4:] != 'AAAA' else 'BBBB'}"
    with pytest.raises(InvalidToken):
        await portal.verify_access_token(forged, audience=MCP)


def _claims(service: AuthService, token: str) -> dict[str, Any]:
    claims = service.context.tokens.cached_claims(token, audience=MCP)
    assert claims is not None
    return claims


@pytest.mark.postgres
async def test_changes_through_another_engine_are_seen_on_the_next_request_on_postgres(
    tmp_path: Path, postgres_url: str
) -> None:
    schema = f"portal_auth_{uuid.uuid4().hex[:12]}"
    admin = create_engine(Settings(database_url=postgres_url))
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in postgres_url else "?"
    settings = _settings(tmp_path, f"{postgres_url}{separator}options=-csearch_path%3D{schema}")
    portal = await _service(settings)
    other = await _service(settings)
    try:
        portal.users.add("alice", "correct horse battery staple")
        token = portal.mint_access_token("alice", "cli-test", ["tools:*"], MCP, 600)
        await _warm(portal, token)
        other.users.set_blocked("alice", True)
        await _refused(portal, token, "the token's user is blocked or unknown")
        other.users.set_blocked("alice", False)
        await _warm(portal, token)
        other.context.tokens.revoke(str(_claims(portal, token)["jti"]))
        await _refused(portal, token, "the token has been revoked")

        fresh = portal.mint_access_token("alice", "cli-test", ["tools:*"], MCP, 600)
        await _warm(portal, fresh)
        other.clients.revoke("cli-test")
        await _refused(portal, fresh, "the token's client has been revoked")
    finally:
        await _stop(other)
        await _stop(portal)
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
