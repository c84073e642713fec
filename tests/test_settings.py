"""Settings come from portal.toml and PORTAL_* variables, and refuse what they do not understand."""

from __future__ import annotations

from pathlib import Path

import pytest

from portal.errors import ConfigError
from portal.settings import ServerConfig, load_settings, resolve_secret


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "portal.toml"
    path.write_text(text)
    return path


def test_the_file_and_the_environment_make_one_frozen_settings_object(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        '[portal]\npublic_url = "http://127.0.0.1:9000/"\n[[servers]]\nname = "notes"\nmodule = "servers.notes"\n',
    )
    settings = load_settings(path, env={"PORTAL_DATABASE_URL": "sqlite:///x.db"})
    assert settings.public_url == "http://127.0.0.1:9000"
    assert settings.resolved_database_url == f"sqlite:///{tmp_path / 'x.db'}"
    assert settings.servers == (ServerConfig(name="notes", module="servers.notes"),)
    with pytest.raises(AttributeError):
        settings.public_url = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[portal]\nbogus = 1\n", "unknown keys bogus"),
        ('[[servers]]\nname = "Bad_Name"\nurl = "http://x"\n', "must match"),
        ('[[servers]]\nname = "a"\nurl = "http://x"\nmodule = "m"\n', "exactly one of"),
        ('[[servers]]\nname = "a"\n', "exactly one of"),
        ('[[servers]]\nname = "a"\nurl = "ftp://x"\n', "http(s)"),
        ('[[servers]]\nname = "a"\nurl = "http://x"\n[[servers]]\nname = "a"\nurl = "http://y"\n', "duplicate"),
        ('[[servers]]\nname = "a"\nurl = "http://x"\nprotocol = "1999"\n', "protocol"),
        ('[[servers]]\nname = "a"\nurl = "http://x"\ncolour = "red"\n', "unknown keys colour"),
        ("[portal\n", "portal.toml"),
    ],
)
def test_invalid_configuration_is_refused_with_a_clear_reason(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        load_settings(_write(tmp_path, text), env={})


def test_secrets_are_references_never_literals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORTAL_TEST_SECRET", "s3cret")
    (tmp_path / "key").write_text("from-file\n")
    assert resolve_secret("env:PORTAL_TEST_SECRET") == "s3cret"
    assert resolve_secret("file:key", base_dir=str(tmp_path)) == "from-file"
    with pytest.raises(ConfigError) as refused:
        resolve_secret("s3cret")
    assert "s3cret" not in str(refused.value)
    with pytest.raises(ConfigError):
        resolve_secret("env:PORTAL_TEST_UNSET_VARIABLE")
