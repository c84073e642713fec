"""Helpers of the authorization-server tests.

- `start_portal(tmp_path, ...)` runs, under uvicorn on 127.0.0.1 and an ephemeral port, an
  app made of the `AuthService` routes and a tiny MCP endpoint protected by
  `verify_access_token` (as the gateway will be), with its RFC 9728 metadata.
- `Browser` is a person at a browser: it follows the authorization request through
  `/login` and `/consent`, posting the forms as a browser would, and hands back the
  redirect to the client.
- `pkce()` makes a verifier and its S256 challenge.

Imported by name (`from auth_support import ...`): `conftest.py` puts this folder on `sys.path`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import secrets
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import aiohttp
import uvicorn
from mcp.server.mcpserver import MCPServer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from portal.auth.errors import InvalidToken
from portal.auth.events import AuthEvent
from portal.auth.principal import Principal
from portal.auth.service import AuthService
from portal.auth.settings import AuthSettings
from portal.db import create_engine
from portal.outbound import Resolver
from portal.settings import Settings

__all__ = [
    "PASSWORD",
    "REDIRECT_URI",
    "Browser",
    "PortalUnderTest",
    "Running",
    "form_fields",
    "pkce",
    "serve_app",
    "start_portal",
]

PASSWORD = "correct horse battery"
REDIRECT_URI = "http://127.0.0.1:1/callback"
"""Where test clients say they receive codes; nothing listens there, the browser stops before it."""


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


@dataclass
class Running:
    base: str
    server: uvicorn.Server
    task: asyncio.Task[None]

    async def stop(self) -> None:
        self.server.should_exit = True
        await asyncio.wait_for(self.task, 10)


async def serve_app(build: Any) -> Running:
    """Bind 127.0.0.1:0 first, so that `build(base_url)` knows its own URL, then serve what it returns."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    app = build(base)
    config = uvicorn.Config(app, log_config=None, lifespan="on")
    config.timeout_graceful_shutdown = 0.1
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("uvicorn stopped before it started")
        await asyncio.sleep(0.005)
    return Running(base, server, task)


class _Protected:
    """The resource server the gateway will be, in miniature: bearer check, 401 with RFC 9728 pointers."""

    def __init__(self, app: Any, service: AuthService, audience: str, principals: list[Principal]) -> None:
        self.app = app
        self.service = service
        self.audience = audience
        self.principals = principals
        self.metadata_url = audience.replace("/mcp", "/.well-known/oauth-protected-resource/mcp")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope.get("headers", []))
        value = headers.get(b"authorization", b"").decode()
        token = value[7:] if value[:7].lower() == "bearer " else ""
        try:
            if not token:
                raise InvalidToken("no token")
            principal = await self.service.verify_access_token(token, audience=self.audience)
        except InvalidToken as exc:
            challenge = f'Bearer resource_metadata="{self.metadata_url}", scope="tools:*"'
            if token:
                challenge += f', error="invalid_token", error_description="{exc.description}"'
            response = JSONResponse({"error": "invalid_token"}, status_code=401)
            response.headers["WWW-Authenticate"] = challenge
            await response(scope, receive, send)
            return
        self.principals.append(principal)
        await self.app(scope, receive, send)


@dataclass
class PortalUnderTest:
    base: str
    service: AuthService
    settings: Settings
    running: Running
    events: list[AuthEvent] = field(default_factory=list)
    principals: list[Principal] = field(default_factory=list)

    @property
    def mcp(self) -> str:
        return f"{self.base}/mcp"

    def url(self, path: str) -> str:
        return self.base + path

    def kinds(self, kind: str, outcome: str | None = None) -> list[AuthEvent]:
        return [e for e in self.events if e.kind == kind and (outcome is None or e.outcome == outcome)]

    async def stop(self) -> None:
        await self.running.stop()
        await self.service.close()
        self.service.engine.dispose()


def _mcp_server() -> MCPServer:
    server = MCPServer("protected")

    @server.tool()
    def hello() -> str:
        """Answer, to show the call got through."""
        return "hello from a protected endpoint"

    return server


async def start_portal(
    tmp_path: Path,
    *,
    auth: AuthSettings | None = None,
    resolver: Resolver | None = None,
    users: Sequence[tuple[str, Sequence[str]]] = (("alice", ("eng",)),),
    database_url: str | None = None,
) -> PortalUnderTest:
    """A running authorization server with a protected MCP endpoint at `/mcp`; local users made with `PASSWORD`."""
    auth = auth or AuthSettings(grants={"alice": ("tools:*", "codemode")})
    holder: dict[str, Any] = {}

    def build(base: str) -> Any:
        settings = Settings(
            public_url=base,
            database_url=database_url or f"sqlite:///{tmp_path}/portal.db",
            base_dir=str(tmp_path),
            auth=auth,
        )
        service = AuthService(settings, create_engine(settings), resolver=resolver)
        principals: list[Principal] = []
        mcp_app = _mcp_server().streamable_http_app(stateless_http=True, json_response=True)
        protected = _Protected(mcp_app, service, f"{base}/mcp", principals)

        async def resource_metadata(request: Request) -> Response:
            # RFC 9728 §2
            return JSONResponse(
                {
                    "resource": f"{base}/mcp",
                    "authorization_servers": [base],
                    "scopes_supported": ["tools:*"],
                    "bearer_methods_supported": ["header"],
                }
            )

        pages = Starlette(
            routes=[*service.routes(), Route("/.well-known/oauth-protected-resource/mcp", resource_metadata)]
        )

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "lifespan":
                await mcp_app(scope, receive, send)
            elif scope["path"].startswith("/mcp"):
                await protected(scope, receive, send)
            else:
                await pages(scope, receive, send)

        holder.update(settings=settings, service=service, principals=principals)
        return app

    running = await serve_app(build)
    service: AuthService = holder["service"]
    await service.start()
    portal = PortalUnderTest(running.base, service, holder["settings"], running, principals=holder["principals"])
    service.events.subscribe(portal.events.append)
    for name, groups in users:
        await asyncio.to_thread(service.users.add, name, PASSWORD, list(groups))
    return portal


class _Forms(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.fields: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "input" and "name" in values:
            kind = values.get("type", "text")
            if kind == "checkbox" and "checked" not in values:
                return
            self.fields.append((kind, values["name"], values.get("value", "")))


def form_fields(html: str) -> list[tuple[str, str]]:
    """The (name, value) pairs a browser would submit from the page's form (checked boxes only)."""
    parser = _Forms()
    parser.feed(html)
    return [(name, value) for _kind, name, value in parser.fields]


class Browser:
    """A person with a browser: cookies kept, redirects looked at one by one."""

    def __init__(self, portal: PortalUnderTest, *, user: str = "alice", password: str = PASSWORD) -> None:
        self.portal = portal
        self.user = user
        self.password = password
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.pages: list[tuple[str, int, str]] = []
        self.last_redirect = ""
        self.last_location = ""

    async def close(self) -> None:
        await self.http.close()

    async def get(self, url: str) -> aiohttp.ClientResponse:
        response = await self.http.get(url, allow_redirects=False)
        self.pages.append((url, response.status, await response.text()))
        return response

    async def post(self, url: str, pairs: Sequence[tuple[str, str]], **headers: str) -> aiohttp.ClientResponse:
        body = urlencode(list(pairs))
        response = await self.http.post(
            url,
            data=body,
            allow_redirects=False,
            headers={"Content-Type": "application/x-www-form-urlencoded", **headers},
        )
        self.pages.append((url, response.status, await response.text()))
        return response

    def absolute(self, location: str) -> str:
        return urljoin(self.portal.base + "/", location)

    async def authorize(
        self, url: str, *, decision: str = "approve", keep: Sequence[str] | None = None
    ) -> dict[str, str]:
        """Go through login and consent for the authorization request `url`; the client's redirect parameters."""
        response = await self.get(url)
        location = response.headers.get("Location", "")
        assert response.status in (302, 303), f"authorize answered {response.status}: {self.pages[-1][2][:300]}"
        if location.startswith(REDIRECT_URI):
            return _params(location)
        if location.startswith("/login"):
            await self.login(location)
            response = await self.get(self.absolute(self.last_redirect))
        else:
            response = await self.get(self.absolute(location))
        assert response.status == 200, f"consent page answered {response.status}: {self.pages[-1][2][:300]}"
        fields = form_fields(self.pages[-1][2])
        if keep is not None:
            fields = [(k, v) for k, v in fields if k != "consent_scope" or v in keep]
        response = await self.post(self.portal.url("/consent"), [*fields, ("decision", decision)])
        assert response.status == 302, f"consent answered {response.status}: {self.pages[-1][2][:300]}"
        self.last_location = response.headers["Location"]
        return _params(self.last_location)

    async def login(self, login_location: str) -> None:
        response = await self.get(self.absolute(login_location))
        assert response.status == 200
        fields = dict(form_fields(self.pages[-1][2]))
        response = await self.post(
            self.portal.url("/login"),
            [
                ("csrf_token", fields["csrf_token"]),
                ("next", fields["next"]),
                ("username", self.user),
                ("password", self.password),
            ],
        )
        assert response.status == 303, f"login answered {response.status}: {self.pages[-1][2][:300]}"
        self.last_redirect = response.headers["Location"]


def _params(location: str) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(urlsplit(location).query).items()}


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF token on the page"
    return match.group(1)
