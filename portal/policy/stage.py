"""Pipeline stage: the policies decide every call and filter every tool list.

Runs right after `CapabilityGuard` (the token's capabilities), so what passes is their
intersection. A denied tool call answers a tool error "not permitted" (never "unknown
tool", never policy text); other denied requests raise `PolicyDenied`. The decision,
the deciding policy ids and the set's version go into `request.state` for the audit
stage; `@redact` paths into `request.state["redact"]`.
"""

from __future__ import annotations

import asyncio
from typing import Any

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
    ) -> None:
        self.engine = engine
        self.approvals = approvals
        self.rates = rate_limiter or MemoryRateLimiter()

    @classmethod
    def from_settings(cls, settings: Any, engine: PolicyEngine, db_engine: Any = None) -> PolicyStage:
        limiter = RedisRateLimiter(settings.redis_url) if getattr(settings, "redis_url", None) else None
        return cls(engine, approvals=ApprovalStore(db_engine) if db_engine is not None else None, rate_limiter=limiter)

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
        if request.method == "tools/list":
            result = await call_next(request)
            return self._filter_tools(request, who, via_codemode, result)
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
        await self._obligations(who, action, arguments, decision)
        return await call_next(request)

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
            approval = await asyncio.to_thread(self.approvals.consume_or_request, who.subject, action, arguments)
            if approval.status != "used":
                raise ApprovalPending(approval.id, action, approval.expires_at)

    def _filter_tools(
        self, request: McpRequest, who: Subject, via_codemode: bool, result: dict[str, Any]
    ) -> dict[str, Any]:
        tools = result.get("tools")
        if not isinstance(tools, list):
            return result
        catalog = self.engine.catalog
        server_of_endpoint = request.endpoint.server
        kept = []
        for tool in tools:
            name = tool.get("name", "")
            if server_of_endpoint is not None:
                server, upstream = server_of_endpoint, name
            else:
                resolved = catalog.resolve_tool(name)
                if resolved is None:
                    continue
                server, upstream = resolved
            action = self.engine.tool_action(server, upstream)
            if action is not None and self.engine.visible(who, action, server, via_codemode=via_codemode):
                kept.append(tool)
        return {**result, "tools": kept}
