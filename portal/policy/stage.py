"""Pipeline stage: the policies decide every call and filter every tool list.

Runs right after `CapabilityGuard` (the token's capabilities), so what passes is their
intersection. A denied tool call answers a tool error "not permitted" (never "unknown
tool", never policy text); other denied requests raise `PolicyDenied`. The decision,
the deciding policy ids and the set's version go into `request.state` for the audit
stage; `@redact` paths into `request.state["redact"]`.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

from portal.catalog import LIST_ITEMS
from portal.errors import PortalError
from portal.pipeline import Handler, McpRequest
from portal.policy.engine import Decision, PolicyEngine, Subject
from portal.policy.obligations import (
    ApprovalPending,
    ApprovalStore,
    MemoryRateLimiter,
    RateLimited,
    RedisRateLimiter,
    parse_rate,
    redact_paths,
)
from portal.policy.schema import CODEMODE_SERVER

__all__ = ["NOT_PERMITTED", "PolicyDenied", "PolicyStage"]

NOT_PERMITTED = "not permitted"

_LIST_ACTIONS = {
    "prompts/list": "get_prompt",
    "resources/list": "read_resource",
    "resources/templates/list": "read_resource",
}
"""The action that uses an item of a list other than tools."""


def _drop_own_state(request: McpRequest) -> None:
    """The retry of a held call carries the portal's own `requestState` and input responses: they are
    the portal's business, and an upstream would refuse state it did not issue."""
    state = request.params.get("requestState")
    if not (isinstance(state, str) and state.startswith(_STATE_PREFIX)):
        return
    for params in (request.params, request.target.params if request.target is not None else None):
        if params is not None:
            params.pop("requestState", None)
            params.pop("inputResponses", None)


_STATE_PREFIX = "approval:"


def _takes_url_elicitation(request: McpRequest) -> bool:
    """Whether the client declared URL-mode elicitation (the capability `elicitation.url`)."""
    elicitation = (request.client_capabilities or {}).get("elicitation")
    return isinstance(elicitation, dict) and isinstance(elicitation.get("url"), dict)


class PolicyDenied(PortalError):
    code = "not_permitted"
    http_status = 403
    jsonrpc_code = -32052


class PolicyStage:
    def __init__(
        self,
        engine: PolicyEngine,
        *,
        approvals: ApprovalStore | None = None,
        rate_limiter: MemoryRateLimiter | RedisRateLimiter | None = None,
        public_url: str | None = None,
        availability: Callable[[str], None] | None = None,
    ) -> None:
        self.engine = engine
        self.redact: Callable[[Any], Any] | None = None
        """Redacts arguments before they are stored for an operator (the audit log's redactor)."""
        self.availability = availability
        """Raises the error a call to a server would get now (down, disabled, unknown)."""
        self.approvals = approvals
        self.rates = rate_limiter or MemoryRateLimiter()
        self.public_url = public_url

    @classmethod
    def from_settings(cls, settings: Any, engine: PolicyEngine, db_engine: Any = None) -> PolicyStage:
        limiter = RedisRateLimiter(settings.redis_url) if getattr(settings, "redis_url", None) else None
        approvals = ApprovalStore(db_engine) if db_engine is not None else None
        return cls(engine, approvals=approvals, rate_limiter=limiter, public_url=settings.public_url)

    def prepare(self) -> None:
        """Create the approvals table if it is missing (blocking; the lifespan runs it in a thread)."""
        if self.approvals is not None:
            self.approvals.create_table()

    async def start(self) -> None:
        await self.engine.start()

    async def close(self) -> None:
        await self.engine.close()
        await self.rates.close()

    async def __call__(self, request: McpRequest, call_next: Handler) -> dict[str, Any]:
        principal = request.principal
        if principal is None:
            raise PolicyDenied(NOT_PERMITTED)
        who = Subject(principal.subject, tuple(principal.groups), principal.client_id, frozenset(principal.scopes))
        via_codemode = bool(request.state.get("via_codemode"))
        if request.method in LIST_ITEMS:
            result = await call_next(request)
            if request.endpoint.kind == "codemode":
                # Code Mode lists its own `search` and `execute`; the SDK behind them comes from
                # a `/mcp` listing made as the caller, via Code Mode, which is filtered here.
                return result
            if request.method == "tools/list":
                return self._filter_tools(request, who, via_codemode, result)
            return self._filter_by_server(request, who, via_codemode, result)
        decided = self._decide(request, who, via_codemode)
        if decided is None:
            return await call_next(request)
        action, _server, arguments, decision = decided
        request.state["decision"] = decision.decision
        request.state["policy_ids"] = list(decision.policy_ids)
        request.state["policy_version"] = decision.version
        if not decision.allowed:
            if request.method == "tools/call":
                return {"content": [{"type": "text", "text": f"{NOT_PERMITTED}: {action}"}], "isError": True}
            raise PolicyDenied(f"{NOT_PERMITTED}: {action}")
        redact = redact_paths(decision.annotation_values("redact"))
        if redact:
            request.state["redact"] = redact
        try:
            await self._obligations(who, action, arguments, decision)
        except ApprovalPending as pending:
            if request.modern and _takes_url_elicitation(request):
                return self._input_required(pending)
            raise
        _drop_own_state(request)
        return await call_next(request)

    def _input_required(self, pending: ApprovalPending) -> dict[str, Any]:
        """2026-07-28: the protocol's own way to hold a call. A URL elicitation tells the person where the
        request stands; the client retries the same call with the echoed state once they are done, and
        the call goes through if an operator approved it meanwhile (or is held again)."""
        approval_id = str(pending.data.get("approval_id"))
        url = f"{self.public_url}/approvals/{approval_id}" if self.public_url else None
        params: dict[str, Any] = {
            "mode": "url",
            "message": pending.message,
            "elicitationId": f"approval-{approval_id}",
        }
        if url:
            params["url"] = url
        return {
            "resultType": "input_required",
            "inputRequests": {"approval": {"method": "elicitation/create", "params": params}},
            "requestState": f"{_STATE_PREFIX}{approval_id}",
        }

    def _decide(
        self, request: McpRequest, who: Subject, via_codemode: bool
    ) -> tuple[str, str, dict[str, Any], Decision] | None:
        target = request.target
        if target is None:
            if request.endpoint.kind == "codemode" and request.method == "tools/call" and not via_codemode:
                action, server, arguments = "use_codemode", CODEMODE_SERVER, {}
            else:
                return None
        elif target.kind == "tool" and request.method == "tools/call":
            found = self.engine.tool_action(target.server, target.name)
            if found is None and self.availability is not None:
                # A server that is down has no tools in the catalog: say so, as the forwarder would.
                self.availability(target.server)
            # A tool the catalog does not know has no action: denied, never silently allowed.
            action = found or f"{target.server}_{target.name}"
            server = target.server
            raw = target.params.get("arguments")
            arguments = dict(raw) if isinstance(raw, dict) else {}
        elif target.kind == "resource" and request.method == "resources/read":
            action, server, arguments = "read_resource", target.server, {"uri": target.name}
        elif target.kind == "prompt" and request.method == "prompts/get":
            action, server, arguments = "get_prompt", target.server, {"name": target.name}
        else:
            # completion/complete and the like: the capability guard bounds them.
            return None
        decision = self.engine.decide(who, action, server, arguments, via_codemode=via_codemode)
        return action, server, arguments, decision

    async def _obligations(self, who: Subject, action: str, arguments: dict[str, Any], decision: Decision) -> None:
        for notes in decision.annotations:
            rate = notes.get("rate")
            if rate:
                limit, period = parse_rate(rate)
                wait = await self.rates.hit(f"{who.subject}:{action}:{notes.get('id', '')}", limit, period)
                if wait is not None:
                    raise RateLimited(action, wait)
        if decision.annotation_values("approval"):
            if self.approvals is None:
                raise PolicyDenied(f"{NOT_PERMITTED}: {action} needs an approval and none can be recorded")
            # What the operator reads has its secrets redacted, like the audit record of the call.
            shown = self.redact(arguments) if self.redact is not None else None
            approval = await asyncio.to_thread(
                functools.partial(self.approvals.consume_or_request, who.subject, action, arguments, shown=shown)
            )
            if approval.status != "used":
                raise ApprovalPending(approval.id, action, approval.expires_at)

    def _filter_by_server(
        self, request: McpRequest, who: Subject, via_codemode: bool, result: dict[str, Any]
    ) -> dict[str, Any]:
        """Resources and prompts: listed when some read or get on their server could be permitted."""
        key, field = LIST_ITEMS[request.method]
        action = _LIST_ACTIONS[request.method]
        items = result.get(key)
        if not isinstance(items, list):
            return result
        catalog, endpoint_server = self.engine.catalog, request.endpoint.server
        kept = []
        for item in items:
            owner = catalog.owner(key, str(item.get(field, "")), endpoint_server)
            if owner is not None and self.engine.visible(who, action, owner[0], via_codemode=via_codemode):
                kept.append(item)
        return {**result, key: kept}

    def _filter_tools(
        self, request: McpRequest, who: Subject, via_codemode: bool, result: dict[str, Any]
    ) -> dict[str, Any]:
        tools = result.get("tools")
        if not isinstance(tools, list):
            return result
        catalog, endpoint_server = self.engine.catalog, request.endpoint.server
        kept = []
        for tool in tools:
            owner = catalog.owner("tools", tool.get("name", ""), endpoint_server)
            if owner is None:
                continue
            server, upstream = owner
            action = self.engine.tool_action(server, upstream)
            if action is not None and self.engine.visible(who, action, server, via_codemode=via_codemode):
                kept.append(tool)
        return {**result, "tools": kept}
