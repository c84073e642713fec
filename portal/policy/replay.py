"""`portal policy replay`: re-decide recorded calls under another policy set and list what would flip.

The call records of a window (`tools/call`, `resources/read`, `prompts/get`) are paired by
`call_id` (a forwarded call has a `start` record holding its arguments and an `end` record holding
the decision; a call refused before forwarding has one `end` record holding both), the request the
policy stage decided is rebuilt, and a `PolicyEngine` on the candidate folder decides it again:

- principal: the record's `principal`, `groups` and `client_id`. Scopes are not in the audit record;
  they are read from the token that made the call (`auth_access_tokens`, by `token_id`) while its row
  exists, and are unknown otherwise.
- via_codemode: `details.via_codemode` of the record; in records written before it was kept, a
  `parent_id` (the audit stage gives one only to Code Mode inner calls) stands for it.
- action, as `portal.policy.stage` builds it: `{server}_{tool}`; `read_resource` with `{"uri": ...}`;
  `get_prompt` with `{"name": ...}`; a `tools/call` on the Code Mode endpoint is `use_codemode`.
- `context.time`: the time of the call's first record.

Undecidable (listed, never counted as a flip): the log keeps arguments redacted, so a call is
re-decided only where the redaction cannot matter. It is undecidable when its arguments were not
kept (too large), when a value holding a redaction marker lies on a path that a policy which can
apply to its action reads (`context.input.card`, or `context.input` whole; a `has` test is not a
read: redaction keeps keys), when a redacted value makes the decision fail (a marker where the
schema wants a number), or when its scopes are unknown and such a policy reads `context.scopes`.

Catalog: the per-tool actions and their typed `context.input` come from tool lists. The live catalog
is in the running portal's memory (`registry.py` keeps servers and health, not tools), and replay runs
without a portal, so each server's tools come from the first of:
1. `tools.json` of the candidate folder (or `--tools FILE`), the file `policy check|test|explain`
   read: the operator's explicit catalog, so a recorded tool of a server it names that it lacks is
   `unknown_action` (gone);
2. the tool pins (`portal.pinning`, table `tool_pins`): the definitions the portal accepted (or,
   while pending, last saw), the one place the portal persists tool schemas;
3. the records themselves: the tools called, with an `inputSchema` inferred from the recorded
   arguments (each field's JSON type, required when every call had it; fields whose values disagree
   or are only redacted stay untyped) and no annotations, hence `Action::"destructive"` (MCP's
   default), so that replay also works on a bare audit log.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cedarpy
from sqlalchemy import select
from sqlalchemy.engine import Engine

from portal.audit.chain import RECORDS
from portal.audit.query import iso
from portal.audit.redact import MARKER_PREFIX
from portal.auth.tables import AccessTokenRow
from portal.catalog import aggregate_name
from portal.policy.engine import PolicyEngine, Subject
from portal.policy.replay_catalog import ReplayError, build_catalog, pinned_tools
from portal.policy.schema import CODEMODE_SERVER

__all__ = [
    "CALL_METHODS",
    "RecordedCall",
    "ReplayError",
    "ReplayReport",
    "ReplayedCall",
    "build_catalog",
    "pinned_tools",
    "recorded_calls",
    "redacted_paths",
    "replay",
]

CALL_METHODS = ("tools/call", "resources/read", "prompts/get")
CODEMODE_PATH = "/codemode/mcp"
"""`portal.gateway.codemode.CODEMODE_ENDPOINT.path` (the gateway is not imported by the CLI)."""
_BATCH = 500
_TOKENS: Any = AccessTokenRow.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class RecordedCall:
    """One call as the audit log shows it (first record, plus the decision of its end record)."""

    call_id: str
    time_us: int
    method: str
    endpoint: str | None
    server: str | None
    tool: str | None
    principal: str
    groups: tuple[str, ...]
    client_id: str
    token_id: str | None
    via_codemode: bool
    arguments: Any
    decision: str | None
    """`allow`/`deny`; None when no end record says (still running, or stopped before the policy stage)."""
    policy_ids: tuple[str, ...] = ()

    @property
    def omitted(self) -> bool:
        """Whether the arguments were too large to keep (the log has their size and hash only)."""
        return isinstance(self.arguments, dict) and self.arguments.get("omitted") is True and "sha256" in self.arguments


@dataclass(frozen=True)
class ReplayedCall:
    call: RecordedCall
    action: str
    status: str
    """`same`, `flipped`, `undecidable`, `unknown_action` or `unrecorded`."""
    decision: str | None = None
    """The candidate set's decision (None unless re-decided)."""
    policy_ids: tuple[str, ...] = ()
    reason: str = ""

    @property
    def flip(self) -> str | None:
        """`allow->deny` or `deny->allow`."""
        return f"{self.call.decision}->{self.decision}" if self.status == "flipped" else None

    def as_dict(self) -> dict[str, Any]:
        call = self.call
        return {
            "call_id": call.call_id,
            "time": iso(call.time_us),
            "principal": call.principal,
            "groups": list(call.groups),
            "client_id": call.client_id,
            "server": call.server,
            "tool": call.tool,
            "action": self.action,
            "via_codemode": call.via_codemode,
            "recorded": call.decision,
            "recorded_policy_ids": list(call.policy_ids),
            "decision": self.decision,
            "policy_ids": list(self.policy_ids),
            "status": self.status,
            "flip": self.flip,
            "reason": self.reason,
        }


@dataclass
class ReplayReport:
    calls: list[ReplayedCall]
    policy_version: str
    catalog: dict[str, str]
    """Where each server's tools came from: `tools.json`, `pins` or `audit log`."""
    since_us: int | None = None
    until_us: int | None = None
    summary: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        count = Counter(call.status for call in self.calls)
        flips = Counter(call.flip for call in self.calls)
        self.summary = {
            "redecided": count["same"] + count["flipped"],
            "flipped": count["flipped"],
            "allow_to_deny": flips["allow->deny"],
            "deny_to_allow": flips["deny->allow"],
            "undecidable": count["undecidable"],
            "unknown_action": count["unknown_action"],
            "unrecorded": count["unrecorded"],
        }

    def summary_line(self) -> str:
        s = self.summary
        return (
            f"{s['redecided']} re-decided, {s['flipped']} flipped ({s['allow_to_deny']} allow->deny, "
            f"{s['deny_to_allow']} deny->allow), {s['undecidable']} undecidable, "
            f"{s['unknown_action']} unknown action, {s['unrecorded']} without a recorded decision"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "since": iso(self.since_us) if self.since_us is not None else None,
            "until": iso(self.until_us) if self.until_us is not None else None,
            "policy_version": self.policy_version,
            "catalog": self.catalog,
            "summary": self.summary,
            "calls": [call.as_dict() for call in self.calls],
        }


# Reading the log


def recorded_calls(db: Engine, since_us: int | None = None, until_us: int | None = None) -> list[RecordedCall]:
    """The calls whose first record falls in [since, until), oldest first."""
    c = RECORDS.c
    query = select(RECORDS).where(c.kind == "call", c.method.in_(CALL_METHODS), c.phase.in_(("start", "end")))
    if since_us is not None:
        query = query.where(c.time_us >= since_us)
    if until_us is not None:
        query = query.where(c.time_us < until_us)
    starts: dict[str, Any] = {}
    calls: dict[str, RecordedCall] = {}
    with db.connect() as connection:
        for row in connection.execute(query.order_by(c.seq)).yield_per(2000):
            if row.phase == "start":
                starts[row.call_id] = row
            elif row.call_id in starts:
                calls[row.call_id] = _call(starts.pop(row.call_id), row)
            elif row.arguments is not None:
                # Refused before forwarding: the end record is the whole call. An end without
                # arguments belongs to a call forwarded before the window opened.
                calls[row.call_id] = _call(row, row)
        pending = list(starts)
        for offset in range(0, len(pending), _BATCH):
            chunk = pending[offset : offset + _BATCH]
            ends = connection.execute(select(RECORDS).where(c.call_id.in_(chunk), c.phase == "end"))
            by_call = {row.call_id: row for row in ends}
            for call_id in chunk:
                calls[call_id] = _call(starts[call_id], by_call.get(call_id))
    return sorted(calls.values(), key=lambda call: (call.time_us, call.call_id))


def _call(first: Any, end: Any) -> RecordedCall:
    return RecordedCall(
        call_id=first.call_id,
        time_us=int(first.time_us),
        method=first.method,
        endpoint=first.endpoint,
        server=first.server,
        tool=first.tool,
        principal=first.principal or "",
        groups=tuple(first.groups or ()),
        client_id=first.client_id or "",
        token_id=first.token_id,
        via_codemode=_via_codemode(first),
        arguments=first.arguments,
        decision=end.decision if end is not None else None,
        policy_ids=tuple(end.policy_ids or ()) if end is not None else (),
    )


def _via_codemode(record: Any) -> bool:
    details = record.details if isinstance(record.details, dict) else {}
    return bool(details.get("via_codemode")) or record.parent_id is not None


def _token_scopes(db: Engine, token_ids: Iterable[str]) -> dict[str, frozenset[str]]:
    ids = sorted(set(token_ids))
    scopes: dict[str, frozenset[str]] = {}
    with db.connect() as connection:
        for offset in range(0, len(ids), _BATCH):
            query = select(_TOKENS.c.jti, _TOKENS.c.scope).where(_TOKENS.c.jti.in_(ids[offset : offset + _BATCH]))
            scopes.update((row.jti, frozenset((row.scope or "").split())) for row in connection.execute(query))
    return scopes


# The catalog


def redacted_paths(value: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The paths of the strings holding a redaction marker (`*` for an array's items)."""
    if isinstance(value, str):
        return [path] if MARKER_PREFIX in value else []
    if isinstance(value, dict):
        return [found for key, item in value.items() for found in redacted_paths(item, (*path, str(key)))]
    if isinstance(value, list):
        return [found for item in value for found in redacted_paths(item, (*path, "*"))]
    return []


@dataclass(frozen=True)
class _Reads:
    policy_id: str
    scope: dict[str, Any]
    """The policy's action scope (Cedar JSON)."""
    paths: frozenset[tuple[str, ...]]
    """The `context` paths its conditions read (`()`: the whole context); `typeChoiceN` steps dropped."""

    def applies(self, action: str, groups: set[str]) -> bool:
        """Whether the policy's scope can take `action` (`groups`: the action and the groups it is in)."""
        op = self.scope.get("op")
        ids = {entity.get("id") for entity in [*self.scope.get("entities", ()), self.scope.get("entity") or {}]}
        if op == "==":
            return action in ids
        if op == "in":
            return bool(groups & ids)
        return True  # `All`, or a form this does not know: assume it can apply

    def reads_input(self, redacted: tuple[str, ...]) -> bool:
        for path in self.paths:
            if path and path[0] != "input":
                continue
            wanted = path[1:]
            if redacted[: len(wanted)] == wanted or wanted[: len(redacted)] == redacted:
                return True
        return False

    @property
    def reads_scopes(self) -> bool:
        return any(not path or path[0] == "scopes" for path in self.paths)


def _policy_reads(engine: PolicyEngine) -> list[_Reads]:
    reads = []
    for source in engine.sources():
        parsed = json.loads(cedarpy.policies_to_json_str(source.text))
        for body in parsed.get("staticPolicies", {}).values():
            paths: set[tuple[str, ...]] = set()
            for condition in body.get("conditions", ()):
                _collect(condition.get("body"), paths)
            if paths:
                reads.append(_Reads(source.policy_id, body.get("action") or {"op": "All"}, frozenset(paths)))
    return reads


def _context_chain(expr: Any) -> tuple[str, ...] | None:
    attrs: list[str] = []
    while isinstance(expr, dict) and "." in expr:
        attrs.append(str(expr["."]["attr"]))
        expr = expr["."]["left"]
    if expr == {"Var": "context"}:
        return tuple(attr for attr in reversed(attrs) if not attr.startswith("typeChoice"))
    return None


def _collect(expr: Any, paths: set[tuple[str, ...]]) -> None:
    if isinstance(expr, dict):
        chain = _context_chain(expr)
        if chain is not None:
            paths.add(chain)
            return
        if "has" in expr and _context_chain(expr["has"].get("left")) is not None:
            return  # presence only, which redaction keeps
        for item in expr.values():
            _collect(item, paths)
    elif isinstance(expr, list):
        for item in expr:
            _collect(item, paths)


# Re-deciding


def replay(
    db: Engine,
    policies: Path | str,
    *,
    since_us: int | None = None,
    until_us: int | None = None,
    tools_file: Path | str | None = None,
) -> ReplayReport:
    """Re-decide the calls recorded in [since, until) with the policies of `policies` (a folder).

    `tools_file` defaults to `policies/tools.json`. Raises `PolicyError` when the candidate set does
    not parse or validate against the catalog (as a reload would refuse it)."""
    if since_us is not None and until_us is not None and since_us >= until_us:
        raise ReplayError(f"the window is empty: {iso(since_us)} is not before {iso(until_us)}")
    directory = Path(policies)
    calls = recorded_calls(db, since_us, until_us)
    tools = Path(tools_file) if tools_file else directory / "tools.json"
    if tools_file and not tools.is_file():
        raise ReplayError(f"{tools}: no such tools file")
    catalog, sources = build_catalog(calls, tools, pinned_tools(db))
    engine = PolicyEngine(directory, catalog, poll_interval=0)
    reads = _policy_reads(engine)
    scopes = _token_scopes(db, [call.token_id for call in calls if call.token_id]) if reads else {}
    rows = [_replay_one(engine, reads, scopes, call) for call in calls]
    return ReplayReport(rows, engine.version, sources, since_us, until_us)


def _request(engine: PolicyEngine, call: RecordedCall) -> tuple[str | None, str, Any]:
    """The action, server and policy input the policy stage decided `call` with (action None: unknown)."""
    server = call.server or ""
    if call.method == "resources/read":
        return "read_resource", server, {"uri": call.tool or ""}
    if call.method == "prompts/get":
        return "get_prompt", server, {"name": call.tool or ""}
    if call.endpoint == CODEMODE_PATH and not call.via_codemode:
        return "use_codemode", CODEMODE_SERVER, {}
    if not call.server or not call.tool:
        return None, server, call.arguments
    return engine.tool_action(call.server, call.tool), server, call.arguments


def _replay_one(
    engine: PolicyEngine, reads: list[_Reads], scopes: Mapping[str, frozenset[str]], call: RecordedCall
) -> ReplayedCall:
    action, server, arguments = _request(engine, call)
    shown = action or (aggregate_name(call.server, call.tool) if call.server and call.tool else call.tool or "")

    def row(status: str, reason: str = "") -> ReplayedCall:
        return ReplayedCall(call, shown, status, reason=reason)

    if action is None:
        return row("unknown_action", f"no tool {shown} in the candidate catalog")
    if call.decision not in ("allow", "deny"):
        return row("unrecorded", "no policy decision recorded (stopped before the policy stage, or unfinished)")
    if call.omitted:
        return row("undecidable", "the arguments were too large to record")
    info = engine.snapshot.built.actions.get(action)
    groups = {action, f"server:{info.server}", info.kind} if info is not None else {action}
    relevant = [policy for policy in reads if policy.applies(action, groups)]
    redacted = redacted_paths(arguments)
    for policy in relevant:
        for path in redacted:
            if policy.reads_input(path):
                return row("undecidable", f"{policy.policy_id} reads input.{'.'.join(path)}, which was redacted")
    known_scopes = scopes.get(call.token_id or "")
    if known_scopes is None:
        for policy in relevant:
            if policy.reads_scopes:
                return row("undecidable", f"{policy.policy_id} reads context.scopes; the token's are not on record")
    who = Subject(call.principal, call.groups, call.client_id, known_scopes or frozenset())
    decision = engine.decide(
        who, action, server, arguments, via_codemode=call.via_codemode, now=call.time_us / 1_000_000
    )
    if decision.errors and redacted:
        return row("undecidable", "a redacted argument does not fit the schema: " + "; ".join(decision.errors))
    status = "same" if decision.decision == call.decision else "flipped"
    return ReplayedCall(call, action, status, decision.decision, decision.policy_ids, "; ".join(decision.errors))
