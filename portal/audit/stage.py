"""The audit pipeline stage: a durable `start` record before a call is forwarded, an `end` record after.

`AuditStage` alone writes the start record itself, then calls the rest of the chain. With
`split=True` it only opens the call and an `AuditGate` (placed just before the forwarder, after
the policy stage) writes the start record, so that its arguments are redacted with the paths
the policy named (`request.state["redact"]`); a call denied before the gate gets an end record only.

What later stages leave in `request.state` for the record: `decision` ("allow"/"deny"),
`policy_ids`, `policy_version`, `redact` (JSON paths: `input.password`, `result`),
`upstream_latency` (seconds), `trace_id`; Code Mode inner calls: `via_codemode`, and
`parent_audit_id` (the run's `state["audit_call_id"]`) or `parent_request_id`.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import TYPE_CHECKING, Any

import orjson

from portal.audit.chain import new_id, now_us
from portal.errors import PortalError

if TYPE_CHECKING:
    from portal.audit.log import AuditLog
    from portal.pipeline import Handler, McpRequest

__all__ = ["AuditGate", "AuditStage", "call_record"]

_CALL = "_audit_call"
CODEMODE_VIEW = "codemode_view"
"""`portal.gateway.codemode.CODEMODE_VIEW` (not imported: the gateway depends on this package, not the reverse)."""
DENIAL_CODES = frozenset({"forbidden", "denied", "policy_denied", "access_denied", "insufficient_scope"})


def _arguments(request: McpRequest) -> Any:
    params = request.params or {}
    if request.method == "tools/call":
        return params.get("arguments") or {}
    if request.method == "prompts/get":
        return params.get("arguments") or {}
    return {key: value for key, value in params.items() if key != "_meta"} or None


def _tool(request: McpRequest) -> str | None:
    if request.target is not None:
        return request.target.name
    params = request.params or {}
    name = params.get("name") or params.get("uri")
    return str(name) if name is not None else None


def call_record(log: AuditLog, request: McpRequest, call_id: str) -> dict[str, Any]:
    """The `start` record of `request` (redacted with the paths in `request.state["redact"]`)."""
    state = request.state
    principal = request.principal
    paths = [path for path in state.get("redact") or () if path.startswith("input")]
    arguments = log.redactor.redact({"input": _arguments(request)}, paths)["input"]
    if arguments is not None:
        text = orjson.dumps(arguments)
        if len(text) > log.settings.max_argument_chars:
            arguments = {"omitted": True, "size": len(text), "sha256": hashlib.sha256(text).hexdigest()}
    details: dict[str, Any] = {}
    if principal is not None and principal.actor:
        details["actor"] = log.redactor.scrub(principal.actor)
    if request.client_info:
        details["client_info"] = log.redactor.scrub(dict(request.client_info))
    if state.get("via_codemode"):
        details["via_codemode"] = True  # what the policies saw as context.via_codemode (replay needs it)
    parent = state.get("parent_audit_id") or (state.get("parent_request_id") if state.get("via_codemode") else None)
    return log.record(
        id=call_id,
        kind="call",
        phase="start",
        request_id=str(request.request_id),
        trace_id=state.get("trace_id"),
        principal=principal.subject if principal else None,
        groups=list(principal.groups) if principal else [],
        client_id=principal.client_id if principal else None,
        token_id=principal.token_id if principal else None,
        endpoint=request.endpoint.path,
        server=request.target.server if request.target else request.endpoint.server,
        method=request.method,
        tool=_tool(request),
        arguments=arguments,
        parent_id=str(parent) if parent is not None else None,
        details=details or None,
    )


class _Call:
    def __init__(self, log: AuditLog, request: McpRequest) -> None:
        self.log = log
        self.request = request
        self.call_id = new_id()
        self.started = False
        self.start_record: dict[str, Any] | None = None
        self.t0 = time.perf_counter()
        request.state["audit_call_id"] = self.call_id

    async def start(self) -> None:
        self.start_record = call_record(self.log, self.request, self.call_id)
        await self.log.append(self.start_record)
        self.started = True

    def end(self, outcome: str, error_code: str | None, result: dict[str, Any] | None) -> None:
        state = self.request.state
        base = self.start_record or call_record(self.log, self.request, self.call_id)
        record = dict(base)
        record.update(
            id=new_id(),
            phase="end",
            time_us=now_us(),
            outcome=outcome,
            error_code=error_code,
            decision=state.get("decision"),
            policy_ids=list(state.get("policy_ids") or []),
            policy_version=state.get("policy_version"),
            latency_us=int((time.perf_counter() - self.t0) * 1_000_000),
            details=base.get("details"),
        )
        if self.started:
            record["arguments"] = None  # the start record has them
        upstream = state.get("upstream_latency")
        if isinstance(upstream, int | float):
            record["upstream_latency_us"] = int(upstream * 1_000_000)
        if result is not None:
            body = orjson.dumps(result, option=orjson.OPT_SORT_KEYS)
            record["result_size"] = len(body)
            record["result_hash"] = hashlib.sha256(body).hexdigest()
            if self.log.settings.record_results and "result" not in (state.get("redact") or ()):
                paths = [path for path in state.get("redact") or () if path.startswith("result")]
                record["result"] = self.log.redactor.redact({"result": result}, paths)["result"]
        # Not awaited: the outcome must be recorded even when the call was cancelled; `close()` drains it.
        self.log.submit(record)


def _classify(exc: BaseException, state: dict[str, Any]) -> tuple[str, str]:
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled", "cancelled"
    if isinstance(exc, TimeoutError):
        return "timeout", "timeout"
    if isinstance(exc, PortalError):
        if state.get("decision") == "deny" or exc.code in DENIAL_CODES:
            return "denied", exc.code
        if "timeout" in exc.code:
            return "timeout", exc.code
        return "error", exc.code
    return "error", type(exc).__name__


class AuditStage:
    """Pipeline stage recording every MCP request (see the module docstring)."""

    def __init__(self, log: AuditLog, *, split: bool = False) -> None:
        self.log = log
        self.split = split

    async def __call__(self, request: McpRequest, call_next: Handler) -> dict[str, Any]:
        if request.state.get(CODEMODE_VIEW):
            # The listing the portal makes to build a caller's SDK: the `search`/`execute` call that
            # needed it is the record; recording it too would log a request no client made.
            return await call_next(request)
        call = _Call(self.log, request)
        request.state[_CALL] = call
        if not self.split:
            await call.start()  # raises AuditUnavailable: the call is not forwarded
        try:
            result = await call_next(request)
        except BaseException as exc:
            if isinstance(exc, Exception | asyncio.CancelledError) and not (
                isinstance(exc, PortalError) and exc.code == "audit_unavailable" and not call.started
            ):
                outcome, code = _classify(exc, request.state)
                call.end(outcome, code, None)
            raise
        if isinstance(result, dict) and result.get("resultType") == "input_required":
            # Held (an approval, or input the upstream asked for): the client retries the call.
            call.end("pending", "input_required", None)
        elif request.state.get("decision") == "deny":
            # The policies' "not permitted" tool error: a denial, not a tool that failed.
            call.end("denied", "not_permitted", result)
        else:
            is_error = isinstance(result, dict) and result.get("isError") is True
            call.end("error" if is_error else "ok", "tool_error" if is_error else None, result)
        return result


class AuditGate:
    """With `AuditStage(split=True)`: writes the start record right before the call is forwarded."""

    def __init__(self, log: AuditLog) -> None:
        self.log = log

    async def __call__(self, request: McpRequest, call_next: Handler) -> dict[str, Any]:
        if request.state.get(CODEMODE_VIEW):
            return await call_next(request)
        call = request.state.get(_CALL)
        if call is None:
            call = _Call(self.log, request)
            request.state[_CALL] = call
        if not call.started:
            await call.start()
        return await call_next(request)
