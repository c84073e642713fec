"""The admin JSON API under `/api/`: what the operator console and scripts read and change.

Every route declares the scope it needs (see `portal.api.access`); `GET /api/openapi.json`
describes them (OpenAPI 3.1) and needs no token. The API only exists where its data does:
without an audit log (`[audit] enabled = false`) the audit routes answer 404.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from portal.api.access import API_PATH, ApiAccess, error_response, json_response
from portal.api.approvals import ApprovalsApi
from portal.api.audit import READ, AuditApi
from portal.api.openapi import openapi_document
from portal.api.policies import PoliciesApi
from portal.errors import NotFound, PortalError

if TYPE_CHECKING:
    from portal.audit.log import AuditLog
    from portal.policy.engine import PolicyEngine
    from portal.policy.obligations import ApprovalStore

__all__ = ["API_PATH", "ApiAccess", "api_routes"]

Handler = Callable[[Request], Awaitable[Response]]


class ApiUnavailable(NotFound):
    code = "api_unavailable"


def api_routes(
    access: ApiAccess,
    audit: AuditLog | None,
    approvals: ApprovalStore | None = None,
    policies: PolicyEngine | None = None,
) -> list[Route]:
    """The routes of the admin API, each guarded by the scope it needs (and the approvals status page)."""

    def guarded(scope: str, handler: Handler | None) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                request.state.principal = await access.principal(request, scope)
                if handler is None:
                    raise ApiUnavailable("the audit log is off on this portal ([audit] enabled = false)")
                response = await handler(request)
            except PortalError as exc:
                return error_response(exc, access.public_url)
            response.headers.setdefault("Cache-Control", "no-store")
            return response

        return endpoint

    api = AuditApi(audit) if audit is not None else None

    def method(name: str) -> Handler | None:
        return getattr(api, name) if api is not None else None

    async def openapi(request: Request) -> Response:
        return json_response(openapi_document(access.public_url))

    held = ApprovalsApi(approvals, audit) if approvals is not None else None

    async def approve(request: Request) -> Response:
        assert held is not None
        return await held.decide(request, request.state.principal, True)

    async def deny(request: Request) -> Response:
        assert held is not None
        return await held.decide(request, request.state.principal, False)

    approval_routes = []
    if held is not None:
        approval_routes = [
            Route(f"{API_PATH}/approvals", guarded(READ, held.list), methods=["GET"]),
            Route(f"{API_PATH}/approvals/{{id}}/approve", guarded("admin", approve), methods=["POST"]),
            Route(f"{API_PATH}/approvals/{{id}}/deny", guarded("admin", deny), methods=["POST"]),
            Route("/approvals/{id}", held.status_page, methods=["GET"]),
        ]

    policy_routes = []
    if policies is not None:
        rules = PoliciesApi(policies, audit)
        policy_routes = [
            Route(f"{API_PATH}/policies", guarded(READ, rules.show), methods=["GET"]),
            Route(f"{API_PATH}/policies/reload", guarded("policies:write", rules.reload), methods=["POST"]),
            Route(f"{API_PATH}/policies/explain", guarded(READ, rules.explain), methods=["POST"]),
        ]

    return [
        *approval_routes,
        *policy_routes,
        Route(f"{API_PATH}/openapi.json", openapi, methods=["GET"]),
        Route(f"{API_PATH}/audit/records", guarded(READ, method("records")), methods=["GET"]),
        Route(f"{API_PATH}/audit/records/{{id}}", guarded(READ, method("record")), methods=["GET"]),
        Route(f"{API_PATH}/audit/export", guarded(READ, method("export")), methods=["GET"]),
        Route(f"{API_PATH}/audit/stats", guarded(READ, method("stats")), methods=["GET"]),
        Route(f"{API_PATH}/audit/verify", guarded(READ, method("verify")), methods=["GET"]),
    ]
