"""`Host` and `Origin` checks (DNS rebinding, `portal.inbound`) and the security headers (`portal.headers`).

The rules, as a table against `InboundRules`, then end to end against one running portal (on 127.0.0.1, so
in loopback mode) that also serves `portal.internal` and lets the page origin `https://app.example.com` in:

- an MCP request with an `Origin` the portal does not allow is 403 with a JSON-RPC error without an id, on
  every MCP endpoint, before its token is looked at; one without an `Origin` passes;
- a request naming a host the portal does not serve is 421 (RFC 9110 §15.5.20), on the MCP endpoints and on
  the pages and APIs alike; the probes (`/healthz`, `/readyz`, `/metrics`) answer any host;
- every response carries `nosniff`; pages carry their CSP, framing, referrer and cache headers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from gateway_support import MODERN_HEADERS, Launcher, PortalUnderTest, modern_body

from portal.errors import ConfigError
from portal.headers import PAGE_CSP
from portal.inbound import InboundRules
from portal.settings import ServerConfig, load_settings

APP_ORIGIN = "https://app.example.com"
LIST = {**MODERN_HEADERS, "Mcp-Method": "tools/list"}

# --- The rules -----------------------------------------------------------------------------------------

PUBLIC = InboundRules(
    "https://portal.example.com",
    allowed_hosts=["portal.internal", "10.0.0.5:8000"],
    allowed_origins=[APP_ORIGIN, "http://localhost:6274"],
)
LOOPBACK = InboundRules("http://127.0.0.1:8000")


@pytest.mark.parametrize(
    ("rules", "host", "allowed"),
    [
        (PUBLIC, "portal.example.com", True),
        (PUBLIC, "PORTAL.example.com:443", True),
        (PUBLIC, "portal.example.com.", True),
        (PUBLIC, "portal.example.com:8443", False),
        (PUBLIC, "portal.internal:9000", True),  # a listed name without a port: any port
        (PUBLIC, "10.0.0.5:8000", True),
        (PUBLIC, "10.0.0.5:8001", False),  # a listed host:port: that port only
        (PUBLIC, "10.0.0.5", False),
        (PUBLIC, "evil.example", False),
        (PUBLIC, "portal.example.com.evil.example", False),
        (PUBLIC, "127.0.0.1:8000", False),  # loopback only when public_url is loopback
        (PUBLIC, "localhost", False),
        (PUBLIC, "portal.example.com@evil.example", False),
        (PUBLIC, "", False),
        (LOOPBACK, "127.0.0.1:8000", True),
        (LOOPBACK, "127.0.0.1:9999", True),
        (LOOPBACK, "localhost:8000", True),
        (LOOPBACK, "localhost", True),
        (LOOPBACK, "[::1]:8000", True),
        (LOOPBACK, "evil.example:8000", False),
        (LOOPBACK, "127.0.0.1.nip.io:8000", False),
        (LOOPBACK, "[::1", False),
    ],
)
def test_hosts(rules: InboundRules, host: str, allowed: bool) -> None:
    assert rules.host_allowed(host) is allowed


@pytest.mark.parametrize(
    ("rules", "origin", "allowed"),
    [
        (PUBLIC, "https://portal.example.com", True),
        (PUBLIC, "https://portal.example.com:443", True),
        (PUBLIC, "http://portal.example.com", False),  # another scheme is another origin
        (PUBLIC, APP_ORIGIN, True),
        (PUBLIC, "http://localhost:6274", True),
        (PUBLIC, "http://localhost:6275", False),
        (PUBLIC, "https://evil.example", False),
        (PUBLIC, "https://app.example.com.evil.example", False),
        (PUBLIC, "null", False),
        (PUBLIC, "file://", False),
        (LOOPBACK, "http://127.0.0.1:8000", True),
        (LOOPBACK, "http://localhost:3000", True),
        (LOOPBACK, "https://[::1]:8443", True),
        (LOOPBACK, "http://evil.example:8000", False),
        (LOOPBACK, "null", False),
    ],
)
def test_origins(rules: InboundRules, origin: str, allowed: bool) -> None:
    assert rules.origin_allowed(origin) is allowed


def test_a_star_turns_the_host_check_off() -> None:
    assert InboundRules("https://portal.example.com", allowed_hosts=["*"]).host_allowed("anything.example")


def test_the_settings_read_lists_from_the_file_and_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "portal.toml"
    config.write_text('[portal]\nallowed_hosts = ["portal.internal"]\nallowed_origins = ["https://a.example"]\n')
    settings = load_settings(config, env={})
    assert settings.allowed_hosts == ("portal.internal",)
    assert settings.allowed_origins == ("https://a.example",)
    settings = load_settings(config, env={"PORTAL_ALLOWED_ORIGINS": "https://b.example, https://c.example:8443"})
    assert settings.allowed_origins == ("https://b.example", "https://c.example:8443")
    for line in ('allowed_origins = ["https://a.example/path"]', 'allowed_hosts = ["http://x"]', "allowed_hosts = 3"):
        config.write_text(f"[portal]\n{line}\n")
        with pytest.raises(ConfigError):
            load_settings(config, env={})


# --- End to end ----------------------------------------------------------------------------------------


module_loop = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def p(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PortalUnderTest]:
    launch = Launcher(Path(tmp_path_factory.mktemp("inbound")))
    try:
        portal = await launch.portal(
            ServerConfig(name="hosted", module="gateway_hosted"),
            allowed_hosts=("portal.internal",),
            allowed_origins=(APP_ORIGIN,),
        )
        await portal.wait_listed("hosted")
        yield portal
    finally:
        await launch.aclose()


ENDPOINTS = [None, "hosted", "codemode"]


def _url(p: PortalUnderTest, endpoint: str | None) -> str:
    return p.url("/codemode/mcp") if endpoint == "codemode" else p.mcp(endpoint)


def _bearer(p: PortalUnderTest, endpoint: str | None) -> dict[str, str]:
    if endpoint == "codemode":
        return {"Authorization": f"Bearer {p.token(audience=p.url('/codemode/mcp'), scopes=('codemode',))}"}
    return p.bearer(endpoint)


@module_loop
@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_a_foreign_origin_is_403_with_a_json_rpc_error_without_an_id(
    p: PortalUnderTest, endpoint: str | None
) -> None:
    for auth in (True, False):  # refused before the token is looked at
        headers = {**LIST, "Origin": "https://evil.example", **(_bearer(p, endpoint) if auth else {})}
        status, response_headers, body = await p.post(
            modern_body("tools/list"), url=_url(p, endpoint), headers=headers, auth=False
        )
        assert status == 403, body
        assert body["jsonrpc"] == "2.0" and body["id"] is None
        assert body["error"]["data"]["code"] == "origin_not_allowed"
        assert "https://evil.example" in body["error"]["message"]
        assert response_headers["X-Content-Type-Options"] == "nosniff"


@module_loop
async def test_origin_null_is_refused(p: PortalUnderTest) -> None:
    status, _, body = await p.post(modern_body("tools/list"), headers={**LIST, "Origin": "null"})
    assert status == 403, body


@module_loop
@pytest.mark.parametrize("origin", [None, APP_ORIGIN, "own", "http://localhost:5173"])
@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_allowed_origins_and_no_origin_pass(p: PortalUnderTest, endpoint: str | None, origin: str | None) -> None:
    headers = {**LIST, **_bearer(p, endpoint)}
    if origin is not None:
        headers["Origin"] = p.base if origin == "own" else origin
    status, response_headers, body = await p.post(
        modern_body("tools/list"), url=_url(p, endpoint), headers=headers, auth=False
    )
    assert status == 200, body
    assert body["result"]["tools"]
    assert response_headers["X-Content-Type-Options"] == "nosniff"


@module_loop
@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_a_foreign_host_is_421_on_the_mcp_endpoints(p: PortalUnderTest, endpoint: str | None) -> None:
    headers = {**LIST, **_bearer(p, endpoint), "Host": "evil.example"}
    status, _, body = await p.post(modern_body("tools/list"), url=_url(p, endpoint), headers=headers, auth=False)
    assert status == 421, body
    assert body["id"] is None and body["error"]["data"]["code"] == "misdirected_request"


@pytest.mark.parametrize(
    "path", ["/login", "/.well-known/oauth-authorization-server", "/oauth/jwks.json", "/api/openapi.json", "/nowhere"]
)
@module_loop
async def test_a_foreign_host_is_421_on_the_pages_and_apis(p: PortalUnderTest, path: str) -> None:
    async with p.http.get(p.url(path), headers={"Host": "rebound.evil.example:80"}) as response:
        assert response.status == 421
        assert (await response.json())["error"] == "misdirected_request"


@module_loop
@pytest.mark.parametrize("host", ["portal.internal", "localhost", "[::1]:1234"])
async def test_served_hosts_pass(p: PortalUnderTest, host: str) -> None:
    async with p.http.get(p.url("/.well-known/oauth-authorization-server"), headers={"Host": host}) as response:
        assert response.status == 200


@module_loop
@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
async def test_the_probes_answer_any_host(p: PortalUnderTest, path: str) -> None:
    async with p.http.get(p.url(path), headers={"Host": "10.1.2.3:8000"}) as response:
        assert response.status == 200
        assert response.headers["X-Content-Type-Options"] == "nosniff"


# --- Security headers ----------------------------------------------------------------------------------


@module_loop
async def test_pages_carry_their_security_headers(p: PortalUnderTest) -> None:
    async with p.http.get(p.url("/login")) as response:
        assert response.status == 200
        headers = response.headers
    csp = headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp and "form-action 'self'" in csp
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["Cache-Control"] == "no-store"
    assert len(headers.getall("Content-Security-Policy")) == 1


@module_loop
async def test_json_and_other_responses_are_nosniff(p: PortalUnderTest) -> None:
    for path in ("/.well-known/oauth-authorization-server", "/oauth/jwks.json", "/nowhere", "/api/openapi.json"):
        async with p.http.get(p.url(path)) as response:
            assert response.headers["X-Content-Type-Options"] == "nosniff", path
    async with p.http.get(p.url("/.well-known/oauth-authorization-server")) as response:
        assert response.headers["Cache-Control"] == "max-age=300"  # a response's own header is kept


@module_loop
async def test_an_html_response_without_a_policy_gets_the_default_one() -> None:
    from portal.headers import secure_send

    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    wrapped = secure_send(send)
    await wrapped({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/html")]})
    await wrapped({"type": "http.response.start", "status": 303, "headers": [(b"location", b"/consent?x")]})
    page = dict(sent[0]["headers"])  # type: ignore[call-overload]
    assert page[b"content-security-policy"] == PAGE_CSP.encode()
    assert page[b"x-frame-options"] == b"DENY" and page[b"cache-control"] == b"no-store"
    redirect = dict(sent[1]["headers"])  # type: ignore[call-overload]
    assert redirect[b"cache-control"] == b"no-store" and redirect[b"referrer-policy"] == b"no-referrer"
