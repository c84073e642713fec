"""`portal policy replay`: recorded calls re-decided under a candidate set, on a real audit log."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert
from sqlalchemy.engine import Engine

from portal.audit import AuditLog, AuditSettings
from portal.audit.chain import new_id
from portal.auth.crypto import MasterKey
from portal.auth.tables import AccessTokenRow
from portal.cli import main
from portal.db import create_engine, init_db
from portal.pinning import PinStore
from portal.policy import PolicyError
from portal.policy.replay import build_catalog, recorded_calls, redacted_paths, replay
from portal.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2] / "policies"
MASTER = MasterKey(bytes(range(32)))
DAY_US = 86_400 * 1_000_000
TOOLS = {
    "pay": [
        {
            "name": "transfer",
            "inputSchema": {
                "type": "object",
                "properties": {"amount": {"type": "integer"}, "to": {"type": "string"}, "pin": {"type": "string"}},
                "required": ["amount", "to"],
            },
            "annotations": {"destructiveHint": False},
        },
        {
            "name": "balance",
            "inputSchema": {"type": "object", "properties": {"pin": {"type": "string"}}},
            "annotations": {"readOnlyHint": True},
        },
    ]
}
CANDIDATE = """
@id("eng.pay")
permit (principal in Group::"eng", action in Action::"server:pay", resource);

@id("finance.transfer")
permit (principal in Group::"finance", action == Action::"pay_transfer", resource);

@id("no-large-transfers")
forbid (principal, action == Action::"pay_transfer", resource) when { context.input.amount >= 1000 };

@id("read-pin")
forbid (principal, action in Action::"read", resource) when { context.input has pin && context.input.pin == "0" };
"""


def policy_dir(path: Path, policies: str = CANDIDATE, tools: Any = TOOLS) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "schema.cedarschema", path / "schema.cedarschema")
    (path / "main.cedar").write_text(policies)
    if tools is not None:
        (path / "tools.json").write_text(json.dumps(tools))
    return path


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(Settings(database_url=f"sqlite:///{tmp_path / 'portal.db'}"))
    init_db(engine)
    yield engine
    engine.dispose()


def audit_log(engine: Engine, tmp_path: Path) -> AuditLog:
    return AuditLog(engine, AuditSettings(), master=MASTER, spool_path=tmp_path / "spool.jsonl")


def record_call(
    log: AuditLog,
    user: str,
    groups: list[str],
    arguments: Any,
    decision: str | None,
    *,
    tool: str = "transfer",
    server: str | None = "pay",
    policy_ids: tuple[str, ...] = (),
    forwarded: bool = True,
    ago_us: int = 60_000_000,
    redact: tuple[str, ...] = (),
    **fields: Any,
) -> str:
    """A call as the audit stage writes it: start + end when forwarded, one end record when refused."""
    call_id = new_id()
    at = time.time_ns() // 1000 - ago_us
    base = {
        "kind": "call",
        "principal": user,
        "groups": groups,
        "client_id": "cli-test",
        "endpoint": "/mcp",
        "server": server,
        "method": "tools/call",
        "tool": tool,
        "arguments": log.redactor.redact({"input": arguments}, [f"input.{path}" for path in redact])["input"],
        **fields,
    }
    end = log.record(id=new_id(), call_id=call_id, phase="end", time_us=at + 1000, **base)
    if decision is not None:
        end.update(decision=decision, policy_ids=list(policy_ids), policy_version="old", outcome="ok")
    if forwarded:
        start = log.record(id=call_id, phase="start", time_us=at, **base)
        end["arguments"] = None
        log.write_sync([start, end])
    else:
        end["time_us"] = at
        end["outcome"] = "denied"
        log.write_sync([end])
    return call_id


def by_id(report: Any) -> dict[str, Any]:
    return {replayed.call.call_id: replayed for replayed in report.calls}


def test_flips_undecidable_and_unknown(db: Engine, tmp_path: Path) -> None:
    log = audit_log(db, tmp_path)
    big = record_call(log, "alice", ["eng"], {"amount": 5000, "to": "bob"}, "allow", policy_ids=("eng.pay",))
    small = record_call(log, "alice", ["eng"], {"amount": 10, "to": "bob"}, "allow", policy_ids=("eng.pay",))
    refused = record_call(log, "carol", ["finance"], {"amount": 10, "to": "x"}, "deny", forwarded=False)
    hidden = record_call(log, "dave", ["eng"], {"amount": 7, "to": "x"}, "allow", redact=("amount",))
    pin = record_call(log, "erin", ["eng"], {"amount": 20, "to": "x", "pin": "1234"}, "allow")
    gone = record_call(log, "alice", ["eng"], {"id": 3}, "allow", tool="refund")
    running = record_call(log, "alice", ["eng"], {"amount": 1, "to": "x"}, None)

    report = replay(db, policy_dir(tmp_path / "candidate"), since_us=time.time_ns() // 1000 - DAY_US)
    calls = by_id(report)

    assert (calls[big].status, calls[big].flip, calls[big].decision) == ("flipped", "allow->deny", "deny")
    assert calls[big].policy_ids == ("no-large-transfers",)
    assert (calls[small].status, calls[small].decision, calls[small].policy_ids) == ("same", "allow", ("eng.pay",))
    assert (calls[refused].status, calls[refused].flip) == ("flipped", "deny->allow")
    assert calls[refused].policy_ids == ("finance.transfer",)
    assert calls[hidden].status == "undecidable" and calls[hidden].decision is None
    assert "no-large-transfers reads input.amount" in calls[hidden].reason
    # `pin` is redacted (a secret's name); the one policy reading it applies to reads only, not transfers.
    assert (calls[pin].status, calls[pin].decision) == ("same", "allow")
    assert (calls[gone].status, calls[gone].action) == ("unknown_action", "pay_refund")
    assert calls[running].status == "unrecorded"
    assert report.summary == {
        "redecided": 4,
        "flipped": 2,
        "allow_to_deny": 1,
        "deny_to_allow": 1,
        "undecidable": 1,
        "unknown_action": 1,
        "unrecorded": 1,
    }
    assert report.summary_line().startswith("4 re-decided, 2 flipped (1 allow->deny, 1 deny->allow), 1 undecidable")
    assert report.catalog == {"pay": "tools.json"}


def test_time_range(db: Engine, tmp_path: Path) -> None:
    log = audit_log(db, tmp_path)
    old = record_call(log, "alice", ["eng"], {"amount": 5000, "to": "b"}, "allow", ago_us=10 * DAY_US)
    mid = record_call(log, "alice", ["eng"], {"amount": 5000, "to": "b"}, "allow", ago_us=3 * DAY_US)
    new = record_call(log, "alice", ["eng"], {"amount": 5000, "to": "b"}, "allow", ago_us=3_600_000_000)
    now = time.time_ns() // 1000
    directory = policy_dir(tmp_path / "candidate")

    assert list(by_id(replay(db, directory, since_us=now - 7 * DAY_US))) == [mid, new]
    assert list(by_id(replay(db, directory, since_us=now - 7 * DAY_US, until_us=now - 2 * DAY_US))) == [mid]
    assert list(by_id(replay(db, directory))) == [old, mid, new]


def test_end_after_window_is_paired_and_start_before_window_is_not(db: Engine, tmp_path: Path) -> None:
    log = audit_log(db, tmp_path)
    call_id = record_call(log, "alice", ["eng"], {"amount": 5000, "to": "b"}, "allow", policy_ids=("eng.pay",))
    (start,) = [call for call in recorded_calls(db) if call.call_id == call_id]
    # A window closing between the start and the end record still finds the decision.
    (cut,) = recorded_calls(db, until_us=start.time_us + 1)
    assert (cut.call_id, cut.decision, cut.arguments) == (call_id, "allow", {"amount": 5000, "to": "b"})
    # A window opening between them does not hold the call (its arguments are in the start record).
    assert recorded_calls(db, since_us=start.time_us + 1) == []


def test_codemode_calls(db: Engine, tmp_path: Path) -> None:
    log = audit_log(db, tmp_path)
    run = record_call(log, "alice", ["eng"], {"code": "..."}, "allow", tool="execute", server=None)
    with db.begin() as connection:  # the Code Mode run's record sits on its own endpoint
        connection.exec_driver_sql("UPDATE audit_records SET endpoint = '/codemode/mcp' WHERE call_id = ?", (run,))
    inner = record_call(log, "alice", ["eng"], {"amount": 5, "to": "b"}, "allow", parent_id=run)
    candidate = (
        CANDIDATE
        + """
@id("codemode") permit (principal, action == Action::"use_codemode", resource);
@id("no-pay-from-codemode")
forbid (principal, action in Action::"server:pay", resource) when { context.via_codemode };
"""
    )
    calls = by_id(replay(db, policy_dir(tmp_path / "candidate", candidate)))
    assert (calls[run].action, calls[run].status, calls[run].policy_ids) == ("use_codemode", "same", ("codemode",))
    assert calls[inner].call.via_codemode and calls[inner].flip == "allow->deny"
    assert calls[inner].policy_ids == ("no-pay-from-codemode",)


def test_scopes_come_from_the_token(db: Engine, tmp_path: Path) -> None:
    log = audit_log(db, tmp_path)
    with db.begin() as connection:
        connection.execute(
            insert(AccessTokenRow.__table__),  # type: ignore[attr-defined]
            {
                "jti": "tok-1",
                "subject": "alice",
                "subject_kind": "user",
                "client_id": "cli-test",
                "audience": "http://portal/mcp",
                "scope": "tools:pay",
                "kid": "k1",
                "grant": "mint",
                "issued_at": 0,
                "expires_at": 1,
            },
        )
    known = record_call(log, "alice", [], {"amount": 5, "to": "b"}, "deny", token_id="tok-1")
    unknown = record_call(log, "alice", [], {"amount": 5, "to": "b"}, "deny", token_id="tok-gone")
    candidate = '@id("scoped")\npermit (principal, action, resource) when { context.scopes.contains("tools:pay") };\n'
    calls = by_id(replay(db, policy_dir(tmp_path / "candidate", candidate)))
    assert (calls[known].status, calls[known].flip) == ("flipped", "deny->allow")
    assert calls[unknown].status == "undecidable" and "context.scopes" in calls[unknown].reason


def test_catalog_inferred_from_records_without_tools_json(db: Engine, tmp_path: Path) -> None:
    log = audit_log(db, tmp_path)
    wide = record_call(log, "alice", ["eng"], {"customer": "acme", "limit": 50}, "allow", server="crm", tool="lookup")
    narrow = record_call(log, "alice", ["eng"], {"customer": "acme", "limit": 2}, "allow", server="crm", tool="lookup")
    candidate = """
@id("eng.crm") permit (principal in Group::"eng", action in Action::"server:crm", resource);
@id("crm.limit") forbid (principal, action == Action::"crm_lookup", resource) when { context.input.limit > 10 };
"""
    report = replay(db, policy_dir(tmp_path / "candidate", candidate, tools=None))
    calls = by_id(report)
    assert report.catalog == {"crm": "audit log"}
    assert calls[wide].flip == "allow->deny" and calls[narrow].status == "same"


def test_catalog_from_tool_pins(db: Engine, tmp_path: Path) -> None:
    PinStore(db).reconcile("pay", TOOLS["pay"], trust_new_tools=False)
    log = audit_log(db, tmp_path)
    big = record_call(log, "alice", ["eng"], {"amount": 5000, "to": "b"}, "allow", policy_ids=("eng.pay",))
    gone = record_call(log, "alice", ["eng"], {"id": 1}, "allow", tool="refund")
    report = replay(db, policy_dir(tmp_path / "candidate", tools=None))
    calls = by_id(report)
    assert report.catalog == {"pay": "pins"}
    assert calls[big].flip == "allow->deny" and calls[gone].status == "unknown_action"


def test_inferred_schema_and_redacted_paths() -> None:
    from portal.policy.replay import RecordedCall

    def call(arguments: Any) -> RecordedCall:
        return RecordedCall("c", 0, "tools/call", "/mcp", "s", "t", "u", (), "", None, False, arguments, "allow")

    marker = "[redacted:" + "0" * 32 + "]"
    catalog, _ = build_catalog(
        [call({"n": 1, "x": 1.5, "s": "a", "tags": ["a"]}), call({"n": 2, "x": 2, "s": marker, "odd": 1}), call({})],
        None,
    )
    entry = catalog.get("s")
    assert entry is not None
    schema = entry.items["tools"][0]["inputSchema"]
    assert schema["properties"] == {
        "n": {"type": "integer"},
        "x": {"type": "number"},
        "s": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "odd": {"type": "integer"},
    }
    assert schema["required"] == []
    assert redacted_paths({"a": marker, "b": [{"c": "x " + marker}], "d": 1}) == [("a",), ("b", "*", "c")]


def test_invalid_candidate_is_refused(db: Engine, tmp_path: Path) -> None:
    directory = policy_dir(tmp_path / "candidate", '@id("x") permit (principal, action, resource) when { 1 +  };')
    with pytest.raises(PolicyError):
        replay(db, directory)


def test_cli_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "portal.toml"
    config.write_text('[portal]\ndatabase_url = "sqlite:///portal.db"\npolicies_dir = "candidate"\n')
    policy_dir(tmp_path / "candidate")
    settings = load_settings(config)
    engine = create_engine(settings)
    init_db(engine)
    log = audit_log(engine, tmp_path)
    big = record_call(log, "alice", ["eng"], {"amount": 5000, "to": "b"}, "allow", policy_ids=("eng.pay",))
    record_call(log, "alice", ["eng"], {"amount": 10, "to": "b"}, "allow", policy_ids=("eng.pay",))
    record_call(log, "alice", ["eng"], {"amount": 10, "to": "b"}, "allow", ago_us=9 * DAY_US)
    engine.dispose()

    assert main(["policy", "replay", "--config", str(config), "--since", "7d", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["summary"]["redecided"] == 2 and out["summary"]["flipped"] == 1
    (flipped,) = [call for call in out["calls"] if call["status"] == "flipped"]
    assert (flipped["call_id"], flipped["flip"], flipped["policy_ids"]) == (big, "allow->deny", ["no-large-transfers"])

    assert main(["policy", "replay", "--config", str(config)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert len(table) == 3 and table[0].startswith("time") and big in table[1] and "pay/transfer" in table[1]
    assert table[-1].startswith("2 re-decided, 1 flipped (1 allow->deny, 0 deny->allow), 0 undecidable")

    assert main(["policy", "replay", "--config", str(config), "--since", "nonsense"]) == 1
    assert main(["policy", "replay", "--config", str(config), "--tools", str(tmp_path / "missing.json")]) == 1
