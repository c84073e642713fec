"""`/api/policies`: the set in force, a reload, and "explain" for a chosen user, tool and arguments.

- `GET /api/policies` (`audit:read`): version, each policy (id, file, line, annotations), the last
  refused reload's problems and the warnings of the set in force;
- `POST /api/policies/reload` (`policies:write`): load the folder now; 422 with the problems (file,
  line, reason) when the set is refused, which leaves the running set in force; an admin event either way;
- `POST /api/policies/explain` (`audit:read`), body `{"user", "groups", "tool", "args", "via_codemode"}`:
  the decision the set in force would give, its deciding policy ids and obligations.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from portal.api.access import json_response
from portal.errors import BadRequest, NotFound, PortalError
from portal.policy.engine import Subject
from portal.policy.loader import PolicyError

if TYPE_CHECKING:
    from portal.audit.log import AuditLog
    from portal.policy.engine import PolicyEngine

__all__ = ["PoliciesApi"]


class PolicySetRefused(PortalError):
    code = "policy_set_refused"
    http_status = 422


class PoliciesApi:
    def __init__(self, engine: PolicyEngine, audit: AuditLog | None) -> None:
        self.engine = engine
        self.audit = audit

    async def show(self, request: Request) -> Response:
        snap = self.engine.snapshot
        error = self.engine.last_error
        return json_response(
            {
                "version": snap.version,
                "policies": [
                    {"id": s.policy_id, "file": s.file, "line": s.line, "annotations": s.annotations}
                    for s in snap.loaded.sources
                ],
                "warnings": list(snap.warnings),
                "last_refused": list(error.problems) if error is not None else None,
            }
        )

    async def reload(self, request: Request) -> Response:
        actor = request.state.principal.subject
        before = self.engine.version
        try:
            version = await run_in_threadpool(self.engine.reload)
        except PolicyError as exc:
            await self._record(actor, before, {"refused": exc.problems, "in_force": before})
            message = "the policy set was refused; the running set stays: " + "; ".join(exc.problems)
            raise PolicySetRefused(message) from None
        await self._record(actor, version, {"previous": before})
        return json_response({"version": version, "previous": before})

    async def explain(self, request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            raise BadRequest("the body must be JSON") from None
        if not isinstance(body, dict) or not isinstance(body.get("user"), str) or not isinstance(body.get("tool"), str):
            raise BadRequest('give at least {"user": "...", "tool": "{server}_{tool}"}')
        groups = body.get("groups") or []
        arguments = body.get("args") or {}
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise BadRequest("groups must be a list of strings")
        if not isinstance(arguments, dict):
            raise BadRequest("args must be an object")
        info = self.engine.snapshot.built.actions.get(body["tool"])
        if info is None:
            raise NotFound(f"no tool {body['tool']} in the catalog")
        who = Subject(body["user"], tuple(groups))
        decision = await run_in_threadpool(
            self.engine.decide, who, body["tool"], info.server, arguments, via_codemode=bool(body.get("via_codemode"))
        )
        obligations: dict[str, Any] = {
            key: value for notes in decision.annotations for key, value in notes.items() if key != "id"
        }
        return json_response(
            {
                "decision": decision.decision,
                "policy_ids": list(decision.policy_ids),
                "version": decision.version,
                "obligations": obligations,
                "errors": list(decision.errors),
            }
        )

    async def _record(self, actor: str, version: str, details: dict[str, Any]) -> None:
        if self.audit is not None:
            await self.audit.admin(actor, "policy.reload", version, details)
