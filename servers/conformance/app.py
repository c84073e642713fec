"""Serving the fixture on its own: the streamable-HTTP app (with resumable SSE streams) and the command line."""

from __future__ import annotations

import argparse
from collections import OrderedDict
from collections.abc import Sequence

from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId
from mcp.types import JSONRPCMessage
from starlette.applications import Starlette

from .core import server

# How long a client waits before reconnecting to an SSE stream the server closed (SEP-1699 polling). Short,
# because the suite's polling scenario waits for the reconnect in real time.
SSE_RETRY_INTERVAL_MS = 100


class ConformanceEventStore(EventStore):
    """A bounded in-memory event store, so SSE streams can be resumed with `Last-Event-ID` (SEP-1699).

    The suite's polling scenarios close a response stream mid-call and expect the client to reconnect and
    receive what it missed. Events live in one insertion-ordered map capped at `max_events`, so a long-lived
    process (the portal hosts this server indefinitely) cannot grow without bound; a client asking to resume
    from an evicted event simply gets nothing replayed.
    """

    def __init__(self, max_events: int = 10_000) -> None:
        """Create an empty store holding at most `max_events` events across all streams."""
        self._max_events = max_events
        self._events: OrderedDict[int, tuple[StreamId, JSONRPCMessage | None]] = OrderedDict()
        self._next_id = 1

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        """Record one event (or a priming event when `message` is None) and return its id."""
        event_id = self._next_id
        self._next_id += 1
        self._events[event_id] = (stream_id, message)
        while len(self._events) > self._max_events:
            self._events.popitem(last=False)
        return str(event_id)

    async def replay_events_after(self, last_event_id: EventId, send_callback: EventCallback) -> StreamId | None:
        """Send every later event of the stream `last_event_id` belongs to; return that stream, or None."""
        try:
            after = int(last_event_id)
        except ValueError:
            return None
        entry = self._events.get(after)
        if entry is None:
            return None
        stream_id = entry[0]
        # Snapshot first: the callback awaits, and new events may be stored meanwhile.
        later = [(eid, msg) for eid, (sid, msg) in self._events.items() if eid > after and sid == stream_id]
        for event_id, message in later:
            if message is not None:  # priming events carry no message and are not re-sent
                await send_callback(EventMessage(message, str(event_id)))
        return stream_id


def create_app(host: str = "127.0.0.1") -> Starlette:
    """The streamable-HTTP app serving `server` at `/mcp`, both protocol eras on the one endpoint.

    Resumable streams (an event store and a short retry interval) are switched on because the suite's SSE
    polling scenarios need them. DNS-rebinding protection (Host/Origin checks) is on whenever `host` is a
    loopback address, which the suite's `dns-rebinding-protection` scenario checks.
    """
    return server.streamable_http_app(
        event_store=ConformanceEventStore(),
        retry_interval=SSE_RETRY_INTERVAL_MS,
        host=host,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Run the fixture server over stdio, or over streamable HTTP on 127.0.0.1 with `--http`."""
    from servers import conformance  # the package: its docstring's first line describes the command

    description = (conformance.__doc__ or "").splitlines()[0]
    parser = argparse.ArgumentParser(prog="python -m servers.conformance", description=description)
    parser.add_argument("--http", action="store_true", help="serve streamable HTTP instead of stdio")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind with --http (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="port to bind with --http (default 8765)")
    parser.add_argument("--log-level", default="warning", help="uvicorn log level with --http (default warning)")
    args = parser.parse_args(argv)
    if not args.http:
        server.run("stdio")
        return
    import uvicorn

    uvicorn.run(create_app(args.host), host=args.host, port=args.port, log_level=args.log_level)
