"""Clients identified by a Client ID Metadata Document: the client id is the URL of its metadata.

The documents are served on 127.0.0.1, so the portal runs with `allow_loopback_http`
(development mode); `test_rejections.py` and `test_outbound.py` show that without it,
and for private addresses, they are refused.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from auth_kit import Kit
from auth_support import REDIRECT_URI, Browser, Running, serve_app, start_portal
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from portal.auth.settings import AuthSettings

DOCUMENTS: dict[str, dict[str, Any]] = {}


@pytest.fixture
async def docs() -> AsyncIterator[Running]:
    def build(base: str) -> Starlette:
        async def document(request: Request) -> Response:
            name = request.path_params["name"]
            body = dict(DOCUMENTS[name])
            body.setdefault("client_id", f"{base}/clients/{name}")
            return JSONResponse(body)

        return Starlette(routes=[Route("/clients/{name}", document)])

    running = await serve_app(build)
    try:
        yield running
    finally:
        await running.stop()


@pytest.fixture
async def kit(tmp_path: Path, docs: Running) -> AsyncIterator[Kit]:
    auth = AuthSettings(grants={"alice": ("tools:*",)}, allow_loopback_http=True)
    portal = await start_portal(tmp_path, auth=auth)
    browser = Browser(portal)
    try:
        async with Kit(portal, browser) as kit:
            yield kit
    finally:
        await browser.close()
        await portal.stop()


def publish(name: str, **fields: Any) -> None:
    DOCUMENTS[name] = {
        "client_name": f"Editor {name}",
        "redirect_uris": [REDIRECT_URI],
        "grant_types": ["authorization_code", "refresh_token"],
        "token_endpoint_auth_method": "none",
        **fields,
    }


async def test_a_client_known_only_by_its_metadata_url_completes_the_flow(kit: Kit, docs: Running) -> None:
    publish("good")
    kit.client_id = f"{docs.base}/clients/good"
    body = await kit.tokens(scope="tools:*")
    assert body["scope"] == "tools:*" and body["refresh_token"]
    principal = await kit.portal.service.verify_access_token(body["access_token"], audience=kit.portal.mcp)
    assert principal.client_id == kit.client_id
    consent = next(page for url, _, page in kit.browser.pages if "Allow access" in page)
    assert "Editor good" in consent
    (row,) = [r for r in kit.portal.service.clients.listing() if r.client_id == kit.client_id]
    assert row.kind == "metadata" and row.name == "Editor good"
    # Revoked: gone at once, for new requests and for the tokens it holds.
    kit.portal.service.clients.revoke(kit.client_id)
    assert await kit.verify(body["access_token"]) == (401, "invalid_token")
    assert (await kit.authorize_outcome())[1] == "invalid_client"


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"client_id": "https://someone-else.example/client.json"}, "does not match its URL"),
        ({"client_secret": "s3cret"}, "must not carry a client secret"),
        ({"token_endpoint_auth_method": "client_secret_basic"}, "invalid token_endpoint_auth_method"),
        ({"redirect_uris": ["http://evil.example/cb"]}, "redirect_uris"),
    ],
)
async def test_a_metadata_document_that_breaks_the_rules_is_refused(
    kit: Kit, docs: Running, fields: dict[str, Any], reason: str
) -> None:
    name = f"bad{abs(hash(reason)) % 1000}"
    publish(name, **fields)
    kit.client_id = f"{docs.base}/clients/{name}"
    assert await kit.authorize_outcome() == (400, "invalid_client")
    assert reason in kit.browser.pages[-1][2]


async def test_a_redirect_uri_not_in_the_document_is_never_redirected_to(kit: Kit, docs: Running) -> None:
    publish("strict")
    kit.client_id = f"{docs.base}/clients/strict"
    assert await kit.authorize_outcome(redirect_uri="http://127.0.0.1:2/callback") == (400, "invalid_request")
