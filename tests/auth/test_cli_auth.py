"""`portal users|clients|tokens|keys`, run in-process through `portal.cli.main`."""

from __future__ import annotations

import json
from pathlib import Path

import jwt
import pytest

from portal.auth.service import AuthService
from portal.cli import main
from portal.db import create_engine
from portal.settings import load_settings

CONFIG = """
[portal]
public_url = "https://portal.example"
database_url = "sqlite:///portal.db"

[auth]
max_minted_ttl = 7200

[auth.grants]
alice = ["tools:*", "codemode"]

[auth.group_grants]
ops = ["admin"]

[[auth.clients]]
client_id = "nightly"
client_secret = "env:NIGHTLY_SECRET"
scopes = ["tools:notes"]
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "portal.toml"
    path.write_text(CONFIG)
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def add_alice(config: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("a long password\n")
    status, out, _ = run(
        capsys, "users", "add", "alice", "--password-file", str(secret), "--group", "ops", "--config", str(config)
    )
    assert status == 0 and "added user 'alice'" in out


async def verify(config: Path, token: str, audience: str) -> object:
    settings = load_settings(config)
    engine = create_engine(settings)
    try:
        return await AuthService(settings, engine).verify_access_token(token, audience=audience)
    finally:
        engine.dispose()


async def test_users_add_list_and_block(config: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    add_alice(config, capsys, tmp_path)
    status, out, err = run(capsys, "users", "add", "alice", "--no-password", "--config", str(config))
    assert status == 1 and "already exists" in err
    status, out, _ = run(capsys, "users", "list", "--json", "--config", str(config))
    (alice,) = json.loads(out)
    assert alice["name"] == "alice" and alice["groups"] == ["ops"] and alice["blocked"] is False
    assert alice["grants"] == ["admin", "codemode", "tools:*"]
    assert "password" not in out.lower() and "argon2" not in out
    status, out, _ = run(capsys, "users", "block", "alice", "--config", str(config))
    assert status == 0 and "blocked user 'alice'" in out
    status, out, _ = run(capsys, "users", "list", "--config", str(config))
    assert "alice" in out and "yes" in out


async def test_a_user_add_without_a_password_source_off_a_terminal_is_bad_usage(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    status, _, err = run(capsys, "users", "add", "bob", "--config", str(config))
    assert status == 2 and "--password-file" in err


async def test_tokens_mint_prints_a_token_alone_that_the_portal_accepts(
    config: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    add_alice(config, capsys, tmp_path)
    resource = "https://portal.example/servers/notes/mcp"
    status, out, err = run(
        capsys,
        "tokens", "mint", "--user", "alice", "--scope", "tools:notes codemode",
        "--resource", resource, "--ttl", "600", "--config", str(config),
    )  # fmt: skip
    assert status == 0, err
    token = out.strip()
    assert out == token + "\n" and token.count(".") == 2
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["aud"] == resource and claims["exp"] - claims["iat"] == 600
    assert claims["scope"] == "codemode tools:notes" and claims["client_id"] == "portal-cli"
    principal = await verify(config, token, resource)
    assert principal.subject == "alice"  # type: ignore[attr-defined]

    # Listed, revoked by id, and then refused.
    status, out, _ = run(capsys, "tokens", "list", "--json", "--config", str(config))
    (listed,) = json.loads(out)
    assert listed["token_id"] == claims["jti"] and listed["status"] == "active"
    assert token not in out
    status, out, _ = run(capsys, "tokens", "revoke", claims["jti"], "--config", str(config))
    assert status == 0 and "revoked 1 token" in out
    with pytest.raises(Exception, match="revoked"):
        await verify(config, token, resource)


async def test_tokens_mint_never_goes_beyond_the_grant_or_the_ttl_cap(
    config: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    add_alice(config, capsys, tmp_path)
    base = ["tokens", "mint", "--user", "alice", "--config", str(config)]
    status, _, err = run(capsys, *base, "--ttl", "7201")
    assert status == 2 and "--ttl" in err
    status, _, err = run(capsys, *base, "--scope", "servers:write policies:write audit:read admin tools:*")
    assert status == 0  # admin through the ops group
    status, _, err = run(capsys, *base, "--scope", "tools:* nonsense")
    assert status == 1 and "not granted" in err
    status, _, err = run(capsys, *base, "--resource", "https://elsewhere.example/mcp")
    assert status == 1 and "not an endpoint" in err
    status, _, err = run(capsys, "tokens", "mint", "--user", "nobody", "--config", str(config))
    assert status == 1 and "unknown user" in err


async def test_tokens_revoke_by_user_and_a_blocked_user_cannot_mint(
    config: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    add_alice(config, capsys, tmp_path)
    for _ in range(2):
        assert run(capsys, "tokens", "mint", "--user", "alice", "--config", str(config))[0] == 0
    status, out, _ = run(capsys, "tokens", "revoke", "--user", "alice", "--config", str(config))
    assert status == 0 and "revoked 2 tokens" in out
    status, out, _ = run(capsys, "tokens", "list", "--all", "--config", str(config))
    assert out.count("revoked") == 2
    run(capsys, "users", "block", "alice", "--config", str(config))
    status, _, err = run(capsys, "tokens", "mint", "--user", "alice", "--config", str(config))
    assert status == 1 and "blocked" in err


async def test_clients_list_shows_configured_clients_and_revoke_stops_them(
    config: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    status, out, _ = run(capsys, "clients", "list", "--json", "--config", str(config))
    (nightly,) = json.loads(out)
    assert nightly["client_id"] == "nightly" and nightly["kind"] == "config" and nightly["revoked_at"] is None
    add_alice(config, capsys, tmp_path)
    _, token, _ = run(capsys, "tokens", "mint", "--user", "alice", "--config", str(config))
    status, out, _ = run(capsys, "clients", "revoke", "portal-cli", "--config", str(config))
    assert status == 0 and "revoked client 'portal-cli'" in out
    with pytest.raises(Exception, match="client has been revoked"):
        await verify(config, token.strip(), "https://portal.example/mcp")
    status, _, err = run(capsys, "clients", "revoke", "nobody", "--config", str(config))
    assert status == 1 and "unknown client" in err


async def test_keys_rotate_makes_a_new_key_and_keeps_the_old_one_published(
    config: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    add_alice(config, capsys, tmp_path)
    _, before, _ = run(capsys, "tokens", "mint", "--user", "alice", "--config", str(config))
    status, out, _ = run(capsys, "keys", "rotate", "--config", str(config))
    assert status == 0 and out.startswith("new signing key ")
    new_kid = out.split()[3]
    old_kid = jwt.get_unverified_header(before.strip())["kid"]
    assert f"{old_kid} stays published until" in out
    _, after, _ = run(capsys, "tokens", "mint", "--user", "alice", "--config", str(config))
    assert jwt.get_unverified_header(after.strip())["kid"] == new_kid
    assert (await verify(config, before.strip(), "https://portal.example/mcp")).subject == "alice"  # type: ignore[attr-defined]


def test_every_auth_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["users", "add"],
        ["users", "list"],
        ["users", "block"],
        ["clients", "list"],
        ["clients", "revoke"],
        ["tokens", "mint"],
        ["tokens", "list"],
        ["tokens", "revoke"],
        ["keys", "rotate"],
    ):
        status, out, _ = run(capsys, *argv, "--help")
        assert status == 0 and "--config" in out
