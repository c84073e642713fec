"""The MCP Inspector's command-line mode, a foreign client, against a live MCP endpoint in both protocol eras.

Today the endpoint is `servers/conformance.py` served alone; retargeting it at the portal (its demo's `/mcp`
or `/servers/{name}/mcp`) means changing `endpoint_url` and the expected names.

Runs `node <inspector>/clients/launcher/build/index.js --cli URL --transport http --protocol-era ERA
--format json -q --method ...`, the same as `npx @modelcontextprotocol/inspector --cli ...`, but on the Node 22
that `.ci/node.sh` installs. Skips without Node 22 unless PORTAL_REQUIRE_NODE is set.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytestmark = [
    pytest.mark.node,
    # The fixture server exercises logging, sampling and roots on purpose; the SDK flags each use as deprecated.
    pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning"),
]


def _load_suite_helpers() -> ModuleType:
    """Import tests/conformance/_suite.py, shared with the conformance tests, whichever folder pytest started in.

    Loaded by path under the same module name the conformance tests use, so both get one module object.
    """
    name = "_suite"
    if name in sys.modules:
        return sys.modules[name]
    path = Path(__file__).resolve().parents[1] / "conformance" / "_suite.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, f"cannot load {path}"
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


suite = _load_suite_helpers()

# The Inspector names the eras its own way.
INSPECTOR_ERA = {"2025-11-25": "legacy", "2026-07-28": "modern"}
SERVER_INFO_META = "io.modelcontextprotocol/serverInfo"
# Every run is bounded; one call normally takes under a second.
INSPECTOR_TIMEOUT_SECONDS = 60


@dataclass
class InspectorResult:
    """One Inspector CLI run: exit status, the JSON it printed on stdout, and its stderr."""

    returncode: int
    payload: dict[str, Any]
    stderr: str


@pytest.fixture(scope="session")
def node() -> Path:
    """Node 22 with the Inspector installed; skips (or fails, with PORTAL_REQUIRE_NODE) without it."""
    try:
        node: Path = suite.ensure_node()
    except suite.NodeUnavailable as exc:
        if suite.node_required():
            pytest.fail(f"PORTAL_REQUIRE_NODE is set but Node 22 is unavailable: {exc}")
        pytest.skip(f"Node 22 and the MCP Inspector are unavailable (set PORTAL_REQUIRE_NODE to fail): {exc}")
    return node


@pytest.fixture(scope="module")
def endpoint_url() -> Iterator[str]:
    """The MCP endpoint under test: the conformance fixture server on 127.0.0.1."""
    from servers import conformance

    with suite.serve(conformance.create_app()) as base_url:
        yield base_url + "/mcp"


@pytest.fixture(params=sorted(INSPECTOR_ERA), ids=lambda era: era)
def era(request: pytest.FixtureRequest) -> str:
    """Each protocol era in turn."""
    return str(request.param)


def inspect(node: Path, home: Path, url: str, era: str, *args: str) -> InspectorResult:
    """Run the Inspector CLI once against `url` at `era` with `args` (e.g. `--method tools/list`)."""
    command = [
        str(node),
        str(suite.inspector_entry(node)),
        "--cli",
        url,
        "--transport",
        "http",
        "--protocol-era",
        INSPECTOR_ERA[era],
        "--format",
        "json",
        "--quiet",
        *args,
    ]
    proc = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=INSPECTOR_TIMEOUT_SECONDS,
        env=suite.node_env(home),
        stdin=subprocess.DEVNULL,
    )
    try:
        payload = json.loads(proc.stdout) if proc.stdout.strip() else {}
    except json.JSONDecodeError:
        pytest.fail(f"Inspector printed non-JSON (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return InspectorResult(proc.returncode, payload, proc.stderr)


def assert_era(result: dict[str, Any], era: str) -> None:
    """Check the call really ran at `era`: stateless-era results carry the server's identity in `_meta`."""
    meta = result.get("_meta") or {}
    if era == "2026-07-28":
        assert meta.get(SERVER_INFO_META, {}).get("name") == "portal-conformance", result
    else:
        assert SERVER_INFO_META not in meta, result


def test_tools_list(node: Path, tmp_path: Path, endpoint_url: str, era: str) -> None:
    """tools/list returns the fixture catalogue, each tool with a description and an object inputSchema."""
    run = inspect(node, tmp_path, endpoint_url, era, "--method", "tools/list")
    assert run.returncode == 0, run.stderr
    tools = {tool["name"]: tool for tool in run.payload["result"]["tools"]}
    for name in ("test_simple_text", "test_image_content", "test_error_handling", "test_mcp_param_header"):
        assert name in tools, sorted(tools)
    assert all(tool.get("description") for tool in tools.values())
    assert all(tool["inputSchema"].get("type") == "object" for tool in tools.values())
    # The 2020-12 keywords survive the round trip through a foreign client.
    schema = tools["json_schema_2020_12_tool"]["inputSchema"]
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert {"$defs", "allOf", "if", "then", "else"} <= schema.keys()


def test_tools_call_simple_text(node: Path, tmp_path: Path, endpoint_url: str, era: str) -> None:
    """tools/call without arguments returns the documented text."""
    run = inspect(node, tmp_path, endpoint_url, era, "--method", "tools/call", "--tool-name", "test_simple_text")
    assert run.returncode == 0, run.stderr
    result = run.payload["result"]
    assert result["isError"] is False
    assert result["content"] == [{"type": "text", "text": "This is a simple text response for testing."}]
    assert_era(result, era)


def test_tools_call_with_argument(node: Path, tmp_path: Path, endpoint_url: str, era: str) -> None:
    """tools/call passes an argument through; in the stateless era it also rides the Mcp-Param-Region header."""
    run = inspect(
        node,
        tmp_path,
        endpoint_url,
        era,
        *("--method", "tools/call", "--tool-name", "test_mcp_param_header", "--tool-arg", "region=eu-west"),
    )
    assert run.returncode == 0, run.stderr
    assert run.payload["result"]["content"] == [{"type": "text", "text": "region=eu-west"}]


def test_tools_call_error(node: Path, tmp_path: Path, endpoint_url: str, era: str) -> None:
    """A tool error reaches the Inspector as a result with isError, which it reports with exit status 5."""
    run = inspect(node, tmp_path, endpoint_url, era, "--method", "tools/call", "--tool-name", "test_error_handling")
    assert run.returncode == 5, run.stderr
    result = run.payload["result"]
    assert result["isError"] is True
    assert result["content"][0]["text"] == "This tool intentionally returns an error for testing"
    assert "tool_is_error" in run.stderr
