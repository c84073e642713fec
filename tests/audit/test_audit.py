"""The audit log on SQLite and PostgreSQL: records, chain, tamper evidence, redaction, spool, queries."""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import sqlalchemy
from sqlalchemy.engine import Engine

from portal.audit import AuditLog, AuditUnavailable, Filters, export, prune, search, show, stats
from portal.audit.canonical import canonical_json
from portal.audit.chain import HEAD, RECORDS, record_hash
from portal.auth.events import AuthEvents
from portal.auth.principal import Principal
from portal.db import engine_url, init_db
from portal.errors import PortalError, UpstreamTimeout
from portal.pipeline import Endpoint, McpRequest, Pipeline

from .conftest import MASTER, TcpProxy, make_log, postgres_engine

ALICE = Principal(
    subject="alice",
    client_id="agent-1",
    scopes=frozenset({"tools:call"}),
    token_id="jti-1",
    audience="http://portal/mcp",
    expires_at=0,
    groups=("eng", "ops"),
    actor={"sub": "bot"},
)
SECRETS = [
    "hunter2-very-secret",
    "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXZhbHVl",
    "AKIAIOSFODNN7EXAMPLE",
    "ghp_0123456789abcdefghij0123456789abcdef",
    "Bearer abcdefghijklmnop1234",
]


def call(name: str = "search", arguments: dict[str, Any] | None = None, **state: Any) -> McpRequest:
    return McpRequest(
        endpoint=Endpoint("aggregated", "/mcp"),
        method="tools/call",
        params={"name": f"notes__{name}", "arguments": arguments or {"q": "x"}},
        request_id=7,
        protocol_version="2025-11-25",
        principal=ALICE,
        state=dict(state),
    )


def rows(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        return [dict(row._asdict()) for row in connection.execute(sqlalchemy.select(RECORDS).order_by(RECORDS.c.seq))]


async def upstream_ok(request: McpRequest) -> dict[str, Any]:
    request.state["upstream_latency"] = 0.001
    return {"content": [{"type": "text", "text": "ok"}], "isError": False}


def test_canonical_json_follows_rfc_8785() -> None:
    assert canonical_json({"b": 1, "a": [True, None, 1.0, 1e21, 1e-7, "é\n"]}) == (
        '{"a":[true,null,1,1e+21,1e-7,"é\\n"],"b":1}'.encode()
    )
    # Keys sort by UTF-16 code units (RFC 8785 §3.2.3).
    assert canonical_json({"\U0001f600": 1, "\ufb33": 2}) == '{"\U0001f600":1,"\ufb33":2}'.encode()


async def test_call_records_have_the_spec_fields(engine: Engine, tmp_path: Path) -> None:
    log = make_log(engine, tmp_path)
    await log.start()
    pipeline = Pipeline([log.stage()], upstream_ok)
    request = call(trace_id="trace-1", decision="allow", policy_ids=["p1"], policy_version="v3")
    await pipeline(request)
    await log.close()
    start, end = rows(engine)
    assert (start["phase"], end["phase"]) == ("start", "end")
    assert start["call_id"] == end["call_id"] == request.state["audit_call_id"]
    for record in (start, end):
        assert record["principal"] == "alice" and record["client_id"] == "agent-1" and record["token_id"] == "jti-1"
        assert record["groups"] == ["eng", "ops"] and record["endpoint"] == "/mcp" and record["method"] == "tools/call"
        assert record["tool"] == "notes__search" and record["request_id"] == "7" and record["trace_id"] == "trace-1"
        assert record["details"]["actor"] == {"sub": "bot"}
    assert start["arguments"] == {"q": "x"}
    assert end["outcome"] == "ok" and end["decision"] == "allow" and end["policy_ids"] == ["p1"]
    assert end["policy_version"] == "v3" and end["upstream_latency_us"] == 1000 and end["latency_us"] >= 0
    assert end["result_size"] > 0 and len(end["result_hash"]) == 64 and end["result"] is None
    assert end["prev_hash"] == start["hash"]
    assert log.verify().ok


async def test_outcomes_denials_timeouts_cancellations_and_errors(engine: Engine, tmp_path: Path) -> None:
    log = make_log(engine, tmp_path)
    await log.start()

    class Denied(PortalError):
        code = "forbidden"

    async def deny(request: McpRequest) -> dict[str, Any]:
        request.state["decision"] = "deny"
        raise Denied("no")

    async def timeout(request: McpRequest) -> dict[str, Any]:
        raise UpstreamTimeout("notes", "timed out")

    async def crash(request: McpRequest) -> dict[str, Any]:
        raise ConnectionResetError("upstream died")

    async def hang(request: McpRequest) -> dict[str, Any]:
        await asyncio.sleep(60)
        return {}

    for handler in (deny, timeout, crash):
        with pytest.raises((PortalError, ConnectionResetError)):
            await Pipeline([log.stage()], handler)(call())
    task = asyncio.create_task(Pipeline([log.stage()], hang)(call()))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await log.close()
    ends = [(r["outcome"], r["error_code"]) for r in rows(engine) if r["phase"] == "end"]
    assert ends == [
        ("denied", "forbidden"),
        ("timeout", "upstream_timeout"),
        ("error", "ConnectionResetError"),
        ("cancelled", "cancelled"),
    ]
    assert log.verify().ok


async def test_split_stage_records_a_denial_before_the_gate_and_redacts_policy_paths(
    engine: Engine, tmp_path: Path
) -> None:
    log = make_log(engine, tmp_path, record_results=True)
    await log.start()

    async def policy(request: McpRequest, call_next: Any) -> dict[str, Any]:
        request.state["redact"] = ["input.card", "result.content"]
        if request.params["arguments"].get("deny"):
            request.state["decision"] = "deny"
            raise PortalError("denied by policy")
        return await call_next(request)

    pipeline = Pipeline([log.stage(split=True), policy, log.gate()], upstream_ok)
    await pipeline(call(arguments={"card": "4111 1111 1111 1111", "q": "x"}))
    with pytest.raises(PortalError):
        await pipeline(call(arguments={"card": "4111 1111 1111 1111", "deny": True}))
    await log.close()
    records = rows(engine)
    assert [r["phase"] for r in records] == ["start", "end", "end"]
    assert records[0]["arguments"]["card"].startswith("[redacted:")
    assert records[0]["arguments"]["card"] == records[2]["arguments"]["card"]  # equal values, equal markers
    assert records[1]["result"] == {"content": records[1]["result"]["content"], "isError": False}
    assert records[1]["result"]["content"].startswith("[redacted:")
    assert records[2]["outcome"] == "denied" and records[2]["decision"] == "deny"
    assert "4111" not in json.dumps(records)


async def test_secrets_never_reach_the_stored_rows(engine: Engine, tmp_path: Path) -> None:
    log = make_log(engine, tmp_path)
    await log.start()
    events = AuthEvents()
    log.subscribe(events)
    arguments = {
        "password": SECRETS[0],
        "note": f"token is {SECRETS[1]} and key {SECRETS[2]}",
        "nested": [{"headers": {"Authorization": SECRETS[4]}}, SECRETS[3]],
        "pem": "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----",
    }
    await Pipeline([log.stage()], upstream_ok)(call(arguments=arguments))
    events.emit("rejection", "failure", subject="alice", reason=f"bad token {SECRETS[1]}")
    await log.admin("root", "servers.add", "notes", {"env": {"API_KEY": SECRETS[0]}, "url": "http://u:pw@h/"})
    await log.close()
    stored = json.dumps(rows(engine))
    for secret in [*SECRETS, "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC", "u:pw@"]:
        assert secret not in stored
    assert "[redacted:" in stored


async def test_auth_and_admin_records(engine: Engine, tmp_path: Path) -> None:
    log = make_log(engine, tmp_path)
    await log.start()
    events = AuthEvents()
    events.bind_loop(asyncio.get_running_loop())
    log.subscribe(events)
    events.emit("issuance", "success", subject="alice", client_id="agent-1", token_id="jti-9", reason="grant=code")
    await log.admin("root", "policy.reload", "policies", {"version": "v4"})
    await log.close()
    auth, admin = rows(engine)
    assert (auth["kind"], auth["tool"], auth["outcome"], auth["token_id"]) == ("auth", "issuance", "success", "jti-9")
    assert auth["principal"] == "alice" and auth["client_id"] == "agent-1"
    assert auth["details"] == {"reason": "grant=code"}
    assert (admin["kind"], admin["principal"], admin["method"], admin["tool"]) == (
        "admin",
        "root",
        "policy.reload",
        "policies",
    )
    assert admin["details"]["details"] == {"version": "v4"}


async def test_a_hundred_concurrent_calls_leave_exactly_their_records(engine: Engine, tmp_path: Path) -> None:
    log = make_log(engine, tmp_path)
    await log.start()

    async def slow(request: McpRequest) -> dict[str, Any]:
        await asyncio.sleep(0.01)
        return {"content": [], "isError": False}

    pipeline = Pipeline([log.stage()], slow)
    requests = [call(name=f"t{i}") for i in range(100)]
    await asyncio.gather(*(pipeline(request) for request in requests))
    await log.close()
    records = rows(engine)
    assert len(records) == 200
    assert [r["seq"] for r in records] == list(range(1, 201))
    by_call: dict[str, list[str]] = {}
    for record in records:
        by_call.setdefault(record["call_id"], []).append(record["phase"])
    assert set(by_call) == {request.state["audit_call_id"] for request in requests}
    assert all(phases == ["start", "end"] for phases in by_call.values())
    report = log.verify()
    assert report.ok and report.records == 200 and report.last_checkpoint_seq == 200


async def fill(engine: Engine, tmp_path: Path, count: int = 10) -> AuditLog:
    log = make_log(engine, tmp_path)
    await log.start()
    for i in range(count):
        await log.admin("root", "servers.add", f"s{i}")
    await log.close()
    return log


def execute(engine: Engine, statement: Any) -> None:
    with engine.begin() as connection:
        connection.execute(statement)


async def test_editing_a_row_fails_verify_at_that_row(engine: Engine, tmp_path: Path) -> None:
    log = await fill(engine, tmp_path)
    execute(engine, RECORDS.update().where(RECORDS.c.seq == 5).values(principal="mallory"))
    report = log.verify()
    assert (report.ok, report.kind, report.seq) == (False, "changed", 5)


async def test_deleting_a_row_fails_verify_at_that_row(engine: Engine, tmp_path: Path) -> None:
    log = await fill(engine, tmp_path)
    execute(engine, RECORDS.delete().where(RECORDS.c.seq == 5))
    report = log.verify()
    assert (report.ok, report.kind, report.seq) == (False, "removed", 6)
    assert "5" in report.message


async def test_rewriting_the_chain_is_caught_by_the_checkpoint(engine: Engine, tmp_path: Path) -> None:
    log = await fill(engine, tmp_path)
    records = rows(engine)
    prev = records[3]["hash"]
    for record in records[4:]:  # edit record 5 and re-hash everything after it
        record["principal"] = "mallory" if record["seq"] == 5 else record["principal"]
        record["prev_hash"] = prev
        record["hash"] = prev = record_hash(record)
        execute(engine, RECORDS.update().where(RECORDS.c.seq == record["seq"]).values(**record))
    report = log.verify()
    assert (report.ok, report.kind, report.seq) == (False, "changed", 10)


@pytest.mark.parametrize("valid_hash", [False, True])
async def test_inserting_a_row_fails_verify_at_that_row(engine: Engine, tmp_path: Path, valid_hash: bool) -> None:
    log = await fill(engine, tmp_path)
    last = rows(engine)[-1]
    forged = dict(last, seq=11, id=secrets.token_hex(16), principal="mallory", prev_hash=last["hash"])
    forged["hash"] = record_hash(forged) if valid_hash else "f" * 64
    execute(engine, RECORDS.insert().values(**forged))
    report = log.verify()
    assert (report.ok, report.seq) == (False, 11)
    assert report.kind == ("inserted" if valid_hash else "changed")


async def test_a_cut_off_tail_is_reported(engine: Engine, tmp_path: Path) -> None:
    log = await fill(engine, tmp_path)
    execute(engine, RECORDS.delete().where(RECORDS.c.seq > 7))
    execute(engine, HEAD.update().values(seq=7, hash=rows(engine)[-1]["hash"]))
    report = log.verify()
    assert (report.ok, report.kind, report.seq) == (False, "truncated", 8)


async def test_prune_keeps_the_chain_verifiable(engine: Engine, tmp_path: Path) -> None:
    log = await fill(engine, tmp_path)
    boundary = rows(engine)[5]["time_us"]
    result = prune(log, boundary)
    assert result == {"pruned": 5, "through": 5}
    remaining = rows(engine)
    assert remaining[0]["seq"] == 6 and remaining[-1]["method"] == "audit.prune"
    assert log.verify().ok
    execute(engine, RECORDS.delete().where(RECORDS.c.seq == 6))
    report = log.verify()
    assert (report.ok, report.kind, report.seq) == (False, "removed", 7)


async def test_refuse_mode_never_forwards_an_unrecorded_call(engine: Engine, tmp_path: Path) -> None:
    log = make_log(engine, tmp_path, on_db_failure="refuse")
    await log.start()
    execute(engine, sqlalchemy.text("DROP TABLE audit_head"))  # every append now fails
    forwarded = []

    async def forward(request: McpRequest) -> dict[str, Any]:
        forwarded.append(request)
        return {}

    with pytest.raises(AuditUnavailable):
        await Pipeline([log.stage()], forward)(call())
    assert forwarded == []
    await log.close()


async def test_postgres_outage_mid_load_loses_no_record(postgres_url: str, tmp_path: Path) -> None:
    schema = "audit_" + secrets.token_hex(6)
    admin = sqlalchemy.create_engine(engine_url(postgres_url))
    with admin.begin() as connection:
        connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
    parts = urlsplit(postgres_url)
    proxy = TcpProxy((parts.hostname or "127.0.0.1", parts.port or 5432))
    proxy.start()
    engine = postgres_engine(postgres_url, schema, port=proxy.port)
    try:
        init_db(engine)
        log = make_log(engine, tmp_path, retry_seconds=0.1)
        await log.start()
        pipeline = Pipeline([log.stage()], upstream_ok)
        requests: list[McpRequest] = []
        restored = asyncio.Event()

        async def load() -> None:  # batches of 10 concurrent calls, until well after the outage
            after = 0
            while after < 10:
                batch = [call(name=f"t{len(requests) + i}") for i in range(10)]
                requests.extend(batch)
                await asyncio.gather(*(pipeline(request) for request in batch))
                await asyncio.sleep(0.005)
                after += restored.is_set()

        saw_backlog = False

        async def outage() -> None:
            nonlocal saw_backlog
            await asyncio.sleep(0.2)
            proxy.stop()
            for _ in range(80):  # the journal takes over while the database is away
                await asyncio.sleep(0.01)
                saw_backlog = saw_backlog or log.spooling
            proxy.start()
            restored.set()

        await asyncio.gather(load(), outage())
        await log.close()
        direct = postgres_engine(postgres_url, schema)
        records = rows(direct)
        assert saw_backlog and log.journal.segments() == []
        assert len(records) == 2 * len(requests) and len(requests) >= 200
        assert {r["call_id"] for r in records} == {request.state["audit_call_id"] for request in requests}
        assert log.verify().ok
        direct.dispose()
    finally:
        proxy.stop()
        engine.dispose()
        with admin.begin() as connection:
            connection.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


async def test_search_show_export_and_stats(engine: Engine, tmp_path: Path) -> None:
    log = make_log(engine, tmp_path)
    await log.start()

    async def codemode(request: McpRequest) -> dict[str, Any]:
        inner = Pipeline([log.stage()], upstream_ok)
        for name in ("a", "b"):
            await inner(call(name=name, via_codemode=True, parent_audit_id=request.state["audit_call_id"]))
        return {"content": []}

    run = McpRequest(
        endpoint=Endpoint("codemode", "/codemode/mcp"),
        method="tools/call",
        params={"name": "run", "arguments": {"code": "print(1)"}},
        request_id="r1",
        protocol_version="2025-11-25",
        principal=ALICE,
    )
    await Pipeline([log.stage()], codemode)(run)
    await log.admin("root", "keys.rotate", "keys")
    await log.close()

    tree = show(engine, run.state["audit_call_id"])
    assert tree is not None and tree["records"][0]["arguments"] == {"code": "print(1)"}
    assert [child["records"][0]["tool"] for child in tree["children"]] == ["notes__a", "notes__b"]

    page = search(engine, Filters(principal="alice"), limit=3)
    assert len(page.records) == 3 and page.next_cursor is not None
    rest = search(engine, Filters(principal="alice"), cursor=page.next_cursor, limit=10)
    assert len(rest.records) == 3 and rest.next_cursor is None
    assert len(search(engine, Filters(text="print(1)")).records) == 1  # the start record keeps the code
    assert [r["method"] for r in search(engine, Filters(kind="admin")).records] == ["keys.rotate"]

    lines = list(export(engine, "jsonl"))
    assert len(lines) == 7 and json.loads(lines[0])["seq"] == 1
    csv_text = "".join(export(engine, "csv"))
    assert csv_text.splitlines()[0].startswith("seq,id,call_id") and len(csv_text.splitlines()) == 8

    summary = {(row["server"], row["tool"]): row for row in stats(engine)}
    assert summary[("-", "notes__a")]["calls"] == 1 and summary[("-", "run")]["p95_ms"] is not None


def test_migrations_create_every_table(tmp_path: Path) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from portal.db import metadata
    from portal.migrations import alembic_config, upgrade

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'm.db'}")
    assert upgrade(engine) == head
    assert upgrade(engine) == head  # a second upgrade is a no-op
    tables = set(sqlalchemy.inspect(engine).get_table_names())
    assert set(metadata().tables) <= tables
    with engine.connect() as connection:  # a table or column added without a migration shows here
        drift = compare_metadata(MigrationContext.configure(connection), metadata())
    assert [change for change in drift if change[0] in ("add_table", "add_column")] == []
    log = AuditLog(engine, make_log(engine, tmp_path).settings, master=MASTER)
    log.admin_sync("root", "x", "y")
    assert log.verify().ok
