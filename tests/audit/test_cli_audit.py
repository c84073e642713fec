"""`portal audit ...` and `portal db upgrade`, run in-process through `main()`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy
from alembic.script import ScriptDirectory

from portal.audit import AuditLog
from portal.audit.chain import RECORDS
from portal.cli import main
from portal.db import create_engine
from portal.migrations import alembic_config
from portal.settings import load_settings


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "portal.toml"
    path.write_text('[portal]\ndatabase_url = "sqlite:///portal.db"\n')
    return path


def test_audit_commands(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["db", "upgrade", "--config", str(config)]) == 0
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert f"revision {head}" in capsys.readouterr().out
    settings = load_settings(config)
    engine = create_engine(settings)
    log = AuditLog.from_settings(settings, engine)
    for index in range(5):
        log.admin_sync("root", "servers.add", f"s{index}", {"password": "hunter2"})
    log.checkpoint()
    c = ["--config", str(config)]

    assert main(["audit", "tail", "-n", "2", "--json", *c]) == 0
    tail = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [record["tool"] for record in tail] == ["s3", "s4"]

    assert main(["audit", "search", "--tool", "s2", "--json", *c]) == 0
    found = json.loads(capsys.readouterr().out)["records"]
    assert len(found) == 1 and "hunter2" not in json.dumps(found)

    assert main(["audit", "show", found[0]["id"], *c]) == 0
    assert "servers.add" in capsys.readouterr().out

    assert main(["audit", "export", "--format", "csv", *c]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 6

    assert main(["audit", "stats", "--json", *c]) == 0
    assert json.loads(capsys.readouterr().out) == []

    assert main(["audit", "verify", *c]) == 0
    assert capsys.readouterr().out.startswith("ok")

    assert main(["audit", "prune", "--before", "2999-01-01", *c]) == 0
    assert "pruned 5 records" in capsys.readouterr().out
    assert main(["audit", "verify", *c]) == 0
    capsys.readouterr()

    with engine.begin() as connection:
        connection.execute(sqlalchemy.update(RECORDS).values(principal="mallory"))
    assert main(["audit", "verify", "--json", *c]) == 1
    assert json.loads(capsys.readouterr().out)["kind"] == "changed"
    assert main(["audit", "prune", *c]) == 2  # --before is required
    engine.dispose()


def test_every_change_made_from_the_command_line_is_an_admin_event(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config.write_text(config.read_text() + '\n[auth.grants]\nalice = ["tools:*"]\n')
    c = ["--config", str(config)]
    assert main(["servers", "add", "notes", "--url", "https://notes.example/mcp", *c]) == 0
    assert main(["servers", "disable", "notes", *c]) == 0
    assert main(["users", "add", "alice", "--no-password", *c]) == 0
    assert main(["tokens", "mint", "--user", "alice", "--scope", "tools:*", *c]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["users", "block", "alice", *c]) == 0
    assert main(["keys", "rotate", *c]) == 0
    assert main(["servers", "remove", "notes", *c]) == 0
    capsys.readouterr()
    assert main(["audit", "search", "--kind", "admin", "--json", *c]) == 0
    records = json.loads(capsys.readouterr().out)["records"][::-1]
    assert [r["method"] for r in records] == [
        "servers.add",
        "servers.disable",
        "users.add",
        "tokens.mint",
        "users.block",
        "keys.rotate",
        "servers.remove",
    ]
    assert all(r["principal"].startswith("cli:") and r["outcome"] == "ok" for r in records)
    assert records[3]["tool"] == "alice" and records[3]["details"]["details"]["scope"] == "tools:*"
    assert token not in json.dumps(records)  # the minted token itself is never recorded
    assert main(["audit", "verify", *c]) == 0
