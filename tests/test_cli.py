"""The `portal` command line, run in-process through `main()` (and once as a real subprocess)."""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # importable without installing the project
    sys.path.insert(0, str(REPO_ROOT))

import portal.cli  # noqa: E402
import portal.demo  # noqa: E402
from portal.auth.users import Users  # noqa: E402
from portal.cli import build_parser, main  # noqa: E402
from portal.db import create_engine, init_db  # noqa: E402
from portal.demo import DEMO_USER, EXAMPLE_CONFIG, PASSWORD_FILE, prepare_demo, public_url_for  # noqa: E402
from portal.registry import HealthRow, Registry  # noqa: E402
from portal.settings import Settings, load_settings  # noqa: E402
from portal.toml_writer import dumps  # noqa: E402

CONFIG = """
[portal]
database_url = "sqlite:///portal.db"

[[servers]]
name = "notes"
module = "servers.notes"

[[servers]]
name = "docs"
command = "python"
args = ["-m", "servers.docs"]
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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths += _command_paths(sub, (*prefix, name))
    return paths


# Usage


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    paths = _command_paths(build_parser())
    assert ("servers", "add") in paths
    for path in paths:
        status, out, _ = run(capsys, *path, "--help")
        assert status == 0, path
        assert out.startswith("usage: portal"), path


def test_no_command_is_a_usage_error_with_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys)
    assert status == 2
    assert "usage: portal" in err


def test_add_without_a_target_is_a_usage_error(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "servers", "add", "extra", "--config", str(config))
    assert status == 2
    assert "--url --command --module" in err


def test_arg_env_and_cwd_go_only_with_command(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "servers", "add", "x", "--url", "http://h/mcp", "--arg", "a", "--config", str(config))
    assert status == 2
    assert "go with --command" in err


def test_env_must_be_key_equals_value(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(
        capsys, "servers", "add", "x", "--command", "tool", "--env", "NOVALUE", "--config", str(config)
    )
    assert status == 2
    assert "KEY=VALUE" in err


def test_config_and_data_cannot_both_be_given(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, _ = run(capsys, "servers", "list", "--config", str(config), "--data", str(config.parent))
    assert status == 2


# servers


def test_added_servers_are_listed_with_kind_source_and_target(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(
        capsys, "servers", "add", "clock", "--url", "http://127.0.0.1:8765/mcp", "--config", str(config)
    )
    assert status == 0
    assert "added server 'clock'" in out
    status, out, _ = run(capsys, "servers", "list", "--config", str(config))
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["NAME", "KIND", "SOURCE", "TARGET"]
    assert [line.split()[0] for line in lines[1:]] == ["docs", "notes", "clock"]
    assert lines[3].split()[:5] == ["clock", "remote", "runtime", "http://127.0.0.1:8765/mcp", "yes"]
    assert "python -m servers.docs" in lines[1]


def test_add_stores_every_option(config: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    argv = ["servers", "add", "local", "--command", "node", "--arg=--port", "--arg", "3000", "--env", "TOKEN=env:T"]
    argv += ["--cwd", str(tmp_path), "--timeout", "5", "--protocol", "2026-07-28", "--allow", "read", "--allow", "list"]
    argv += ["--deny", "list", "--disabled", "--config", str(config)]
    status, out, _ = run(capsys, *argv)
    assert status == 0, out
    status, out, _ = run(capsys, "servers", "list", "--json", "--config", str(config))
    record = next(r for r in json.loads(out) if r["name"] == "local")
    assert record == {
        "name": "local",
        "command": "node",
        "args": ["--port", "3000"],
        "env": {"TOKEN": "env:T"},
        "cwd": str(tmp_path.resolve()),
        "auth": "none",
        "timeout": 5.0,
        "enabled": False,
        "tools_allow": ["read", "list"],
        "tools_deny": ["list"],
        "protocol": "2026-07-28",
        "trust_new_tools": False,
        "kind": "stdio",
        "source": "runtime",
        "health": None,
        "tools": None,
    }


def test_list_json_shows_the_health_the_running_portal_recorded(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = load_settings(config)
    engine = create_engine(settings)
    init_db(engine)
    Registry(settings, engine).record_health(
        [HealthRow("notes", "down", protocol_version="2026-07-28", last_error="server 'notes' crashed")]
    )
    engine.dispose()
    status, out, _ = run(capsys, "servers", "list", "--json", "--config", str(config))
    records = {r["name"]: r for r in json.loads(out)}
    assert status == 0
    assert records["notes"]["health"]["state"] == "down"
    assert records["notes"]["health"]["last_error"] == "server 'notes' crashed"
    assert records["docs"]["health"] is None
    assert records["notes"]["source"] == "config"
    status, out, _ = run(capsys, "servers", "list", "--config", str(config))
    notes = next(line for line in out.splitlines() if line.startswith("notes"))
    assert "down" in notes
    assert "2026-07-28" in notes
    assert "server 'notes' crashed" in notes


def test_disable_and_enable_change_what_list_shows(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "servers", "disable", "notes", "--config", str(config))[:2] == (0, "disabled server 'notes'\n")
    _, out, _ = run(capsys, "servers", "list", "--json", "--config", str(config))
    assert {r["name"]: r["enabled"] for r in json.loads(out)} == {"docs": True, "notes": False}
    assert run(capsys, "servers", "enable", "notes", "--config", str(config))[0] == 0
    _, out, _ = run(capsys, "servers", "list", "--json", "--config", str(config))
    assert {r["name"]: r["enabled"] for r in json.loads(out)} == {"docs": True, "notes": True}


def test_remove_forgets_a_runtime_server(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "servers", "add", "extra", "--module", "servers.clock", "--config", str(config))
    status, out, _ = run(capsys, "servers", "remove", "extra", "--config", str(config))
    assert (status, out) == (0, "removed server 'extra'\n")
    status, out, _ = run(capsys, "servers", "list", "--json", "--config", str(config))
    assert [r["name"] for r in json.loads(out)] == ["docs", "notes"]


def test_removing_a_config_server_exits_1_with_a_message_and_no_traceback(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run(capsys, "servers", "remove", "notes", "--config", str(config))
    assert status == 1
    assert out == ""
    assert err.startswith("portal: error: server 'notes' is defined in portal.toml")
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["servers", "enable", "ghost"], "unknown server 'ghost'"),
        (["servers", "add", "Bad", "--module", "m"], "must match"),
        (["servers", "add", "notes", "--module", "m"], "already exists"),
        (["servers", "add", "x", "--url", "ftp://h/mcp"], "url must be http(s)"),
    ],
    ids=["unknown", "bad-name", "taken", "bad-url"],
)
def test_refused_changes_exit_1_with_the_reason(
    config: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    status, _, err = run(capsys, *argv, "--config", str(config))
    assert status == 1
    assert err.startswith("portal: error: ")
    assert message in err


def test_a_missing_config_file_exits_1_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "servers", "list", "--config", str(tmp_path / "nope.toml"))
    assert status == 1
    assert "nope.toml" in err
    assert "does not exist" in err


def test_the_config_defaults_to_portal_config_then_portal_toml(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("PORTAL_CONFIG", str(config))
    status, out, _ = run(capsys, "servers", "list", "--json")
    assert status == 0
    assert len(json.loads(out)) == 2
    monkeypatch.delenv("PORTAL_CONFIG")
    status, _, err = run(capsys, "servers", "list")
    assert status == 1
    assert "'portal.toml' does not exist" in err
    monkeypatch.chdir(config.parent)
    assert run(capsys, "servers", "list")[0] == 0


def test_data_means_the_portal_toml_in_that_folder(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "servers", "list", "--json", "--data", str(config.parent))
    assert status == 0
    assert len(json.loads(out)) == 2
    status, _, err = run(capsys, "servers", "list", "--data", str(config.parent / "missing"))
    assert status == 1
    assert "not a demo data folder" in err


def test_python_m_portal_servers_list_runs_in_a_subprocess(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "servers", "add", "extra", "--url", "http://127.0.0.1:1/mcp", "--config", str(config))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "portal", "servers", "list", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        cwd=config.parent,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert [line.split()[0] for line in result.stdout.splitlines()[1:]] == ["docs", "notes", "extra"]
    bad = subprocess.run(
        [sys.executable, "-m", "portal", "servers", "remove", "docs", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert bad.returncode == 1
    assert bad.stderr.startswith("portal: error: ")
    assert "Traceback" not in bad.stderr


# serve


def test_serve_exits_1_when_its_port_is_taken(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "portal.toml"
    config.write_text('[portal]\ndatabase_url = "sqlite:///portal.db"\n')
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        status, _, _ = run(capsys, "serve", "--config", str(config), "--port", str(port), "--log-level", "critical")
    assert status == 1


# demo


def test_the_demo_config_has_absolute_paths_and_keeps_its_data_in_the_folder(tmp_path: Path) -> None:
    config = prepare_demo(tmp_path / "data", host="127.0.0.1", port=8123)
    settings = load_settings(config)
    assert config == (tmp_path / "data" / "portal.toml").resolve()
    assert settings.public_url == "http://127.0.0.1:8123"
    assert settings.resolved_database_url == f"sqlite:///{tmp_path.resolve() / 'data' / 'portal.db'}"
    assert Path(settings.policies_dir).is_absolute()
    example = tomllib.loads(EXAMPLE_CONFIG.read_text())
    assert [s.name for s in settings.servers] == [s["name"] for s in example["servers"]]
    for server in settings.servers:
        if server.command is not None:
            assert server.cwd is not None
            assert Path(server.cwd).is_dir()


def test_the_demo_public_url_of_a_wildcard_host_is_loopback() -> None:
    assert public_url_for("0.0.0.0", 9000) == "http://127.0.0.1:9000"
    assert public_url_for("::1", 9000) == "http://[::1]:9000"
    assert public_url_for("localhost", 80) == "http://localhost:80"


def test_the_toml_writer_output_reads_back_as_the_same_data() -> None:
    data: dict[str, Any] = {
        "top": 1.5,
        "odd key": [1, 2],
        "portal": {"public_url": 'http://h/"q"', "flag": True, "nested": {"a": "line\nbreak\t\x7f"}},
        "servers": [{"name": "a", "args": ["-m", "x"], "env": {"K": "v"}}, {"name": "b", "timeout": 10}],
    }
    assert tomllib.loads(dumps(data, header="a\nheader")) == data
    assert tomllib.loads(dumps(tomllib.loads(EXAMPLE_CONFIG.read_text()))) == tomllib.loads(EXAMPLE_CONFIG.read_text())


@pytest.fixture
def demo_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """The example config with the clock companion on a free port; returns that port."""
    port = _free_port()
    example = tmp_path / "examples" / "portal.toml"
    example.parent.mkdir()
    text = EXAMPLE_CONFIG.read_text().replace("127.0.0.1:8765", f"127.0.0.1:{port}")
    # Paths in the example are relative to examples/ in the repository.
    example.write_text(
        text.replace('"../policies"', f'"{REPO_ROOT / "policies"}"').replace('cwd = ".."', f'cwd = "{REPO_ROOT}"')
    )
    monkeypatch.setattr(portal.demo, "EXAMPLE_CONFIG", example)
    monkeypatch.setenv("NOTES_DB", "restored-after-the-test")
    return port


def test_demo_runs_the_portal_with_the_clock_companion_and_stops_it_after(
    demo_example: int, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    served: list[tuple[Settings, str, int, bool]] = []

    def fake_serve(
        settings: Settings, *, host: str, port: int, log_level: str = "info", access_log: bool = False
    ) -> int:
        served.append((settings, host, port, _accepts(demo_example)))
        return 0

    monkeypatch.setattr(portal.cli, "serve", fake_serve)
    data = tmp_path / "demo-data"
    status, out, err = run(capsys, "demo", "--port", "8123", "--data", str(data))
    assert status == 0, err
    [(settings, host, port, clock_was_up)] = served
    assert (host, port, clock_was_up) == ("127.0.0.1", 8123, True)
    assert settings.resolved_database_url == f"sqlite:///{data.resolve() / 'portal.db'}"
    assert os.environ["NOTES_DB"] == str(data.resolve() / "notes.db")
    assert "http://127.0.0.1:8123/mcp" in out
    for name in ("notes", "docs", "clock"):
        assert f"http://127.0.0.1:8123/servers/{name}/mcp" in out
    assert str(data.resolve()) in out
    assert not _accepts(demo_example)
    # The person logs in as `demo` with the password printed; a script mints a token instead.
    password = (data / PASSWORD_FILE).read_text().strip()
    assert f"log in as     demo, password {password}" in out
    assert f"portal tokens mint --data {data.resolve()} --user demo --resource http://127.0.0.1:8123/mcp" in out


def _demo_once(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, data: Path) -> str:
    monkeypatch.setattr(portal.cli, "serve", lambda *args, **kwargs: 0)
    status, out, err = run(capsys, "demo", "--port", "8123", "--data", str(data))
    assert status == 0, err
    return out


def test_the_demo_user_logs_in_with_the_password_of_its_data_folder_and_may_use_every_tool(
    demo_example: int, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "demo-data"
    _demo_once(capsys, monkeypatch, data)
    password_file = data / PASSWORD_FILE
    password = password_file.read_text().strip()
    assert len(password) >= 16
    assert password_file.stat().st_mode & 0o777 == 0o600
    settings = load_settings(data / "portal.toml")
    assert settings.auth.grants[DEMO_USER] == ("tools:*", "codemode")
    assert settings.auth.allow_loopback_http
    # The key that encrypts the signing keys is the data folder's own, made once, readable by its owner only.
    key_file = data.resolve() / "portal-master.key"
    assert settings.auth.master_key == f"file:{key_file}"
    assert key_file.stat().st_mode & 0o777 == 0o600
    users = Users(create_engine(settings))
    assert users.authenticate(DEMO_USER, password) is not None
    assert users.authenticate(DEMO_USER, password + "x") is None

    # The command the demo prints gives a script a token for /mcp with everything the user was granted.
    status, token, err = run(
        capsys, "tokens", "mint", "--data", str(data), "--user", "demo", "--resource", "http://127.0.0.1:8123/mcp"
    )
    assert status == 0, err
    claims = json.loads(base64.urlsafe_b64decode(token.strip().split(".")[1] + "=="))
    assert (claims["sub"], claims["aud"], claims["scope"]) == ("demo", "http://127.0.0.1:8123/mcp", "codemode tools:*")


def test_a_demo_run_again_on_its_data_folder_keeps_the_password_and_a_new_folder_gets_another(
    demo_example: int, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _demo_once(capsys, monkeypatch, tmp_path / "one")
    again = _demo_once(capsys, monkeypatch, tmp_path / "one")
    other = _demo_once(capsys, monkeypatch, tmp_path / "two")

    def password(out: str) -> str:
        return next(line for line in out.splitlines() if "log in as" in line).rsplit(" ", 1)[1]

    assert password(first) == password(again) == (tmp_path / "one" / PASSWORD_FILE).read_text().strip()
    assert password(other) != password(first)


def test_demo_stops_the_companion_when_interrupted(
    demo_example: int, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(
        settings: Settings, *, host: str, port: int, log_level: str = "info", access_log: bool = False
    ) -> int:
        assert _accepts(demo_example)
        raise KeyboardInterrupt

    monkeypatch.setattr(portal.cli, "serve", interrupted)
    status, _, _ = run(capsys, "demo", "--data", str(tmp_path / "d"))
    assert status == 130
    assert not _accepts(demo_example)


def test_demo_refuses_to_start_when_the_companion_port_is_taken(
    demo_example: int, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(portal.cli, "serve", lambda *a, **k: pytest.fail("must not serve"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", demo_example))
        busy.listen()
        status, _, err = run(capsys, "demo", "--data", str(tmp_path / "d"))
    assert status == 1
    assert f"port {demo_example} is already in use" in err


def test_demo_without_the_example_config_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(portal.demo, "EXAMPLE_CONFIG", tmp_path / "gone" / "portal.toml")
    status, _, err = run(capsys, "demo", "--data", str(tmp_path / "d"))
    assert status == 1
    assert "gone/portal.toml" in err
    assert "missing" in err
