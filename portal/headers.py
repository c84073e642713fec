"""Security headers on every response, added in one place (a wrapper of the ASGI `send`).

- Every response: `X-Content-Type-Options: nosniff` (a JSON body is never sniffed into HTML).
- HTML (the login, consent and error pages, and any page added later): a strict
  `Content-Security-Policy` (nothing by default; styles, images and form posts only from the
  portal; no framing), `X-Frame-Options: DENY`, `Referrer-Policy: no-referrer` (their URLs
  carry OAuth state) and `Cache-Control: no-store` (they carry forms and CSRF tokens). A page
  that sets its own policy (`portal.auth.pages` pins its inline style by hash, and lets the
  consent form post to the client's redirect origin) keeps it; the rest is filled in.
- Redirects: `Cache-Control: no-store` and `Referrer-Policy: no-referrer` when they set none,
  since the authorization endpoint's redirects carry codes and state in their `Location`.

Headers a response sets itself are never overwritten.
"""

from __future__ import annotations

from starlette.types import Message, Send

__all__ = ["PAGE_CSP", "mcp_send", "secure_send"]

PAGE_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
"""The policy of an HTML page that sets none of its own."""

_NOSNIFF = (b"x-content-type-options", b"nosniff")
_PAGE = (
    (b"content-security-policy", PAGE_CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
    _NOSNIFF,
)
_REDIRECT = ((b"cache-control", b"no-store"), (b"referrer-policy", b"no-referrer"), _NOSNIFF)


def _add_missing(message: Message, wanted: tuple[tuple[bytes, bytes], ...]) -> None:
    headers = list(message.get("headers", ()))
    present = {key.lower() for key, _ in headers}
    headers.extend(pair for pair in wanted if pair[0] not in present)
    message["headers"] = headers


def secure_send(send: Send) -> Send:
    """`send`, with the headers of this module added to the response it starts."""

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            content_type = b""
            for key, value in message.get("headers", ()):
                if key.lower() == b"content-type":
                    content_type = value.lower()
                    break
            status = message.get("status", 200)
            if content_type.startswith(b"text/html"):
                _add_missing(message, _PAGE)
            elif 300 <= status < 400:
                _add_missing(message, _REDIRECT)
            else:
                _add_missing(message, (_NOSNIFF,))
        await send(message)

    return wrapped


def mcp_send(send: Send) -> Send:
    """`send` for the MCP endpoints (the hot path): `nosniff` on the response start, nothing else."""

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            # A copy: the list may be a constant of the sender's, shared by every response.
            message = {**message, "headers": [*message.get("headers", ()), _NOSNIFF]}
        await send(message)

    return wrapped
