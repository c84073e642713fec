"""`/api/audit/...`: the queries of `portal audit`, for the console and for scripts.

- `GET /api/audit/records`: search, newest first; the filters of `portal audit search` as query
  parameters (`user`, `client`, `server`, `tool`, `decision`, `outcome`, `kind`, `since`, `until`,
  `text`), `limit` (1 to 500) and `cursor` (the `next_cursor` of the previous page);
- `GET /api/audit/records/{id}`: one call with its records and, for a Code Mode run, its inner calls;
- `GET /api/audit/export?format=jsonl|csv`: every matching record, oldest first, streamed;
- `GET /api/audit/stats`: calls, denials, errors and latency by server and tool;
- `GET /api/audit/verify`: the chain check of `portal audit verify`.

All of them need `audit:read`. Database work runs in worker threads, off the event loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from portal.api.access import json_response
from portal.audit.query import Filters, export, search, show, stats
from portal.errors import BadRequest, NotFound

if TYPE_CHECKING:
    from portal.audit.log import AuditLog

__all__ = ["AuditApi"]

READ = "audit:read"
MAX_LIMIT = 500


class RecordNotFound(NotFound):
    code = "record_not_found"


class AuditApi:
    """The handlers; each returns a response or raises a `PortalError`."""

    def __init__(self, log: AuditLog) -> None:
        self.log = log

    async def records(self, request: Request) -> Response:
        filters = Filters.from_params(request.query_params)
        limit = _limit(request.query_params.get("limit"))
        cursor = request.query_params.get("cursor") or None
        page = await run_in_threadpool(search, self.log.engine, filters, cursor=cursor, limit=limit)
        return json_response({"records": page.records, "next_cursor": page.next_cursor})

    async def record(self, request: Request) -> Response:
        ident = request.path_params["id"]
        tree = await run_in_threadpool(show, self.log.engine, ident)
        if tree is None:
            raise RecordNotFound("no audit record has this id")
        return json_response(tree)

    async def export(self, request: Request) -> Response:
        fmt = request.query_params.get("format", "jsonl")
        if fmt not in ("jsonl", "csv"):
            raise BadRequest("format must be jsonl or csv")
        filters = Filters.from_params(request.query_params)
        media = "text/csv" if fmt == "csv" else "application/x-ndjson"
        lines = iterate_in_threadpool(export(self.log.engine, fmt, filters))
        filename = f"audit.{fmt}"
        return StreamingResponse(
            lines, media_type=media, headers={"Content-Disposition": f'attachment; filename="{filename}"'}
        )

    async def stats(self, request: Request) -> Response:
        filters = Filters.from_params(request.query_params)
        rows = await run_in_threadpool(stats, self.log.engine, filters)
        return json_response({"stats": rows})

    async def verify(self, request: Request) -> Response:
        report = await run_in_threadpool(self.log.verify)
        return json_response(report.as_dict())


def _limit(raw: str | None) -> int:
    if raw is None:
        return 50
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise BadRequest(f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return int(raw)
