"""MCP Streamable HTTP towards clients, in both protocol eras.

One ASGI handler serves every MCP endpoint. It validates the HTTP layer and the
JSON-RPC envelope, works out which era the client speaks, answers the lifecycle
requests itself (`initialize`, `ping`, `server/discover`, `subscriptions/listen`,
the standalone GET stream, session DELETE) and runs every other request through
the pipeline.

- 2025-11-25 (handshake era): `initialize` opens a session whose id travels in
  `Mcp-Session-Id`; server notifications flow on the GET stream; a client cancels
  with `notifications/cancelled` (MCP 2025-11-25, basic/utilities/cancellation).
- 2026-07-28 (stateless era): every POST carries its own envelope in
  `params._meta` and mirrors it in routing headers, checked with the SDK's own
  ladder; closing the response stream cancels the request; list changes flow on
  `subscriptions/listen` streams.

A response is plain JSON unless the request produces notifications (progress,
log messages) before its result, or runs long enough to need keep-alive pings;
then it switches to `text/event-stream`, as the SDK's servers do.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from mcp.shared.inbound import (
    InboundLadderRejection,
    classify_inbound_request,
    find_duplicated_routing_header,
)
from mcp_types import LOG_LEVEL_META_KEY, PROTOCOL_VERSION_META_KEY
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, KNOWN_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS
from starlette.datastructures import Headers
from starlette.types import Receive, Scope, Send

from portal.auth.errors import InvalidToken
from portal.auth.guard import endpoint_scope
from portal.auth.principal import Principal
from portal.auth.resource import AuthenticationRequired, InsufficientScope, bearer_token, challenge
from portal.errors import (
    BadRequest,
    HeaderMismatch,
    PortalError,
    SessionNotFound,
    UnsupportedProtocolVersion,
)
from portal.gateway._exchange import (
    PING_INTERVAL,
    SSE_HEADERS,
    WATCH_AFTER,
    HttpError,
    RunState,
    respond,
    wait_disconnect,
)
from portal.gateway.body import read_json_body
from portal.gateway.forward import MCP_PARAM_HEADERS
from portal.gateway.rendering import error_status, jsonrpc_error, jsonrpc_result, shape_result, sse_event
from portal.gateway.sessions import Session, SessionCodec, Stream, Streams
from portal.pipeline import Endpoint, Handler, McpRequest

__all__ = ["Authenticate", "McpTransport"]

Authenticate = Callable[[str, str], Awaitable[Principal]]
"""`(token, audience) -> Principal`, raising `InvalidToken`."""

logger = logging.getLogger(__name__)

REQUEST_CANCELLED = -32800
"""The answer to a request the client cancelled (2025-11-25), as the SDK's servers give it."""
MODERN = MODERN_PROTOCOL_VERSIONS[-1]
LATEST_HANDSHAKE = HANDSHAKE_PROTOCOL_VERSIONS[-1]
_LIST_KINDS = frozenset({"tools", "resources", "prompts"})


class McpTransport:
    """Serves MCP Streamable HTTP for the portal's endpoints."""

    def __init__(
        self,
        *,
        pipeline: Handler,
        authenticate: Authenticate,
        public_url: str,
        sessions: SessionCodec,
        streams: Streams,
        server_info: Mapping[str, Any],
        instructions: Mapping[str, str] | None = None,
        max_body_bytes: int = 4 * 1024 * 1024,
        max_json_depth: int = 64,
    ) -> None:
        self.pipeline = pipeline
        self.authenticate = authenticate
        self.public_url = public_url
        self.sessions = sessions
        self.streams = streams
        self.server_info = dict(server_info)
        self.instructions = dict(instructions or {})
        """What each kind of endpoint tells a client about itself (`initialize`, `server/discover`)."""
        self.max_body_bytes = max_body_bytes
        self.max_json_depth = max_json_depth
        self._inflight: dict[tuple[str, Any], RunState] = {}

    def capabilities(self, *, modern: bool) -> dict[str, Any]:
        caps: dict[str, Any] = {
            "tools": {"listChanged": True},
            "resources": {"listChanged": True},
            "prompts": {"listChanged": True},
            "completions": {},
        }
        if not modern:
            caps["logging"] = {}
        return caps

    async def handle(self, endpoint: Endpoint, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        method = scope["method"]
        try:
            if method not in ("POST", "GET", "DELETE"):
                raise HttpError(405, None, [(b"allow", b"GET, POST, DELETE")])
            # Every request on every MCP endpoint carries a valid token for exactly this endpoint
            # (MCP authorization; RFC 8707 audience binding), before anything else is looked at.
            principal = await self._authenticate(endpoint, headers, scope.get("query_string", b""))
            if method == "POST":
                await self._post(endpoint, scope, headers, receive, send, principal)
            elif method == "GET":
                await self._get(endpoint, headers, receive, send, principal)
            else:
                await self._delete(headers, send, principal)
        except HttpError as exc:
            await respond(send, exc.status, orjson.dumps(exc.body) if exc.body else b"", extra=exc.headers)

    async def _authenticate(self, endpoint: Endpoint, headers: dict[str, str], query: bytes) -> Principal:
        try:
            token = bearer_token(headers, query)
            if token is None:
                # RFC 6750 §3.1: a request without credentials gets a challenge but no error code.
                raise AuthenticationRequired("Authentication required", error=None)
            return await self.authenticate(token, f"{self.public_url}{endpoint.path}")
        except AuthenticationRequired as exc:
            raise self._challenge(endpoint, exc) from None
        except InvalidToken as exc:
            raise self._challenge(endpoint, AuthenticationRequired(exc.message)) from None

    def _challenge(self, endpoint: Endpoint, exc: AuthenticationRequired | InsufficientScope) -> HttpError:
        header = challenge(self.public_url, endpoint.path, exc, endpoint_scope(endpoint.kind, endpoint.server))
        body = jsonrpc_error(None, exc)
        return HttpError(
            exc.http_status, body, [(b"content-type", b"application/json"), (b"www-authenticate", header.encode())]
        )

    # -- POST ------------------------------------------------------------------------------------

    async def _post(
        self,
        endpoint: Endpoint,
        scope: Scope,
        headers: dict[str, str],
        receive: Receive,
        send: Send,
        principal: Principal,
    ) -> None:
        content_type = headers.get("content-type", "")
        if content_type.split(";")[0].strip().lower() != "application/json":
            raise HttpError.rpc(415, BadRequest("Content-Type must be application/json"))
        accept = headers.get("accept", "*/*")
        if not any(t in accept for t in ("application/json", "text/event-stream", "*/*", "application/*")):
            raise HttpError.rpc(406, BadRequest("Accept must allow application/json or text/event-stream"))
        try:
            message = await read_json_body(receive, headers, self.max_body_bytes, self.max_json_depth)
        except PortalError as exc:
            raise HttpError.rpc(413 if exc.code == "payload_too_large" else 400, exc) from None
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
            raise HttpError.rpc(400, BadRequest("Body must be a single JSON-RPC request or notification object"))
        version_header = headers.get("mcp-protocol-version")
        params = message.get("params")
        meta = params.get("_meta") if isinstance(params, dict) else None
        if version_header is not None and version_header not in KNOWN_PROTOCOL_VERSIONS:
            # A request in the 2026 envelope is told the versions server/discover offers.
            stateless = isinstance(meta, dict) and PROTOCOL_VERSION_META_KEY in meta
            raise HttpError.rpc(400, _unsupported(version_header, modern=stateless), message.get("id"))
        modern = version_header in MODERN_PROTOCOL_VERSIONS or (
            version_header is None
            and "mcp-session-id" not in headers
            and isinstance(meta, dict)
            and "io.modelcontextprotocol/protocolVersion" in meta
        )
        if "method" not in message:
            # A posted response: the portal sends clients no requests, so there is nothing to match.
            if modern:
                raise HttpError.rpc(400, BadRequest("Body must be a single JSON-RPC request or notification"))
            await respond(send, 202, b"")
            return
        if not isinstance(message["method"], str) or (params is not None and not isinstance(params, dict)):
            raise HttpError.rpc(400, BadRequest("Invalid JSON-RPC request"), message.get("id"))
        if "id" not in message:
            await self._notification(message, headers, modern, send, principal)
            return
        request_id = message["id"]
        if isinstance(request_id, bool) or not isinstance(request_id, str | int):
            raise HttpError.rpc(400, BadRequest("Request id must be a string or an integer"))
        if modern:
            await self._modern_request(endpoint, message, scope, headers, receive, send, principal)
        else:
            await self._legacy_request(endpoint, message, headers, receive, send, principal)

    async def _notification(
        self, message: dict[str, Any], headers: dict[str, str], modern: bool, send: Send, principal: Principal
    ) -> None:
        if not modern and message["method"] == "notifications/cancelled":
            session = self._session(headers, principal)
            params = message.get("params") or {}
            task = self._inflight.get((session.id, params.get("requestId")))
            if task is not None:
                task.cancel()
        await respond(send, 202, b"")

    async def _legacy_request(
        self,
        endpoint: Endpoint,
        message: dict[str, Any],
        headers: dict[str, str],
        receive: Receive,
        send: Send,
        principal: Principal,
    ) -> None:
        method, request_id = message["method"], message["id"]
        params = message.get("params") or {}
        if method == "initialize":
            asked = params.get("protocolVersion")
            version = asked if asked in HANDSHAKE_PROTOCOL_VERSIONS else LATEST_HANDSHAKE
            session = self.sessions.mint(version, _owner(principal))
            result: dict[str, Any] = {
                "protocolVersion": version,
                "capabilities": self.capabilities(modern=False),
                "serverInfo": self.server_info,
            }
            if endpoint.kind in self.instructions:
                result["instructions"] = self.instructions[endpoint.kind]
            body = orjson.dumps(jsonrpc_result(request_id, result))
            await respond(send, 200, body, json=True, extra=[(b"mcp-session-id", session.id.encode())])
            return
        session = self._session(headers, principal)
        session_header = [(b"mcp-session-id", session.id.encode())]
        if method == "ping":
            await respond(send, 200, orjson.dumps(jsonrpc_result(request_id, {})), json=True, extra=session_header)
            return
        request = McpRequest(
            endpoint=endpoint,
            method=method,
            params=params,
            request_id=request_id,
            protocol_version=session.protocol_version,
            principal=principal,
        )
        await self._run(request, receive, send, session_header, inflight_key=(session.id, request_id))

    async def _modern_request(
        self,
        endpoint: Endpoint,
        message: dict[str, Any],
        scope: Scope,
        headers: dict[str, str],
        receive: Receive,
        send: Send,
        principal: Principal,
    ) -> None:
        request_id = message["id"]
        raw_headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        duplicated = find_duplicated_routing_header(raw_headers)
        if duplicated is not None:
            raise HttpError.rpc(400, HeaderMismatch(f"{duplicated} header appears more than once"), request_id)
        verdict = classify_inbound_request(message, headers=headers)
        if isinstance(verdict, InboundLadderRejection):
            error = {"code": verdict.code, "message": verdict.message}
            if verdict.data is not None:
                error["data"] = verdict.data
            body = {"jsonrpc": "2.0", "id": request_id, "error": error}
            raise HttpError(error_status(body, modern=True), body, [(b"content-type", b"application/json")])
        method = message["method"]
        params = message.get("params") or {}
        if method == "server/discover":
            result: dict[str, Any] = {
                "supportedVersions": list(MODERN_PROTOCOL_VERSIONS),
                "capabilities": self.capabilities(modern=True),
                "_meta": {"io.modelcontextprotocol/serverInfo": self.server_info},
            }
            if endpoint.kind in self.instructions:
                result["instructions"] = self.instructions[endpoint.kind]
            result = shape_result(method, result, modern=True)
            result["_meta"] = {"io.modelcontextprotocol/serverInfo": self.server_info}
            await respond(send, 200, orjson.dumps(jsonrpc_result(request_id, result)), json=True)
            return
        if method == "subscriptions/listen":
            await self._listen(endpoint, request_id, params, headers, receive, send)
            return
        request = McpRequest(
            endpoint=endpoint,
            method=method,
            params={k: v for k, v in params.items() if k != "_meta"} | _caller_meta(params),
            request_id=request_id,
            protocol_version=verdict.protocol_version,
            client_info=verdict.client_info,
            client_capabilities=verdict.client_capabilities,
            principal=principal,
        )
        if method == "tools/call":
            # Checked against the tool's schema by the forwarder (basic/transports#custom-headers).
            raw = [(k, v) for k, v in scope["headers"] if k.lower().startswith(b"mcp-param-")]
            request.state[MCP_PARAM_HEADERS] = Headers(raw=raw) if raw else _NO_HEADERS
        await self._run(request, receive, send, [], inflight_key=None)

    async def _run(
        self,
        request: McpRequest,
        receive: Receive,
        send: Send,
        extra: list[tuple[bytes, bytes]],
        *,
        inflight_key: tuple[str, Any] | None,
    ) -> None:
        """Run one request through the pipeline and write its answer, JSON or SSE.

        The pipeline runs in this task. Only a request still running after WATCH_AFTER gets a
        helper task, which notices the client going away and sends keep-alive pings.
        """
        me = asyncio.current_task()
        assert me is not None
        run = RunState(me, send, extra)

        async def notify(method: str, params: Mapping[str, Any]) -> None:
            await run.write(sse_event({"jsonrpc": "2.0", "method": method, "params": dict(params)}))

        request.notify = notify
        loop = asyncio.get_running_loop()
        timer = loop.call_later(WATCH_AFTER, run.watch, receive)
        if inflight_key is not None:
            self._inflight[inflight_key] = run
        try:
            try:
                response = await self._answer(request)
            except asyncio.CancelledError:
                if run.cancelled_by is None or me.uncancel() > 0:
                    raise
                if run.cancelled_by == "disconnect":
                    return
                # 2025-11-25: the client cancelled with notifications/cancelled; end the exchange
                # with REQUEST_CANCELLED, which the client (no longer waiting) drops.
                response = _cancelled_answer(request.request_id)
            except InsufficientScope as exc:
                if run.streaming:
                    response = jsonrpc_error(request.request_id, exc)
                else:
                    # MCP authorization, step-up: an HTTP 403 the client's OAuth layer acts on.
                    error = self._challenge(request.endpoint, exc)
                    async with run.lock:
                        run.finished = True
                        await respond(send, error.status, orjson.dumps(error.body), extra=error.headers + extra)
                    return
            async with run.lock:
                run.finished = True
                if run.streaming:
                    await send({"type": "http.response.body", "body": sse_event(response), "more_body": False})
                else:
                    status = error_status(response, modern=request.modern)
                    await respond(send, status, orjson.dumps(response), json=True, extra=extra)
        finally:
            run.finished = True
            timer.cancel()
            if run.keeper is not None:
                run.keeper.cancel()
            if inflight_key is not None:
                self._inflight.pop(inflight_key, None)

    async def _answer(self, request: McpRequest) -> dict[str, Any]:
        try:
            result = await self.pipeline(request)
        except (asyncio.CancelledError, InsufficientScope):
            raise
        except Exception as exc:
            return jsonrpc_error(request.request_id, exc)
        return jsonrpc_result(request.request_id, shape_result(request.method, result, modern=request.modern))

    # -- notification streams --------------------------------------------------------------------

    async def _listen(
        self,
        endpoint: Endpoint,
        request_id: Any,
        params: Mapping[str, Any],
        headers: dict[str, str],
        receive: Receive,
        send: Send,
    ) -> None:
        if "text/event-stream" not in headers.get("accept", ""):
            raise HttpError(406, None)
        wanted = params.get("notifications") if isinstance(params.get("notifications"), dict) else {}
        assert isinstance(wanted, dict)
        honored = {
            key: True for key in ("toolsListChanged", "resourcesListChanged", "promptsListChanged") if wanted.get(key)
        }
        kinds = frozenset(key.removesuffix("ListChanged") for key in honored)
        meta = {"io.modelcontextprotocol/subscriptionId": request_id}
        stream = Stream(endpoint.path, endpoint.server, kinds, subscription_id=request_id)
        ack = {
            "jsonrpc": "2.0",
            "method": "notifications/subscriptions/acknowledged",
            "params": {"notifications": honored, "_meta": meta},
        }
        await self._stream(stream, receive, send, [], first=ack)

    async def _get(
        self, endpoint: Endpoint, headers: dict[str, str], receive: Receive, send: Send, principal: Principal
    ) -> None:
        if headers.get("mcp-protocol-version") in MODERN_PROTOCOL_VERSIONS:
            # 2026-07-28 has no standalone stream; subscriptions/listen replaces it.
            raise HttpError(405, None, [(b"allow", b"POST")])
        if "text/event-stream" not in headers.get("accept", ""):
            raise HttpError(406, None)
        session = self._session(headers, principal)
        stream = Stream(endpoint.path, endpoint.server, _LIST_KINDS)
        await self._stream(stream, receive, send, [(b"mcp-session-id", session.id.encode())])

    async def _stream(
        self, stream: Stream, receive: Receive, send: Send, extra: list[tuple[bytes, bytes]], first: Any = None
    ) -> None:
        self.streams.open(stream)
        watcher = asyncio.create_task(wait_disconnect(receive))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS + extra})
            await send({"type": "http.response.body", "body": sse_event(first) if first else b"", "more_body": True})
            while True:
                getter = asyncio.ensure_future(stream.queue.get())
                done, _ = await asyncio.wait(
                    {getter, watcher}, timeout=PING_INTERVAL, return_when=asyncio.FIRST_COMPLETED
                )
                if watcher in done:
                    getter.cancel()
                    return
                if getter not in done:
                    getter.cancel()
                    await send({"type": "http.response.body", "body": b": ping\r\n\r\n", "more_body": True})
                    continue
                message = getter.result()
                if not message:
                    break
                await send({"type": "http.response.body", "body": sse_event(message), "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()
            self.streams.close(stream)

    async def _delete(self, headers: dict[str, str], send: Send, principal: Principal) -> None:
        session = self._session(headers, principal)
        self.sessions.terminate(session)
        await respond(send, 200, b"")

    def _session(self, headers: dict[str, str], principal: Principal) -> Session:
        session_id = headers.get("mcp-session-id")
        if session_id is None:
            raise HttpError.rpc(400, BadRequest("Bad Request: Mcp-Session-Id header is required"))
        # A session belongs to the user and client that opened it: another token, even a valid
        # one, cannot ride on it (MCP security best practices, session hijacking).
        session = self.sessions.check(session_id, _owner(principal))
        if session is None:
            # Streamable HTTP, session management: an unknown session is a 404, so the client re-initializes.
            raise HttpError.rpc(404, SessionNotFound("Session not found"))
        return session


_NO_HEADERS: Mapping[str, str] = {}


def _owner(principal: Principal) -> str:
    return f"{principal.subject}\x00{principal.client_id}"


def _cancelled_answer(request_id: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": REQUEST_CANCELLED, "message": "Request cancelled"}}


def _unsupported(requested: str, *, modern: bool = False) -> UnsupportedProtocolVersion:
    supported = [*MODERN_PROTOCOL_VERSIONS] if modern else [*HANDSHAKE_PROTOCOL_VERSIONS, *MODERN_PROTOCOL_VERSIONS]
    return UnsupportedProtocolVersion("Unsupported protocol version", supported=supported, requested=requested)


def _caller_meta(params: Mapping[str, Any]) -> dict[str, Any]:
    """Keep only the `_meta` keys that belong to the call (progress token, log level), not the 2026 envelope."""
    meta = params.get("_meta")
    if not isinstance(meta, Mapping):
        return {}
    kept = {k: v for k, v in meta.items() if k == LOG_LEVEL_META_KEY or not k.startswith("io.modelcontextprotocol/")}
    return {"_meta": kept} if kept else {}
