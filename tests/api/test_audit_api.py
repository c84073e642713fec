"""`/api/audit/...` (`portal.api`): the queries of `portal audit`, behind tokens for the resource `/api`."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_asyncio
from gateway_support import MODERN_HEADERS, Launcher, PortalUnderTest, modern_body

from portal.settings import ServerConfig

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PortalUnderTest]:
    launch = Launcher(Path(tmp_path_factory.mktemp("api")))
    try:
        web = await launch.upstream("web")
        p = await launch.portal(ServerConfig(name="web", url=web.url))
        await p.wait_listed("web")
        for i in range(7):
            await call(p, "web_add", {"a": i, "b": 1}, f"add-{i}")
        narrow = p.token(scopes=("tools:web:whoami",))
        await call(p, "web_add", {"a": 1, "b": 2}, "denied-1", token=narrow)
        await p.portal.audit.drained()  # type: ignore[union-attr]
        yield p
    finally:
        await launch.aclose()


async def call(
    p: PortalUnderTest, name: str, arguments: dict[str, Any], request_id: str, token: str | None = None
) -> int:
    body = modern_body("tools/call", {"name": name, "arguments": arguments}, request_id=request_id)
    headers = {**MODERN_HEADERS, "Mcp-Method": "tools/call", "Mcp-Name": name}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    status, _, _ = await p.post(body, headers=headers)
    return status


def api_token(p: PortalUnderTest, *scopes: str) -> str:
    return p.token(audience=p.url("/api"), scopes=scopes or ("audit:read",))


async def get(
    p: PortalUnderTest, path: str, token: str | None = None, **params: Any
) -> tuple[int, dict[str, str], bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with p.http.get(p.url(path), params=params, headers=headers) as response:
        return response.status, dict(response.headers), await response.read()


async def test_the_openapi_document_describes_every_route_without_a_token(world: PortalUnderTest) -> None:
    status, _, body = await get(world, "/api/openapi.json")
    document = orjson.loads(body)
    assert status == 200 and document["openapi"].startswith("3.1")
    assert set(document["paths"]) >= {"/api/audit/records", "/api/audit/records/{id}", "/api/audit/export"}
    assert all(operation["security"] for path in document["paths"].values() for operation in path.values())
    assert "/api/approvals/{id}/approve" in document["paths"]


async def test_without_a_token_the_api_answers_401_pointing_to_its_resource_metadata(world: PortalUnderTest) -> None:
    status, headers, body = await get(world, "/api/audit/records")
    assert status == 401 and orjson.loads(body)["error"]["code"] == "invalid_token"
    challenge = headers["WWW-Authenticate"]
    assert f'resource_metadata="{world.base}/.well-known/oauth-protected-resource/api"' in challenge
    status, _, body = await get(world, "/.well-known/oauth-protected-resource/api")
    metadata = orjson.loads(body)
    assert metadata["resource"] == f"{world.base}/api" and "audit:read" in metadata["scopes_supported"]


async def test_a_token_for_an_mcp_endpoint_is_refused_on_the_api(world: PortalUnderTest) -> None:
    status, _, _ = await get(world, "/api/audit/records", token=world.token(scopes=("tools:*",)))
    assert status == 401


async def test_a_token_without_audit_read_is_403_naming_the_scope(world: PortalUnderTest) -> None:
    token = api_token(world, "servers:write")
    status, headers, body = await get(world, "/api/audit/records", token=token)
    assert status == 403 and orjson.loads(body)["error"]["code"] == "insufficient_scope"
    assert 'scope="audit:read"' in headers["WWW-Authenticate"]


async def test_search_filters_and_pages_newest_first(world: PortalUnderTest) -> None:
    token = api_token(world)
    status, _, body = await get(world, "/api/audit/records", token, server="web", tool="add", limit=4)
    page = orjson.loads(body)
    assert status == 200 and len(page["records"]) == 4 and page["next_cursor"]
    seqs = [record["seq"] for record in page["records"]]
    assert seqs == sorted(seqs, reverse=True)
    assert {record["tool"] for record in page["records"]} == {"add"}
    seen = seqs
    cursor = page["next_cursor"]
    while cursor:
        _, _, body = await get(world, "/api/audit/records", token, server="web", tool="add", limit=4, cursor=cursor)
        page = orjson.loads(body)
        seen += [record["seq"] for record in page["records"]]
        cursor = page["next_cursor"]
    assert len(seen) == len(set(seen)) == 15  # 7 calls x (start, end), and the denial's one record
    _, _, body = await get(world, "/api/audit/records", token, outcome="denied")
    denied = orjson.loads(body)["records"]
    assert [record["request_id"] for record in denied] == ["denied-1"]
    assert denied[0]["error_code"] == "insufficient_scope"


async def test_a_record_shows_with_its_call(world: PortalUnderTest) -> None:
    token = api_token(world, "admin")  # admin covers audit:read
    _, _, body = await get(world, "/api/audit/records", token, text="add-3")
    record = orjson.loads(body)["records"][0]
    status, _, body = await get(world, f"/api/audit/records/{record['call_id']}", token)
    tree = orjson.loads(body)
    assert status == 200 and [r["phase"] for r in tree["records"]] == ["start", "end"]
    assert tree["records"][0]["arguments"] == {"a": 3, "b": 1}
    status, _, body = await get(world, "/api/audit/records/0123456789abcdef", token)
    assert status == 404 and orjson.loads(body)["error"]["code"] == "record_not_found"


async def test_export_streams_jsonl_and_csv_oldest_first(world: PortalUnderTest) -> None:
    token = api_token(world)
    status, headers, body = await get(world, "/api/audit/export", token, tool="add")
    lines = [orjson.loads(line) for line in body.splitlines()]
    assert status == 200 and headers["Content-Type"].startswith("application/x-ndjson")
    assert len(lines) == 15 and [r["seq"] for r in lines] == sorted(r["seq"] for r in lines)
    status, headers, body = await get(world, "/api/audit/export", token, tool="add", format="csv")
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    assert status == 200 and headers["Content-Type"].startswith("text/csv") and len(rows) == 15
    assert rows[0]["tool"] == "add"


async def test_stats_and_verify(world: PortalUnderTest) -> None:
    token = api_token(world)
    _, _, body = await get(world, "/api/audit/stats", token, server="web")
    stats = {row["tool"]: row for row in orjson.loads(body)["stats"]}
    assert stats["add"]["calls"] == 8 and stats["add"]["denials"] == 1
    status, _, body = await get(world, "/api/audit/verify", token)
    assert status == 200 and orjson.loads(body)["ok"] is True


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"limit": "0"}, "bad_request"),
        ({"since": "last tuesday"}, "bad_request"),
        ({"cursor": "x"}, "bad_request"),
        ({"kind": "everything"}, "bad_request"),
    ],
)
async def test_bad_parameters_get_400_with_a_reason(world: PortalUnderTest, params: dict[str, str], code: str) -> None:
    status, _, body = await get(world, "/api/audit/records", api_token(world), **params)
    error = orjson.loads(body)["error"]
    assert status == 400 and error["code"] == code and error["message"]
