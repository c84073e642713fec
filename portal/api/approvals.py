"""Held calls: `/api/approvals` for operators, and the status page a held client is sent to.

- `GET /api/approvals` (`audit:read`): pending approvals (`?all=1`: every one), oldest first;
- `POST /api/approvals/{id}/approve` and `/deny` (`admin`): decide; an admin event in the audit log;
- `GET /approvals/{id}`: a page saying where one request stands (pending, approved, denied, used,
  expired) and for which tool, without its arguments or who made it. A `2026-07-28` client whose call
  is held is given this URL (an URL-mode elicitation) so that the person can follow it, then retry.
"""

from __future__ import annotations

import time
from html import escape
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from portal.api.access import json_response
from portal.auth.pages import page_response
from portal.errors import NotFound, PortalError

if TYPE_CHECKING:
    from portal.audit.log import AuditLog
    from portal.auth.principal import Principal
    from portal.policy.obligations import Approval, ApprovalStore

__all__ = ["ApprovalsApi"]


class ApprovalNotFound(NotFound):
    code = "approval_not_found"


class ApprovalClosed(PortalError):
    code = "approval_closed"
    http_status = 409


def _view(row: Approval, now: int) -> dict[str, Any]:
    status = "expired" if row.status == "pending" and row.expires_at <= now else row.status
    return {
        "id": row.id,
        "subject": row.subject,
        "tool": row.action,
        "arguments": row.arguments,
        "status": status,
        "created_at": row.created_at,
        "expires_at": row.expires_at,
        "decided_by": row.decided_by,
    }


class ApprovalsApi:
    def __init__(self, store: ApprovalStore, audit: AuditLog | None) -> None:
        self.store = store
        self.audit = audit

    async def list(self, request: Request) -> Response:
        include_done = request.query_params.get("all") in ("1", "true")
        rows = await run_in_threadpool(self.store.list, include_done=include_done)
        now = int(time.time())
        return json_response({"approvals": [_view(row, now) for row in rows]})

    async def decide(self, request: Request, principal: Principal, approve: bool) -> Response:
        approval_id = request.path_params["id"]
        try:
            row = await run_in_threadpool(self.store.decide, approval_id, approve, f"api:{principal.subject}")
        except PortalError as exc:
            existing = await run_in_threadpool(self.store.get, approval_id)
            if existing is None:
                raise ApprovalNotFound("no approval request has this id") from None
            raise ApprovalClosed(exc.message) from None
        if self.audit is not None:
            details = {"subject": row.subject, "tool": row.action, "status": row.status}
            await self.audit.admin(principal.subject, f"approvals.{'approve' if approve else 'deny'}", row.id, details)
        return json_response(_view(row, int(time.time())))

    async def status_page(self, request: Request) -> Response:
        row = await run_in_threadpool(self.store.get, request.path_params["id"])
        if row is None:
            return page_response("Unknown request", "<h1>No such approval request</h1>", status=404)
        view = _view(row, int(time.time()))
        words = {
            "pending": "is waiting for an operator. Once it is approved, retry the call in your client.",
            "approved": "was approved. Retry the call in your client: it goes through once.",
            "used": "was approved and the call has been made.",
            "denied": "was denied by an operator.",
            "expired": "expired before an operator decided.",
        }
        body = (
            f"<h1>Approval request <code>{escape(row.id)}</code></h1>"
            f"<p>The call of <code>{escape(row.action)}</code> {escape(words.get(view['status'], view['status']))}</p>"
            '<p class="muted">This page does not refresh by itself; reload it to see a change.</p>'
        )
        return page_response("Approval request", body)
