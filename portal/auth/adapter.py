"""The async Starlette side of authlib's (synchronous, framework-neutral) authorization server.

authlib has no Starlette server integration, so this is the small one the portal
needs: the body is read on the event loop (`read_form`, `read_json`), wrapped in
authlib's request classes (`FormRequest`, `JsonBodyRequest`), the synchronous
authlib call runs in a worker thread (it reads the database), and what authlib
returns (`status, body, headers`) comes back as a `Reply` that becomes a Starlette
response.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl

from authlib.common.urls import add_params_to_uri
from authlib.oauth2.rfc6749 import InvalidRequestError, JsonPayload, JsonRequest, OAuth2Payload, OAuth2Request
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

__all__ = [
    "MAX_BODY_BYTES",
    "FormRequest",
    "JsonBodyRequest",
    "Reply",
    "read_form",
    "read_json",
]

MAX_BODY_BYTES = 64 * 1024
"""Largest body the OAuth endpoints read; OAuth requests are small."""

Pairs = Sequence[tuple[str, str]]


class _Payload(OAuth2Payload):
    def __init__(self, pairs: Pairs) -> None:
        self._data: dict[str, str] = {}
        self._datalist: defaultdict[str, list[str]] = defaultdict(list)
        for key, value in pairs:
            self._data.setdefault(key, value)
            self._datalist[key].append(value)

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> defaultdict[str, list[str]]:
        return self._datalist


class FormRequest(OAuth2Request):
    """An OAuth request whose parameters are `pairs` (the query of a GET, the form of a POST)."""

    def __init__(self, method: str, uri: str, headers: Mapping[str, str], pairs: Pairs) -> None:
        super().__init__(method=method, uri=uri, headers=headers)
        self.payload = _Payload(pairs)
        self.resource: str | None = None
        """RFC 8707 resource, once validated."""
        self.granted_scope: str = ""
        """The scope the person consented to, as intersected with what they were granted."""

    @property
    def args(self) -> dict[str, str]:
        return dict(self.payload.data) if self.method == "GET" else {}

    @property
    def form(self) -> dict[str, str]:
        return dict(self.payload.data) if self.method == "POST" else {}


class _Json(JsonPayload):
    def __init__(self, data: Any) -> None:
        self._data = data

    @property
    def data(self) -> Any:
        return self._data


class JsonBodyRequest(JsonRequest):
    def __init__(self, method: str, uri: str, headers: Mapping[str, str], data: Any) -> None:
        super().__init__(method, uri, headers)
        self.payload = _Json(data)


class Reply:
    """authlib's `(status, body, headers)`, with the `location` that RFC 9207's extension edits."""

    def __init__(self, status: int, body: Any, headers: Sequence[tuple[str, str]]) -> None:
        self.status = status
        self.body = body
        self.headers = [(k, v) for k, v in headers if k.lower() != "location"]
        self.location: str | None = next((v for k, v in headers if k.lower() == "location"), None)

    def add_params(self, params: dict[str, str]) -> None:
        if self.location:
            self.location = add_params_to_uri(self.location, params)

    def response(self) -> Response:
        headers = dict(self.headers)
        if self.location is not None:
            headers.pop("Content-Type", None)
            return RedirectResponse(self.location, status_code=302, headers=headers)
        if isinstance(self.body, dict):
            return JSONResponse(self.body, status_code=self.status, headers=headers)
        return Response(self.body or b"", status_code=self.status, headers=headers)


async def _body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise InvalidRequestError("the request body is too large")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > MAX_BODY_BYTES:
            raise InvalidRequestError("the request body is too large")
    return bytes(body)


async def read_form(request: Request, *, unique: bool = True) -> list[tuple[str, str]]:
    """The `application/x-www-form-urlencoded` body (RFC 6749 §3.2), parameters at most once each (§3.1)."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/x-www-form-urlencoded":
        raise InvalidRequestError("the body must be application/x-www-form-urlencoded")
    try:
        pairs = parse_qsl((await _body(request)).decode(), keep_blank_values=True, max_num_fields=64)
    except (UnicodeDecodeError, ValueError):
        raise InvalidRequestError("the body is not a valid form") from None
    if unique:
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise InvalidRequestError(f"parameter {key} is repeated")
            seen.add(key)
    return pairs


async def read_json(request: Request) -> Any:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json":
        raise InvalidRequestError("the body must be application/json")
    try:
        return json.loads(await _body(request))
    except ValueError:
        raise InvalidRequestError("the body is not valid JSON") from None
