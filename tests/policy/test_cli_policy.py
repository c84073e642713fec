"""`portal policy check` against the declared catalog (`tools.json`), run in-process through `main()`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from portal.cli import main

ROOT = Path(__file__).resolve().parents[2] / "policies"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    target = tmp_path / "policies"
    shutil.copytree(ROOT, target)
    return target


def test_the_shipped_policies_check(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "check", "--policies", str(folder)]) == 0
    assert capsys.readouterr().out.startswith("ok: ")


def test_an_action_the_declared_catalog_lacks_fails_the_check(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (folder / "typo.cedar").write_text(
        '@id("typo")\npermit (principal, action == Action::"notes_craete_note", resource);\n'
    )
    assert main(["policy", "check", "--policies", str(folder)]) == 1
    out = capsys.readouterr().out
    assert "typo.cedar:1 (typo)" in out and "notes_craete_note" in out


def test_a_syntax_error_names_file_and_line(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (folder / "broken.cedar").write_text('\n\n@id("x")\npermit (principal, action, resource')
    assert main(["policy", "check", "--policies", str(folder)]) == 1
    assert "broken.cedar:3" in capsys.readouterr().out
