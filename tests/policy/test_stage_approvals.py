"""What an operator reads of a held call has its secrets redacted; the call is still matched exactly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy

from portal.audit.redact import Redactor
from portal.auth.principal import Principal
from portal.catalog import Catalog, ServerCatalog
from portal.gateway.routing import Target
from portal.pipeline import Endpoint, McpRequest
from portal.policy.engine import PolicyEngine
from portal.policy.obligations import ApprovalPending, ApprovalStore
from portal.policy.stage import PolicyStage
from portal.policy.testing import write_policies

TOKEN = "ghp_0123456789abcdefghij0123456789abcdef"
POLICY = '@id("deploy")\n@approval("required")\npermit (principal, action == Action::"ci_deploy", resource);\n'


def request(arguments: dict[str, Any]) -> McpRequest:
    params = {"name": "deploy", "arguments": arguments}
    who = Principal("olga", "client", frozenset({"tools:*"}), "jti", "aud", 0, ("ops",))
    return McpRequest(
        Endpoint("aggregated", "/mcp"), "tools/call", params, 1, "2025-11-25", principal=who,
        target=Target("ci", "tool", "deploy", params),
    )  # fmt: skip


async def ok(request: McpRequest) -> dict[str, Any]:
    return {"content": [], "isError": False}


async def test_a_held_call_is_stored_redacted_and_goes_through_after_approval(tmp_path: Path) -> None:
    catalog = Catalog()
    entry = ServerCatalog("ci")
    properties = {"env": {"type": "string"}, "token": {"type": "string"}}
    entry.items["tools"] = [{"name": "deploy", "inputSchema": {"type": "object", "properties": properties}}]
    catalog.replace(entry)
    engine = sqlalchemy.create_engine(
        "sqlite://", poolclass=sqlalchemy.pool.StaticPool, connect_args={"check_same_thread": False}
    )
    store = ApprovalStore(engine)
    store.create_table()
    stage = PolicyStage(PolicyEngine(write_policies(tmp_path, POLICY), catalog, poll_interval=0), approvals=store)
    stage.redact = Redactor(b"k" * 32).scrub
    arguments = {"env": "prod", "token": TOKEN}
    with pytest.raises(ApprovalPending) as pending:
        await stage(request(arguments), ok)
    (row,) = store.list()
    assert TOKEN not in row.arguments and json.loads(row.arguments)["env"] == "prod"
    store.decide(pending.value.data["approval_id"], True)
    with pytest.raises(ApprovalPending):  # another token: another call
        await stage(request({**arguments, "token": TOKEN[:-1] + "0"}), ok)
    assert (await stage(request(arguments), ok))["isError"] is False
