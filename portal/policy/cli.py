"""`portal policy check|test|explain|replay|schema` and `portal approvals list|approve|deny`.

The policy commands need the tools the portal would generate actions for; offline they
read them from `--tools FILE` (a JSON object `{server: [tool, ...]}` as `tools/list` gives
them), by default `tools.json` in the policy folder. `policy replay` (`portal.policy.replay`)
also takes the tools of servers that file does not name from the audit log.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from portal.catalog import Catalog, ServerCatalog
from portal.errors import PortalError

__all__ = ["add_commands", "catalog_from_file"]


def catalog_from_file(path: Path) -> Catalog:
    catalog = Catalog()
    if path.is_file():
        for server, tools in json.loads(path.read_text(encoding="utf-8")).items():
            entry = ServerCatalog(server)
            entry.items["tools"] = list(tools)
            catalog.replace(entry)
    return catalog


def add_commands(commands: Any) -> None:
    from portal.cli import _data_options, _json_option

    group = commands.add_parser("policy", help="check, test and explain the Cedar policies")
    sub = group.add_subparsers(dest="policy_command", metavar="COMMAND", required=True)
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--policies", metavar="DIR", default="policies", help="the policy folder (default: policies)")
    where.add_argument("--tools", metavar="FILE", help="tools by server, JSON (default: DIR/tools.json)")
    sub.add_parser("check", parents=[where], help="parse and validate the policies").set_defaults(handler=_check)
    sub.add_parser("test", parents=[where], help="run DIR/tests/*.toml").set_defaults(handler=_test)
    sub.add_parser("schema", parents=[where], help="print the full schema in force (JSON)").set_defaults(
        handler=_schema
    )
    explain = sub.add_parser("explain", parents=[where, _json_option()], help="decide one call and say why")
    explain.add_argument("--user", required=True)
    explain.add_argument("--group", action="append", default=[], help="a group of the user (repeatable)")
    explain.add_argument("--tool", required=True, help="{server}_{tool}")
    explain.add_argument("--args", default="{}", help="the arguments, JSON")
    explain.add_argument("--codemode", action="store_true", help="as an inner call of Code Mode")
    explain.set_defaults(handler=_explain)
    replay = sub.add_parser(
        "replay",
        parents=[_data_options(), _json_option()],
        help="re-decide recorded calls under a policy set and list what would flip",
    )
    replay.add_argument("--since", default="7d", help="from this time or span before now (default: 7d)")
    replay.add_argument("--until", help="up to this time or span before now (default: now)")
    replay.add_argument("--policies", metavar="DIR", help="the candidate policy folder (default: policies_dir)")
    replay.add_argument("--tools", metavar="FILE", help="tools by server, JSON (default: DIR/tools.json)")
    replay.add_argument("--all", action="store_true", help="list every call, not only flips and undecidables")
    replay.set_defaults(handler=_replay)

    approvals = commands.add_parser("approvals", help="calls waiting for an operator")
    asub = approvals.add_subparsers(dest="approvals_command", metavar="COMMAND", required=True)
    listing = asub.add_parser("list", parents=[_data_options(), _json_option()], help="pending approvals")
    listing.add_argument("--all", action="store_true", help="include decided and expired ones")
    listing.set_defaults(handler=_approvals_list)
    for name, approve in (("approve", True), ("deny", False)):
        decide = asub.add_parser(name, parents=[_data_options()], help=f"{name} a pending call")
        decide.add_argument("id")
        decide.set_defaults(handler=_approvals_decide, approve=approve)


def _engine(args: argparse.Namespace) -> Any:
    from portal.policy.engine import PolicyEngine

    directory = Path(args.policies)
    tools = Path(args.tools) if args.tools else directory / "tools.json"
    return PolicyEngine(directory, catalog_from_file(tools), poll_interval=0)


def _check(args: argparse.Namespace) -> int:
    from portal.policy.loader import PolicyError, validation_problems

    try:
        engine = _engine(args)
    except PolicyError as exc:
        for problem in exc.problems:
            print(problem)
        return 1
    # A running portal tolerates actions its servers do not list right now; against the declared
    # catalog (tools.json), an action it does not have is a mistake worth failing on.
    unknown: list[str] = []
    validation_problems(engine.snapshot.loaded, engine.snapshot.schema, unknown=unknown)
    for problem in unknown:
        print(problem)
    if unknown:
        return 1
    print(f"ok: {len(engine.snapshot.loaded.sources)} policies, version {engine.version}")
    return 0


def _test(args: argparse.Namespace) -> int:
    from portal.policy.testing import run_cases

    engine = _engine(args)
    results = run_cases(engine, Path(args.policies) / "tests")
    for result in results:
        print(f"{'PASS' if result.ok else 'FAIL'}  {result.file}: {result.name}  {'' if result.ok else result.detail}")
    failed = sum(not result.ok for result in results)
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed or not results else 0


def _schema(args: argparse.Namespace) -> int:
    print(json.dumps(_engine(args).snapshot.built.json, indent=2, sort_keys=True))
    return 0


def _explain(args: argparse.Namespace) -> int:
    from portal.policy.engine import Subject

    engine = _engine(args)
    try:
        arguments = json.loads(args.args)
    except json.JSONDecodeError as exc:
        raise PortalError(f"--args is not JSON: {exc}") from exc
    info = engine.snapshot.built.actions.get(args.tool)
    if info is None:
        raise PortalError(f"no tool {args.tool} in the catalog")
    decision = engine.decide(
        Subject(args.user, tuple(args.group)), args.tool, info.server, arguments, via_codemode=args.codemode
    )
    obligations = {key: value for notes in decision.annotations for key, value in notes.items() if key != "id"}
    out = {
        "decision": decision.decision,
        "policy_ids": list(decision.policy_ids),
        "version": decision.version,
        "obligations": obligations,
        "errors": list(decision.errors),
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for key, value in out.items():
            print(f"{key}: {value}")
    return 0


def _replay(args: argparse.Namespace) -> int:
    from portal.audit.query import parse_time
    from portal.cli import load_config
    from portal.db import create_engine, init_db
    from portal.policy.replay import replay

    settings = load_config(args)
    directory = Path(args.policies) if args.policies else settings.resolve_path(settings.policies_dir)
    db = create_engine(settings)
    try:
        init_db(db)
        report = replay(
            db,
            directory,
            since_us=parse_time(args.since),
            until_us=parse_time(args.until) if args.until else None,
            tools_file=args.tools,
        )
    finally:
        db.dispose()
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
        return 0
    calls = [call for call in report.as_dict()["calls"] if args.all or call["status"] not in ("same", "unrecorded")]
    if calls:
        head = f"{'time':27}  {'call id':32}  {'principal':12}  {'server/tool':32}  {'decision':11}"
        print(f"{head}  {'status':14}  policies")
    for call in calls:
        change = f"{call['recorded'] or '-'}->{call['decision'] or '?'}"
        target = f"{call['server'] or '-'}/{call['tool'] or '-'}"
        line = f"{call['time']}  {call['call_id']}  {call['principal']:12}  {target:32}  {change:11}"
        print(f"{line}  {call['status']:14}  {','.join(call['policy_ids']) or '-'}  {call['reason']}".rstrip())
    print(report.summary_line())
    return 0


def _store(args: argparse.Namespace) -> Any:
    from portal.cli import load_config
    from portal.db import create_engine
    from portal.policy.obligations import ApprovalStore

    store = ApprovalStore(create_engine(load_config(args)))
    store.create_table()
    return store


def _approvals_list(args: argparse.Namespace) -> int:
    store = _store(args)
    rows = [row.model_dump() for row in store.list(include_done=args.all)]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print(f"{row['id']}  {row['status']:8}  {row['subject']}  {row['action']}  {row['arguments']}")
    return 0


def _approvals_decide(args: argparse.Namespace) -> int:
    from portal.cli import load_config, record_admin

    store = _store(args)
    row = store.decide(args.id, args.approve)
    details = {"subject": row.subject, "action": row.action, "status": row.status}
    record_admin(
        load_config(args), store.engine, "approvals.approve" if args.approve else "approvals.deny", row.id, details
    )
    print(f"{row.status} {row.id} ({row.subject} {row.action})")
    return 0
