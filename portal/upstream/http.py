"""Remote MCP servers over Streamable HTTP, spoken with aiohttp.

Both eras of the transport (MCP 2025-11-25 and 2026-07-28 basic/transports#streamable-http):

- Handshake era: `initialize` opens a session named by `Mcp-Session-Id`; every later
  POST carries it and `MCP-Protocol-Version`; answers come as JSON or as an SSE stream
  that may also carry the request's notifications; a standalone GET stream carries the
  server's own notifications; a 404 means the session is gone; DELETE ends it.
- 2026 era: every request is a self-contained POST with the `_meta` envelope and the
  routing headers (`Mcp-Method`, `Mcp-Name`, `Mcp-Param-*`); closing the response
  cancels it; server notifications arrive on a long-lived `subscriptions/listen` stream.

The hot path is one pooled, keep-alive aiohttp session, orjson, and no model validation.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
from collections.abc import Mapping
from typing import Any, Final

import aiohttp
import orjson

from portal.errors import UpstreamError, UpstreamProtocolError, UpstreamRejected, UpstreamUnavailable
from portal.upstream._headers import InputSchemaLookup, RoutingHeaders
from portal.upstream._rpc import Call, Protocol, RpcConnector, result_of
from portal.upstream._sse import SseParser, SseTooLarge
from portal.upstream.base import UpstreamInfo

__all__ = ["HttpConnector", "InputSchemaLookup"]

KEEPALIVE_SECONDS = 4.0
"""How long an idle connection to an upstream is kept for reuse."""

logger = logging.getLogger("portal.upstream.http")

_ACCEPT: Final = "application/json, text/event-stream"
_MAX_RESUMPTIONS: Final = 3
_MAX_ERROR_BODY: Final = 1 << 20
_DRAIN_TIMEOUT: Final = 5.0
_listen_ids = itertools.count(1)


class HttpConnector(RpcConnector):
    """One remote MCP server, reached over Streamable HTTP.

    `HttpConnector(name, url, *, protocol="auto", headers=None, session=None,
    connect_timeout=10.0, input_schema=None)`:

    - `headers` are sent with every HTTP request (the MCP headers win over them).
    - `session` is a shared `aiohttp.ClientSession` to pool connections in; without
      one the connector makes (and closes) its own, keep-alive and unbounded.
    - `connect_timeout` bounds connecting and each negotiation step of `start()`.
    - `input_schema` looks up a tool's input schema for the 2026 `Mcp-Param-*`
      headers (basic/transports#custom-headers) of a tool the connector has not seen
      in a `tools/list` yet; tools it has seen are handled without it. In the 2026
      era a `tools/list` result loses the tools whose `x-mcp-header` annotations are
      invalid, as the spec requires of clients.

    Attributes: `name`, `url`, `protocol`, `info` (after `start`), `on_notification`,
    `session_id` (handshake era), `listening` (an `asyncio.Event` set while the GET
    stream or the `subscriptions/listen` stream is open), `closed`.

    Methods: `start()`, `request(...)`, `close()`, `wait_closed()`; the `Connector`
    contract in `portal.upstream.base` says what they do. A handshake-era session
    the server forgets (HTTP 404) is re-initialized once, transparently, and the
    request retried; when that fails the connector is `closed`. `closed` is also set
    by `close()`; unreachable servers make requests fail without closing it. After
    a lost notification stream or a renewed session, the owner gets a
    `list_changed` for each kind of list the server has, since changes may have
    been missed. `start()` may be called again once closed: it opens a new session.
    """

    def __init__(
        self,
        name: str,
        url: str,
        *,
        protocol: Protocol = "auto",
        headers: Mapping[str, str] | None = None,
        session: aiohttp.ClientSession | None = None,
        connect_timeout: float = 10.0,
        input_schema: InputSchemaLookup | None = None,
    ) -> None:
        super().__init__(name, protocol=protocol, connect_timeout=connect_timeout)
        self.url = url
        self.session_id: str | None = None
        self._headers = dict(headers or {})
        self._http = session
        self._owns_http = session is None
        self._routing = RoutingHeaders(name, input_schema)
        self._base: dict[str, str] = {}
        self._renew_lock = asyncio.Lock()

    async def start(self) -> UpstreamInfo:
        """Connect, negotiate the era and open the server-notification stream."""
        if self.info is not None and not self.closed:
            raise RuntimeError(f"connector {self.name!r} is already started")
        self._reset()
        self.session_id = None
        self._routing.clear()
        if self._owns_http and (self._http is None or self._http.closed):
            self._http = aiohttp.ClientSession(
                # Idle pooled connections are dropped before the 5 s keep-alive of uvicorn and Node
                # servers runs out, so that a call is not written onto one the server is closing.
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE_SECONDS),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout),
                read_bufsize=1 << 18,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        try:
            info = await self._negotiate()
        except BaseException:
            await self.close()
            raise
        self.info = info
        self._base = self._post_headers()
        self._spawn(self._pump_events())
        self._spawn(self._get_stream() if not info.modern else self._listen())
        return info

    async def close(self) -> None:
        """End the session (DELETE in the handshake era) and release the connections; idempotent."""
        self._mark_closed("is shut down")
        await self._cancel_tasks()
        session_id, self.session_id = self.session_id, None
        http = self._http
        if session_id is not None and http is not None and not http.closed:
            # basic/transports#session-management: clients SHOULD DELETE a session they no longer need.
            headers = {**self._headers, "Mcp-Session-Id": session_id}
            if self.info is not None:
                headers["MCP-Protocol-Version"] = self.info.protocol_version
            try:
                async with asyncio.timeout(2.0):
                    response = await http.delete(self.url, headers=headers, allow_redirects=False)
                    response.release()
            except (aiohttp.ClientError, TimeoutError) as exc:
                logger.debug("could not end the session with %s: %r", self.name, exc)
        if self._owns_http and http is not None:
            self._http = None
            await http.close()

    # -- requests -----------------------------------------------------------------------

    async def _roundtrip(self, call: Call) -> dict[str, Any]:
        body = orjson.dumps(call.message)
        modern = self.info is not None and self.info.modern
        for attempt in range(2):
            session_id = self.session_id
            headers = self._modern_headers(call) if modern else self._base
            response = await self._send("POST", headers, body)
            if response.status == 404 and session_id is not None and attempt == 0:
                # basic/transports#session-management: a 404 for a session id means the session is
                # gone and the client MUST start a new one; the request never ran, so resend it.
                response.release()
                await self._renew(session_id)
                continue
            result = result_of(self.name, await self._answer(response, call))
            if modern and call.method == "tools/list":
                self._routing.absorb(result)
            return result
        raise UpstreamUnavailable(self.name, "ended the new session at once")

    async def _bootstrap(self, call: Call, version: str | None) -> dict[str, Any]:
        headers = {**self._headers, "Accept": _ACCEPT, "Content-Type": "application/json"}
        if version is not None:
            headers["MCP-Protocol-Version"] = version
            headers["Mcp-Method"] = call.method
        else:
            self.session_id = None
        response = await self._send("POST", headers, orjson.dumps(call.message))
        if version is None and response.status < 300:
            self.session_id = response.headers.get("Mcp-Session-Id")
        return result_of(self.name, await self._answer(response, call))

    async def _reply(self, message: dict[str, Any]) -> None:
        await self._post_message(message)

    def _cancel_upstream(self, call: Call, reason: str) -> None:
        if self.info is not None and not self.info.modern:
            # basic/utilities/cancellation: a handshake-era server learns of it only through this
            # notification (a dropped connection is explicitly not a cancellation). In the 2026
            # era `_answer` has closed the response stream, which is the cancellation.
            params = {"requestId": call.id, "reason": reason}
            self._spawn(self._quietly(self._notify("notifications/cancelled", params)))

    async def _quietly(self, step: Any) -> None:
        try:
            await step
        except UpstreamError as exc:
            logger.debug("%s: %s", self.name, exc.message)

    async def _post_message(self, message: dict[str, Any]) -> None:
        headers = self._post_headers()
        response = await self._send("POST", headers, orjson.dumps(message))
        try:
            if response.status >= 300:
                raise await self._refusal(response)
        finally:
            response.release()

    def _post_headers(self) -> dict[str, str]:
        headers = {**self._headers, "Accept": _ACCEPT, "Content-Type": "application/json"}
        if self.info is not None:
            headers["MCP-Protocol-Version"] = self.info.protocol_version
        if self.session_id is not None:
            headers["Mcp-Session-Id"] = self.session_id
        return headers

    def _modern_headers(self, call: Call) -> dict[str, str]:
        return self._routing.for_request(self._base, call.method, call.message.get("params"))

    async def _renew(self, stale_session: str) -> None:
        async with self._renew_lock:
            if self.closed:
                raise UpstreamUnavailable(self.name, self._closed_cause)
            if self.session_id != stale_session:
                return  # another request renewed it meanwhile
            logger.info("session with %s expired; initializing a new one", self.name)
            try:
                self.info = await self._handshake()
            except UpstreamError as exc:
                cause = f"ended its session and refused a new one: {exc.cause}"
                self._mark_closed(cause)
                raise UpstreamUnavailable(self.name, cause) from None
            self._base = self._post_headers()
            self._announce_possible_changes()

    # -- reading answers --------------------------------------------------------------------

    async def _send(self, method: str, headers: Mapping[str, str], body: bytes | None = None) -> aiohttp.ClientResponse:
        http = self._http
        if http is None or http.closed:
            cause = (
                self._closed_cause if self.closed or http is None else "cannot be reached: its HTTP session is closed"
            )
            raise UpstreamUnavailable(self.name, cause)
        try:
            return await http.request(method, self.url, data=body, headers=headers, allow_redirects=False)
        except aiohttp.ClientError as exc:
            raise self._wire_error(exc) from None

    def _wire_error(self, exc: aiohttp.ClientError) -> UpstreamUnavailable:
        if self.closed:  # our own close() broke the connection
            return UpstreamUnavailable(self.name, self._closed_cause)
        return _transport_error(self.name, exc)

    async def _answer(self, response: aiohttp.ClientResponse, call: Call) -> dict[str, Any]:
        """The response message to `call`, read from `response` (closed on any failure)."""
        try:
            if response.status >= 300:
                raise await self._refusal(response)
            if response.status == 202:
                # basic/transports#sending-messages: 202 answers notifications; a request needs a response.
                raise UpstreamProtocolError(self.name, "answered a request with 202 Accepted and no response")
            if response.content_type == "application/json":
                message = await self.deliver(self._decode(await self._read(response)), call)
                if message is None:
                    raise UpstreamProtocolError(self.name, "answered with a JSON body that is not the response")
                return message
            if response.content_type == "text/event-stream":
                return await self._answer_stream(response, call)
            raise UpstreamProtocolError(self.name, f"answered {response.content_type}, not MCP")
        except BaseException:
            response.close()
            raise

    async def _answer_stream(self, response: aiohttp.ClientResponse, call: Call) -> dict[str, Any]:
        message, last_id, retry, broken = await self._read_stream(response, call)
        attempts = 0
        while message is None:
            # 2025-11-25 basic/transports#resumability-and-redelivery: a server may end the stream
            # early after an event id; the client resumes it with GET and Last-Event-ID.
            if last_id is None or self.info is None or self.info.modern or attempts >= _MAX_RESUMPTIONS:
                if broken is not None:
                    raise self._wire_error(broken)
                raise UpstreamUnavailable(self.name, "closed the response stream before answering")
            attempts += 1
            await asyncio.sleep((retry if retry is not None else 1000) / 1000)
            headers = {**self._base, "Accept": "text/event-stream", "Last-Event-ID": last_id}
            response = await self._send("GET", headers)
            try:
                if response.status != 200 or response.content_type != "text/event-stream":
                    raise UpstreamUnavailable(
                        self.name, f"refused to resume the response stream (HTTP {response.status})"
                    )
                message, resumed_id, retry, broken = await self._read_stream(response, call, retry)
            except BaseException:
                response.close()
                raise
            if resumed_id != last_id:
                attempts, last_id = 0, resumed_id
        return message

    async def _read_stream(
        self, response: aiohttp.ClientResponse, call: Call, retry: int | None = None
    ) -> tuple[dict[str, Any] | None, str | None, int | None, aiohttp.ClientError | None]:
        """Read SSE events until the answer to `call`.

        Returns the answer (None if the stream ended first), the last event id, the retry
        interval, and the error that broke the stream if it did not simply end.
        """
        parser = SseParser()
        last_id: str | None = None
        broken: aiohttp.ClientError | None = None
        try:
            async for chunk in response.content.iter_any():
                for event in parser.feed(chunk):
                    last_id = event.id if event.id is not None else last_id
                    retry = event.retry if event.retry is not None else retry
                    if not event.data:
                        continue  # a priming event: it only carries the id to resume from
                    message = await self.deliver(self._decode(event.data), call)
                    if message is not None:
                        await self._finish(response)
                        return message, last_id, retry, None
        except SseTooLarge as exc:
            raise UpstreamProtocolError(self.name, f"sent an oversized event: {exc}") from None
        except aiohttp.ClientError as exc:
            logger.debug("response stream from %s broke: %r", self.name, exc)
            broken = exc
        response.close()
        return None, last_id, retry, broken

    async def _finish(self, response: aiohttp.ClientResponse) -> None:
        """Give the connection back to the pool, once the end of the stream (due right after the answer) is read."""
        if response.content.at_eof():
            response.release()
        else:
            self._spawn(self._drain(response))

    async def _drain(self, response: aiohttp.ClientResponse) -> None:
        try:
            async with asyncio.timeout(_DRAIN_TIMEOUT):
                while await response.content.readany():
                    pass
        except (TimeoutError, aiohttp.ClientError):
            response.close()
            return
        response.release()

    async def _read(self, response: aiohttp.ClientResponse, limit: int | None = None) -> bytes:
        try:
            if limit is None:
                return await response.read()
            return await response.content.read(limit)
        except aiohttp.ClientError as exc:
            raise self._wire_error(exc) from None

    def _decode(self, raw: bytes) -> Any:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamProtocolError(self.name, "answered with something that is not JSON") from None

    async def _refusal(self, response: aiohttp.ClientResponse) -> UpstreamError:
        """The error an HTTP status of 300 or more stands for."""
        status = response.status
        if status in (401, 403):
            return UpstreamUnavailable(self.name, f"refused the portal's credentials (HTTP {status})")
        if 300 <= status < 400:
            return UpstreamProtocolError(self.name, f"redirected the request (HTTP {status}); configure its new URL")
        if response.content_type == "application/json":
            # A server may answer a JSON-RPC error with a 4xx status (2026: 400 for invalid
            # params, 404 for an unknown method); that error is its answer.
            try:
                message = orjson.loads(await self._read(response, _MAX_ERROR_BODY))
            except (orjson.JSONDecodeError, UpstreamError):
                message = None
            if isinstance(message, dict) and isinstance(message.get("error"), dict):
                try:
                    result_of(self.name, message)
                except UpstreamError as exc:
                    return exc
        if status >= 500:
            return UpstreamUnavailable(self.name, f"answered HTTP {status}")
        return UpstreamProtocolError(self.name, f"answered HTTP {status} without a JSON-RPC error")

    # -- the server's own notifications --------------------------------------------------------

    async def _get_stream(self) -> None:
        """Hold the standalone GET stream open (2025-11-25 basic/transports#listening-for-messages)."""
        delay, last_id, opened = 0.1, None, False
        while not self.closed:
            session_id = self.session_id
            headers = {**self._base, "Accept": "text/event-stream"}
            if last_id is not None:
                headers["Last-Event-ID"] = last_id
            retry: int | None = None
            try:
                response = await self._send("GET", headers)
                try:
                    if response.status == 405:
                        logger.debug("%s offers no standalone notification stream", self.name)
                        return
                    if response.status == 404 and session_id is not None:
                        await self._renew(session_id)
                        last_id = None
                        continue
                    if response.status != 200 or response.content_type != "text/event-stream":
                        raise await self._refusal(response)
                    self.listening.set()
                    if opened and last_id is None:
                        self._announce_possible_changes()
                    opened, delay = True, 0.1
                    last_id, retry = await self._follow(response, last_id)
                finally:
                    response.close()
                    self.listening.clear()
            except UpstreamError as exc:
                logger.debug("notification stream of %s: %s", self.name, exc.cause)
            await asyncio.sleep(retry / 1000 if retry is not None else delay)
            delay = min(delay * 2, 30.0)

    async def _follow(self, response: aiohttp.ClientResponse, last_id: str | None) -> tuple[str | None, int | None]:
        """Deliver the events of a notification stream until it ends; returns (last event id, retry)."""
        parser = SseParser()
        retry: int | None = None
        try:
            async for chunk in response.content.iter_any():
                for event in parser.feed(chunk):
                    last_id = event.id if event.id is not None else last_id
                    retry = event.retry if event.retry is not None else retry
                    if event.data:
                        try:
                            await self.deliver(self._decode(event.data), None)
                        except UpstreamProtocolError as exc:
                            logger.warning("notification stream of %s: %s", self.name, exc.cause)
        except (aiohttp.ClientError, SseTooLarge) as exc:
            logger.debug("notification stream of %s broke: %r", self.name, exc)
        return last_id, retry

    async def _listen(self) -> None:
        """Hold a `subscriptions/listen` stream open (2026-07-28 basic/utilities/subscriptions)."""
        wanted = self._listen_filter()
        delay = 0.1
        while wanted and not self.closed:
            call_id = f"listen-{next(_listen_ids)}"
            params = {"notifications": wanted, "_meta": self._envelope}
            message = {"jsonrpc": "2.0", "id": call_id, "method": "subscriptions/listen", "params": params}
            call = Call(id=call_id, method="subscriptions/listen", message=message)
            try:
                response = await self._send("POST", self._modern_headers(call), orjson.dumps(message))
                # The ack (which sets `listening`) and the events arrive as notifications on the
                # response stream; a result is the server's graceful end of the subscription.
                result_of(self.name, await self._answer(response, call))
            except UpstreamRejected as exc:
                logger.warning("%s refused subscriptions/listen: %s", self.name, exc.rpc_message)
                return
            except UpstreamError as exc:
                logger.debug("subscription stream of %s: %s", self.name, exc.cause)
            finally:
                if self.listening.is_set():
                    delay = 0.1
                self.listening.clear()
            self._announce_on_ack = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)


def _transport_error(server: str, exc: aiohttp.ClientError) -> UpstreamUnavailable:
    """Name what went wrong on the wire, without the URL (it may carry a secret)."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        cause = "is unreachable: its TLS certificate was rejected"
    elif isinstance(exc, aiohttp.ClientConnectorDNSError):
        cause = "is unreachable: its host name does not resolve"
    elif isinstance(exc, aiohttp.ClientSSLError):
        cause = "is unreachable: the TLS handshake failed"
    elif isinstance(exc, aiohttp.ConnectionTimeoutError):
        cause = "is unreachable: connecting timed out"
    elif isinstance(exc, aiohttp.ClientConnectorError):
        refused = exc.os_error.errno == errno.ECONNREFUSED
        cause = f"is unreachable: {'connection refused' if refused else exc.os_error.strerror or 'connect failed'}"
    elif isinstance(exc, aiohttp.ServerDisconnectedError):
        cause = "closed the connection before answering"
    elif isinstance(exc, aiohttp.ClientPayloadError):
        cause = "closed the connection mid-response"
    elif isinstance(exc, aiohttp.ClientOSError) and exc.errno == errno.ECONNRESET:
        cause = "reset the connection"
    else:
        cause = f"cannot be reached: {type(exc).__name__}"
    return UpstreamUnavailable(server, cause)
