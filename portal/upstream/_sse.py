"""An incremental parser for `text/event-stream` bodies (WHATWG HTML §9.2 "Server-sent events").

Streamable HTTP carries JSON-RPC messages as SSE events; this parser turns the
byte chunks aiohttp hands over into events without copying more than it has to.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MAX_EVENT_BYTES", "SseEvent", "SseParser", "SseTooLarge"]

MAX_EVENT_BYTES = 64 * 1024 * 1024
"""Upper bound on one event: a runaway stream must not exhaust the portal's memory."""


@dataclass(slots=True)
class SseEvent:
    event: str
    data: bytes
    id: str | None = None
    retry: int | None = None


class SseTooLarge(ValueError):
    """An event grew past the parser's `max_bytes`."""


class SseParser:
    """Feed it chunks, get back the events they complete."""

    def __init__(self, max_bytes: int = MAX_EVENT_BYTES) -> None:
        self._max = max_bytes
        self._buf = bytearray()
        self._data: list[bytes] = []
        self._size = 0
        self._event = ""
        self._id: str | None = None
        self._id_seen = False
        self._retry: int | None = None

    def feed(self, chunk: bytes) -> list[SseEvent]:
        buf = self._buf
        buf += chunk
        events: list[SseEvent] = []
        start = 0
        while True:
            end = buf.find(b"\n", start)
            if end < 0:
                break
            line = bytes(buf[start : end - 1 if end > start and buf[end - 1] == 13 else end])
            start = end + 1
            event = self._line(line)
            if event is not None:
                events.append(event)
        del buf[:start]
        if len(buf) + self._size > self._max:
            raise SseTooLarge(f"an event is larger than {self._max} bytes")
        return events

    def _line(self, line: bytes) -> SseEvent | None:
        if not line:
            return self._dispatch()
        if line[0] == 58:  # ":" starts a comment (keep-alive pings)
            return None
        name, sep, value = line.partition(b":")
        if sep and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value)
            self._size += len(value) + 1
            if self._size > self._max:
                raise SseTooLarge(f"an event is larger than {self._max} bytes")
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name == b"id":
            if b"\0" not in value:
                self._id = value.decode("utf-8", "replace")
                self._id_seen = True
        elif name == b"retry" and value.isdigit():
            self._retry = int(value)
        return None

    def _dispatch(self) -> SseEvent | None:
        # The last event id outlives its event (it is what a reconnection resumes from); an event
        # with no data is still reported when it moves that id or sets `retry` (MCP priming events).
        event_id, retry, fresh = self._id, self._retry, self._id_seen
        self._retry = None
        self._id_seen = False
        if not self._data and not fresh and retry is None:
            self._event = ""
            return None
        data = b"\n".join(self._data)
        event = SseEvent(event=self._event or "message", data=data, id=event_id, retry=retry)
        self._data = []
        self._size = 0
        self._event = ""
        return event
