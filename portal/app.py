"""The portal as one ASGI application: `create_app(settings)`.

Wires the registry, the running servers, the pipeline and the MCP transport
together, and owns their start and stop through the app's lifespan.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from portal import __version__
from portal.api import API_PATH, ApiAccess, api_routes
from portal.audit.log import AuditLog
from portal.auth.guard import CapabilityGuard
from portal.auth.principal import Principal
from portal.auth.resource import protected_resource_metadata
from portal.auth.scopes import ADMIN_SCOPES
from portal.auth.service import CORS_PREFLIGHT, AuthService
from portal.db import create_engine, init_db
from portal.errors import UnknownServer
from portal.gateway.codemode import CODEMODE_ENDPOINT, CodeModeGateway
from portal.gateway.forward import Forwarder
from portal.gateway.rendering import jsonrpc_error
from portal.gateway.routing import Router
from portal.gateway.servers import ServerSet
from portal.gateway.sessions import SessionCodec, Streams
from portal.gateway.transport import McpTransport
from portal.headers import mcp_send, secure_send
from portal.inbound import PROBE_PATHS, InboundRules, send_http_refusal, send_mcp_refusal
from portal.metrics import render_metrics
from portal.pinning import PinStore
from portal.pipeline import Endpoint, Pipeline, Stage
from portal.policy.engine import PolicyEngine
from portal.policy.loader import PolicyError
from portal.policy.stage import PolicyStage
from portal.registry import HealthRow, Registry
from portal.settings import Settings, resolve_secret

__all__ = ["Portal", "create_app"]

logger = logging.getLogger(__name__)


@dataclass
class Portal:
    """Everything a running portal holds; `app.state.portal`."""

    settings: Settings
    registry: Registry
    auth: AuthService
    servers: ServerSet
    pipeline: Pipeline
    transport: McpTransport
    streams: Streams
    codemode: CodeModeGateway
    audit: AuditLog | None
    """None when `[audit] enabled = false`."""
    policy: PolicyStage


def build_stages(
    settings: Settings, servers: ServerSet, audit: AuditLog | None = None, policy: PolicyStage | None = None
) -> list[Stage]:
    """The pipeline's stages before the forwarder, in order.

    The audit stage comes first, so that every request is recorded, even one for a tool that
    does not exist; the router next, so that every later stage sees which server and tool a
    request is for; then the token's capabilities and the policies, whose intersection is what
    passes; the audit gate last, so that a call's start record (durable before it is forwarded)
    is written only for a call that will be, redacted as the deciding policies say. A request
    refused on the way gets one record, with its outcome.
    """
    stages: list[Stage] = []
    if audit is not None:
        stages.append(audit.stage(split=True))
    stages += [Router(servers), CapabilityGuard(servers)]
    if policy is not None:
        stages.append(policy)
    if audit is not None:
        stages.append(audit.gate())
    return stages


def create_app(settings: Settings) -> Starlette:
    engine = create_engine(settings)
    registry = Registry(settings, engine)
    auth = AuthService(settings, engine)
    servers = ServerSet(
        base_dir=settings.base_dir,
        ping_interval=settings.health_interval_seconds,
        # Tool pinning (issue 7): only pinned, unchanged tools are offered; approvals are polled.
        pins=PinStore(engine),
        pins_poll_seconds=settings.registry_poll_seconds,
    )
    codemode = CodeModeGateway(servers)
    audit = AuditLog.from_settings(settings, engine) if settings.audit.enabled else None
    # A missing or broken policy folder stops the start here: with no policy set, nothing could be
    # permitted, and a portal that silently denies everything is harder to diagnose than one that says why.
    policies = PolicyEngine.from_settings(settings, servers.catalog)
    policy = PolicyStage.from_settings(settings, policies, engine)
    policy.availability = servers.ensure_available
    if audit is not None:
        policy.redact = audit.redactor.scrub
        log = audit

        def reloaded(version: str, error: PolicyError | None) -> None:
            details = {"refused": error.problems} if error is not None else {"source": "folder watcher"}
            log.post(log.admin_record("portal", "policy.reload", version, details))

        policies.on_reload = reloaded
    pipeline = Pipeline(build_stages(settings, servers, audit, policy), Forwarder(servers, codemode))
    codemode.bind(pipeline)
    streams = Streams()
    servers.subscribe(streams.list_changed)
    key = (
        hashlib.sha256(resolve_secret(settings.session_secret, base_dir=settings.base_dir).encode()).digest()
        if settings.session_secret
        else None
    )

    async def authenticate(token: str, audience: str) -> Principal:
        return await auth.verify_access_token(token, audience=audience)

    transport = McpTransport(
        pipeline=pipeline,
        authenticate=authenticate,
        public_url=settings.public_url,
        sessions=SessionCodec(key),
        streams=streams,
        server_info={"name": "portal", "version": __version__},
        instructions={
            "aggregated": "Tools of several MCP servers, each named {server}_{tool}.",
            "codemode": "Write Python against a typed SDK of your tools: `search` finds tools and shows their "
            "signatures; `execute` runs a program that calls them, several at once with asyncio.gather.",
        },
        max_body_bytes=settings.max_body_bytes,
        max_json_depth=settings.max_json_depth,
    )
    portal = Portal(settings, registry, auth, servers, pipeline, transport, streams, codemode, audit, policy)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await asyncio.to_thread(init_db, engine)
        await auth.start()
        if audit is not None:
            await audit.start()
            audit.subscribe(auth.events)
        await asyncio.to_thread(policy.prepare)
        await policy.start()
        await servers.apply(await asyncio.to_thread(registry.servers))
        await codemode.start()
        watcher = asyncio.create_task(_watch_registry(portal), name="registry-watch")
        try:
            yield
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await servers.close()
            await codemode.stop()
            await policy.close()
            if audit is not None:
                await audit.close()
            await auth.close()
            with contextlib.suppress(Exception):
                await asyncio.to_thread(registry.record_health, _health_rows(portal))
            engine.dispose()

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        try:
            await asyncio.to_thread(_ping_database, engine)
            database = "ok"
        except Exception as exc:
            database = f"unreachable: {type(exc).__name__}"
        body: dict[str, Any] = {"status": "ok" if database == "ok" else "unavailable", "database": database}
        if audit is not None:
            # Calls still go on while the database is away (the journal holds their records): not a 503.
            body["audit"] = "journaling" if audit.spooling else "ok"
        body["servers"] = dict(servers.health())
        return JSONResponse(body, status_code=200 if database == "ok" else 503)

    async def resource_metadata(request: Request) -> Response:
        # Browser-based clients read it from another origin, as they do the authorization server's metadata.
        if request.method == "OPTIONS":
            return Response(status_code=204, headers=CORS_PREFLIGHT)
        path = "/" + request.path_params["path"]
        if path == "/mcp":
            scopes = ["tools:*", *(f"tools:{name}" for name in servers.upstreams)]
        elif path == CODEMODE_ENDPOINT.path:
            scopes = ["codemode"]
        elif path == API_PATH:
            scopes = sorted(ADMIN_SCOPES)
        elif (name := _server_of(path)) is not None and name in servers.upstreams:
            scopes = [f"tools:{name}"]
        else:
            return JSONResponse({"error": "not_found"}, status_code=404)
        metadata = protected_resource_metadata(settings.public_url, path, scopes)
        return JSONResponse(metadata, headers={"Access-Control-Allow-Origin": "*"})

    async def metrics(request: Request) -> Response:
        return PlainTextResponse(render_metrics(servers), media_type="text/plain; version=0.0.4")

    aggregated = _McpEndpoint(portal, None)
    per_server = _McpEndpoint(portal, "server")
    code_mode = _McpEndpoint(portal, "codemode")
    app = _PortalApp(
        routes=[
            Route("/mcp", aggregated, methods=["GET", "POST", "DELETE"]),
            Route("/servers/{name}/mcp", per_server, methods=["GET", "POST", "DELETE"]),
            Route(CODEMODE_ENDPOINT.path, code_mode, methods=["GET", "POST", "DELETE"]),
            Route("/.well-known/oauth-protected-resource/{path:path}", resource_metadata, methods=["GET", "OPTIONS"]),
            *auth.routes(),
            *api_routes(ApiAccess(authenticate, settings.public_url), audit, policy.approvals, policies),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
        ],
        lifespan=lifespan,
    )
    app.state.portal = portal
    app.mcp_aggregated, app.mcp_server, app.mcp_codemode = aggregated, per_server, code_mode
    app.inbound = InboundRules(settings.public_url, settings.allowed_hosts, settings.allowed_origins)
    return app


class _PortalApp(Starlette):
    """Starlette, with the MCP endpoints (the hot path) dispatched before its middleware and router."""

    mcp_aggregated: Any = None
    mcp_server: Any = None
    mcp_codemode: Any = None

    inbound: InboundRules | None = None
    """`Host`/`Origin` checks (DNS rebinding, `portal.inbound`), run before anything else."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.mcp_aggregated is not None:
            path = scope["path"]
            endpoint = None
            if path == "/mcp":
                endpoint = self.mcp_aggregated
            elif path.startswith("/servers/") and path.endswith("/mcp"):
                name = path[9:-4]
                if name and "/" not in name:
                    scope["path_params"] = {"name": name}
                    endpoint = self.mcp_server
            elif path == "/codemode/mcp":
                endpoint = self.mcp_codemode
            if endpoint is not None:
                if self.inbound is not None and (refusal := self.inbound.refusal(scope, mcp=True)) is not None:
                    await send_mcp_refusal(send, refusal)
                    return
                scope["app"] = self
                await endpoint(scope, receive, mcp_send(send))
                return
        if scope["type"] == "http":
            if (
                self.inbound is not None
                and scope["path"] not in PROBE_PATHS
                and (refusal := self.inbound.refusal(scope, mcp=False)) is not None
            ):
                await send_http_refusal(send, refusal)
                return
            send = secure_send(send)
        await super().__call__(scope, receive, send)


class _McpEndpoint:
    """ASGI app of one MCP route (`/mcp`, `/codemode/mcp`); resolves `/servers/{name}/mcp` to its server."""

    def __init__(self, portal: Portal, kind: str | None) -> None:
        self.portal = portal
        self.kind = kind
        self._aggregated = Endpoint("aggregated", "/mcp")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.kind is None:
            await self.portal.transport.handle(self._aggregated, scope, receive, send)
            return
        if self.kind == "codemode":
            await self.portal.transport.handle(CODEMODE_ENDPOINT, scope, receive, send)
            return
        name = scope["path_params"]["name"]
        upstream = self.portal.servers.get(name)
        if upstream is None or not upstream.config.enabled:
            body = orjson.dumps(jsonrpc_error(None, UnknownServer(f"Unknown server: {name}", server=name)))
            response = Response(body, status_code=404, media_type="application/json")
            await response(scope, receive, send)
            return
        endpoint = Endpoint("server", f"/servers/{name}/mcp", server=name)
        await self.portal.transport.handle(endpoint, scope, receive, send)


def _server_of(path: str) -> str | None:
    parts = path.split("/")
    return parts[2] if len(parts) == 4 and parts[1] == "servers" and parts[3] == "mcp" else None


def _ping_database(engine: Any) -> None:
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))


def _health_rows(portal: Portal) -> list[HealthRow]:
    return [
        HealthRow(
            name=name,
            state=h["state"],
            protocol_version=h["protocol_version"],
            last_error=h["last_error"],
            latency_p50_ms=h["p50_ms"],
            calls=h["calls"],
            errors=h["errors"],
        )
        for name, h in portal.servers.health().items()
    ]


async def _watch_registry(portal: Portal) -> None:
    """Apply registry changes made by the CLI or another replica, and publish health for them."""
    registry, servers = portal.registry, portal.servers
    version = await asyncio.to_thread(registry.version)
    interval = portal.settings.registry_poll_seconds
    while True:
        await asyncio.sleep(interval)
        try:
            current = await asyncio.to_thread(registry.version)
            if current != version:
                version = current
                await servers.apply(await asyncio.to_thread(registry.servers))
            await asyncio.to_thread(registry.record_health, _health_rows(portal))
        except asyncio.CancelledError:
            raise
        except Exception:
            # The database being away must not stop the portal serving; the next round retries.
            logger.warning("registry poll failed", exc_info=True)
