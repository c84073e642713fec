"""Client-side JSON-RPC session machinery shared by the HTTP and stdio connectors.

`RpcConnector` holds what does not depend on the transport: request ids, the
table of requests in flight, progress-token remapping, the era negotiation (from
`EraNegotiation`), the 2026 `_meta` envelope, the routing of incoming
notifications, and the answer to server-to-client requests. A transport subclass
supplies the wire: how one request travels and is answered, how a notification
is sent, how an abandoned request is cancelled.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from mcp_types import CLIENT_CAPABILITIES_META_KEY, CLIENT_INFO_META_KEY, LOG_LEVEL_META_KEY, PROTOCOL_VERSION_META_KEY

from portal.errors import (
    METHOD_NOT_FOUND,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from portal.upstream._era import HANDSHAKE, MODERN, EraNegotiation, Protocol
from portal.upstream.base import NotificationHandler, UpstreamInfo

__all__ = [
    "HANDSHAKE",
    "MODERN",
    "SESSION_EVENTS",
    "Call",
    "Protocol",
    "RpcConnector",
    "result_of",
]

logger = logging.getLogger("portal.upstream")

SESSION_EVENTS: Final = frozenset(
    {
        "notifications/tools/list_changed",
        "notifications/prompts/list_changed",
        "notifications/resources/list_changed",
        "notifications/resources/updated",
    }
)
"""Notifications about the server as a whole: they go to the connector's owner
whichever stream carries them, never to the request that happened to be open."""

_ENVELOPE_KEYS: Final = (
    PROTOCOL_VERSION_META_KEY,
    CLIENT_CAPABILITIES_META_KEY,
    CLIENT_INFO_META_KEY,
    LOG_LEVEL_META_KEY,
)
_NOT_CANCELLABLE: Final = frozenset({"initialize", "server/discover"})


@dataclass(eq=False, slots=True)
class Call:
    """One request on its way to the upstream and back."""

    id: int | str
    method: str
    message: dict[str, Any]
    """The JSON-RPC request as it goes on the wire."""
    on_notification: NotificationHandler | None = None
    caller_token: str | int | None = None
    """The caller's progress token, restored on every progress notification."""
    future: asyncio.Future[dict[str, Any]] | None = None
    """Resolved with the response message by transports that read answers in a separate task."""


def result_of(server: str, message: Mapping[str, Any]) -> dict[str, Any]:
    """The `result` of a response message, or the error it carries raised as an `UpstreamError`."""
    if "result" in message:
        result = message["result"]
        if not isinstance(result, dict):
            raise UpstreamProtocolError(server, "answered with a result that is not a JSON object")
        return result
    error = message.get("error")
    if not isinstance(error, dict) or not isinstance(error.get("code"), int) or isinstance(error.get("code"), bool):
        raise UpstreamProtocolError(server, "answered with a malformed JSON-RPC error")
    raw_message = error.get("message")
    raise UpstreamRejected(
        server, error["code"], str(raw_message) if raw_message is not None else "", error.get("data")
    )


class RpcConnector(EraNegotiation):
    """A `Connector` minus the wire. Subclasses implement the abstract methods.

    Incoming notifications are routed by `deliver`: `notifications/progress` to the
    handler of the request whose (remapped) token it carries, with the caller's token
    restored; session events (`SESSION_EVENTS`) and notifications that arrive outside
    any request to `on_notification`, through a queue drained by one task so that a
    handler may itself send requests without stalling the stream it came from; other
    notifications on a request's own stream to that request's handler.
    """

    def __init__(self, name: str, *, protocol: Protocol = "auto", connect_timeout: float = 10.0) -> None:
        if protocol not in ("auto", HANDSHAKE, MODERN):
            raise ValueError(f"protocol must be 'auto', {HANDSHAKE!r} or {MODERN!r}, not {protocol!r}")
        self.name = name
        self.protocol: Protocol = protocol
        self.connect_timeout = connect_timeout
        self.info: UpstreamInfo | None = None
        self.on_notification: NotificationHandler | None = None
        self.listening = asyncio.Event()
        """Set while the server-notification stream (GET stream, `subscriptions/listen`, stdout) is open."""
        self._ids = itertools.count(1)
        self._pending: dict[int | str, Call] = {}
        self._progress: dict[int | str, Call] = {}
        self._envelope: dict[str, Any] = {}
        self._closed_event = asyncio.Event()
        self._closed_cause = "is not started"
        self._events: asyncio.Queue[tuple[str, Mapping[str, Any]]] = asyncio.Queue()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._announce_on_ack = False

    # -- public surface shared by every transport ---------------------------------------------

    @property
    def closed(self) -> bool:
        """True once the session has ended for good (see the subclass for when)."""
        return self._closed_event.is_set()

    async def wait_closed(self) -> None:
        """Return once `closed` is set."""
        await self._closed_event.wait()

    async def request(
        self,
        method: str,
        params: Mapping[str, Any] | None,
        *,
        timeout: float,
        on_notification: NotificationHandler | None = None,
    ) -> dict[str, Any]:
        """Send one request and return its `result`; see `Connector` for the error contract."""
        if self.info is None or self.closed:
            raise UpstreamUnavailable(self.name, self._closed_cause)
        call = self._new_call(method, self._wire_params(params, self.info.modern), on_notification)
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                return await self._roundtrip(call)
        except TimeoutError:
            if not deadline.expired():
                raise
            # MCP 2025-11-25 basic/lifecycle#timeouts: on a timeout the sender SHOULD cancel the request.
            self._abandon(call, "timed out")
            raise UpstreamTimeout(self.name, f"did not answer within {timeout:g}s") from None
        except asyncio.CancelledError:
            self._abandon(call, "cancelled by the client")
            raise
        finally:
            self._forget(call)

    # -- what a transport implements ----------------------------------------------------------

    @abstractmethod
    async def _roundtrip(self, call: Call) -> dict[str, Any]:
        """Send `call` and return its `result` (raising `UpstreamError`s)."""

    @abstractmethod
    def _cancel_upstream(self, call: Call, reason: str) -> None:
        """Make the upstream stop working on `call`, without waiting (the caller is going away)."""

    @abstractmethod
    async def _reply(self, message: dict[str, Any]) -> None:
        """Send one JSON-RPC message that expects no answer (a response or a notification)."""

    async def _notify(self, method: str, params: Mapping[str, Any] | None) -> None:
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        await self._reply(message)

    # -- calls ------------------------------------------------------------------------------

    def _new_call(
        self, method: str, params: dict[str, Any] | None, on_notification: NotificationHandler | None = None
    ) -> Call:
        call_id = next(self._ids)
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": call_id, "method": method}
        call = Call(id=call_id, method=method, message=message, on_notification=on_notification)
        if params is not None:
            meta = params.get("_meta")
            token = meta.get("progressToken") if isinstance(meta, dict) else None
            if token is not None:
                # MCP basic/utilities/progress: tokens MUST be unique across active requests; the
                # callers of one upstream session share it, so theirs are replaced by our request id.
                assert isinstance(meta, dict)
                if on_notification is None:
                    meta.pop("progressToken")
                else:
                    call.caller_token = token
                    meta["progressToken"] = call_id
                    self._progress[call_id] = call
                if not meta:
                    params.pop("_meta")
            message["params"] = params
        self._pending[call_id] = call
        return call

    def _forget(self, call: Call) -> None:
        self._pending.pop(call.id, None)
        self._progress.pop(call.id, None)
        future = call.future
        if future is not None and future.done() and not future.cancelled():
            future.exception()  # failed by `_mark_closed` after its caller stopped waiting: not worth a warning

    def _abandon(self, call: Call, reason: str) -> None:
        if call.method not in _NOT_CANCELLABLE and not self.closed:
            # MCP basic/utilities/cancellation: initialize MUST NOT be cancelled.
            try:
                self._cancel_upstream(call, reason)
            except Exception:  # a failed courtesy must not mask the caller's own outcome
                logger.debug("could not cancel %s request %s on %s", call.method, call.id, self.name, exc_info=True)

    def _wire_params(self, params: Mapping[str, Any] | None, modern: bool) -> dict[str, Any] | None:
        """A copy of the caller's params, with the 2026 envelope added or any envelope keys removed."""
        out = dict(params) if params else {}
        meta = out.get("_meta")
        meta = dict(meta) if isinstance(meta, Mapping) else {}
        if modern:
            # MCP 2026-07-28 basic#per-request-protocol-fields: every request carries the envelope.
            # The gateway may pass a 2026-era client's own capabilities, which then stand.
            capabilities = meta.get(CLIENT_CAPABILITIES_META_KEY)
            meta.update(self._envelope)
            if capabilities is not None:
                meta[CLIENT_CAPABILITIES_META_KEY] = capabilities
        else:
            # A handshake-era server refuses requests that carry the 2026 envelope (the SDK answers
            # INVALID_REQUEST), and a client of the portal may have sent one.
            for key in _ENVELOPE_KEYS:
                meta.pop(key, None)
        if meta:
            out["_meta"] = meta
        else:
            out.pop("_meta", None)
        return out if out or modern else None

    # -- incoming messages ----------------------------------------------------------------

    async def deliver(self, message: Any, call: Call | None) -> dict[str, Any] | None:
        """Handle one incoming message, read from `call`'s own response stream or (None) elsewhere.

        Returns the message when it is the response to `call`; a response to another
        request in flight resolves that request's future.
        """
        if not isinstance(message, dict):
            raise UpstreamProtocolError(self.name, "sent something that is not a JSON-RPC message")
        method = message.get("method")
        if method is None:
            if "result" not in message and "error" not in message:
                raise UpstreamProtocolError(self.name, "sent a JSON-RPC message that is neither request nor response")
            answer_id = message.get("id")
            if call is not None and (answer_id == call.id or answer_id is None):
                return message
            owner = self._pending.get(answer_id) if isinstance(answer_id, int | str) else None
            if owner is not None and owner.future is not None and not owner.future.done():
                owner.future.set_result(message)
            else:
                logger.debug("%s answered request %r, which is no longer awaited", self.name, answer_id)
            return None
        if not isinstance(method, str):
            raise UpstreamProtocolError(self.name, "sent a JSON-RPC message whose method is not a string")
        if "id" in message:
            await self._answer_server_request(message)
        else:
            params = message.get("params")
            await self._route_notification(method, params if isinstance(params, dict) else {}, call)
        return None

    async def _route_notification(self, method: str, params: dict[str, Any], call: Call | None) -> None:
        if method == "notifications/progress":
            token = params.get("progressToken")
            owner = self._progress.get(token) if isinstance(token, int | str) else None
            if owner is not None and owner.on_notification is not None:
                await self._call_handler(owner.on_notification, method, {**params, "progressToken": owner.caller_token})
            return
        if method == "notifications/subscriptions/acknowledged":
            # 2026-07-28 basic/utilities/subscriptions: the ack opens a listen stream; it is the
            # connector's bookkeeping, not news for the owner.
            self.listening.set()
            if self._announce_on_ack:
                # A re-opened stream: what changed while it was down was lost (there is no replay).
                self._announce_on_ack = False
                self._announce_possible_changes()
            return
        if method == "notifications/cancelled":
            return  # a server cancels only its own requests, and the portal never awaits those
        if call is None or method in SESSION_EVENTS:
            self._events.put_nowait((method, params))
        elif call.on_notification is not None:
            await self._call_handler(call.on_notification, method, params)

    async def _call_handler(self, handler: NotificationHandler, method: str, params: Mapping[str, Any]) -> None:
        try:
            await handler(method, params)
        except Exception:  # the owner's bug must not break the stream the notification came on
            logger.exception("notification handler for %s from %s raised", method, self.name)

    async def _pump_events(self) -> None:
        """Hand queued session notifications to `on_notification`, one at a time, in order."""
        while True:
            method, params = await self._events.get()
            if self.on_notification is not None:
                await self._call_handler(self.on_notification, method, params)

    async def _answer_server_request(self, message: dict[str, Any]) -> None:
        # MCP basic/utilities/ping: the receiver MUST answer promptly. Everything else (sampling,
        # elicitation, roots) the portal does not relay, so it answers as if it had no such method.
        if message["method"] == "ping":
            reply: dict[str, Any] = {"jsonrpc": "2.0", "id": message["id"], "result": {}}
        else:
            error = {"code": METHOD_NOT_FOUND, "message": f"the portal does not serve {message['method']}"}
            reply = {"jsonrpc": "2.0", "id": message["id"], "error": error}
        try:
            await self._reply(reply)
        except UpstreamError as exc:
            logger.debug("could not answer %s's %s request: %s", self.name, message["method"], exc.cause)

    def _listen_filter(self) -> dict[str, bool]:
        """The `subscriptions/listen` filter for the change notifications the server advertises."""
        caps = self.info.capabilities if self.info is not None else {}
        wanted: dict[str, bool] = {}
        for kind, key in (
            ("tools", "toolsListChanged"),
            ("prompts", "promptsListChanged"),
            ("resources", "resourcesListChanged"),
        ):
            cap = caps.get(kind)
            if isinstance(cap, dict) and cap.get("listChanged") is True:
                wanted[key] = True
        return wanted

    def _announce_possible_changes(self) -> None:
        """Tell the owner to refetch: after a lost stream or a new session, changes may have been missed."""
        caps = self.info.capabilities if self.info is not None else {}
        for kind in ("tools", "prompts", "resources"):
            if kind in caps:
                self._events.put_nowait((f"notifications/{kind}/list_changed", {}))

    # -- lifecycle helpers ---------------------------------------------------------------

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _cancel_tasks(self) -> None:
        current = asyncio.current_task()
        tasks = [task for task in self._tasks if task is not current]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _reset(self) -> None:
        """Start afresh: a new session after `close()` or a failed `start()`."""
        self.info = None
        self._envelope = {}
        self._pending.clear()
        self._progress.clear()
        self._events = asyncio.Queue()
        self._closed_event.clear()
        self._closed_cause = "is not started"
        self._announce_on_ack = False

    def _mark_closed(self, cause: str) -> None:
        """End the session for good: fail every request in flight with `cause`."""
        if self.closed:
            return
        self._closed_cause = cause
        self._closed_event.set()
        self.listening.clear()
        for call in list(self._pending.values()):
            if call.future is not None and not call.future.done():
                call.future.set_exception(UpstreamUnavailable(self.name, cause))
