"""`portal audit tail|search|show|export|verify|prune|stats` and `portal db upgrade`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from portal.audit.log import AuditLog, prune
from portal.audit.query import Filters, after, export, parse_time, search, show, stats
from portal.cli import Commands, _data_options, _json_option, _print_json, _print_table, load_config
from portal.db import create_engine, init_db
from portal.errors import BadRequest, ConfigError

__all__ = ["add_audit_commands", "add_db_commands", "open_audit"]


@contextmanager
def open_audit(args: argparse.Namespace) -> Iterator[AuditLog]:
    settings = load_config(args)
    engine = create_engine(settings)
    try:
        init_db(engine)
        yield AuditLog.from_settings(settings, engine)
    finally:
        engine.dispose()


def _time(text: str) -> int:
    try:
        return parse_time(text)
    except BadRequest as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def _filter_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--user", help="principal (subject)")
    parent.add_argument("--client", help="OAuth client id")
    parent.add_argument("--server")
    parent.add_argument("--tool", help="tool or prompt name, resource URI, admin target")
    parent.add_argument("--decision", help="allow or deny")
    parent.add_argument("--outcome", help="ok, error, denied, timeout, cancelled, success, failure")
    parent.add_argument("--kind", choices=("call", "auth", "admin"))
    parent.add_argument(
        "--since", type=_time, metavar="TIME", help="from this ISO date or time (UTC), or a span ago: 30m, 12h, 7d"
    )
    parent.add_argument("--until", type=_time, metavar="TIME", help="before this ISO date or time (UTC)")
    parent.add_argument("--text", help="free text, in names, arguments and details")
    return parent


def _filters(args: argparse.Namespace) -> Filters:
    return Filters(
        principal=args.user,
        client_id=args.client,
        server=args.server,
        tool=args.tool,
        decision=args.decision,
        outcome=args.outcome,
        kind=args.kind,
        since_us=args.since,
        until_us=args.until,
        text=args.text,
    )


def add_audit_commands(commands: Commands) -> None:
    group = commands.add_parser("audit", help="read and check the audit log", description="The audit log.")
    audit = group.add_subparsers(dest="audit_command", metavar="COMMAND", required=True)
    data, as_json, filters = _data_options(), _json_option(), _filter_options()

    tail = audit.add_parser("tail", parents=[data, as_json], help="the latest records (-f: follow)")
    tail.add_argument("-n", type=int, default=20, help="how many (default 20)")
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new records")
    tail.set_defaults(handler=_tail)

    find = audit.add_parser("search", parents=[data, as_json, filters], help="search records, newest first")
    find.add_argument("--limit", type=int, default=50)
    find.add_argument("--cursor", help="the cursor printed after the previous page")
    find.set_defaults(handler=_search)

    one = audit.add_parser("show", parents=[data, as_json], help="one call, with the tree of a Code Mode run")
    one.add_argument("id", metavar="ID")
    one.set_defaults(handler=_show)

    out = audit.add_parser("export", parents=[data, filters], help="stream records (for SIEM import)")
    out.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    out.set_defaults(handler=_export)

    check = audit.add_parser("verify", parents=[data, as_json], help="check the hash chain and its checkpoints")
    check.set_defaults(handler=_verify)

    cut = audit.add_parser("prune", parents=[data, as_json], help="delete records older than a date")
    cut.add_argument("--before", type=_time, required=True, metavar="DATE")
    cut.set_defaults(handler=_prune)

    summary = audit.add_parser("stats", parents=[data, as_json, filters], help="calls, denials, errors, latency")
    summary.set_defaults(handler=_stats)


def _line(record: dict[str, Any]) -> list[str]:
    what = record.get("tool") or record.get("method") or "-"
    if record["kind"] == "admin":
        what = f"{record.get('method')} {record.get('tool') or ''}".strip()
    return [
        str(record["seq"]),
        record["time"][:23],
        record["kind"] + ("/" + record["phase"] if record["phase"] != "event" else ""),
        record.get("principal") or "-",
        record.get("server") or "-",
        str(what),
        record.get("outcome") or "-",
        record["call_id"],
    ]


HEADERS = ["SEQ", "TIME", "KIND", "USER", "SERVER", "WHAT", "OUTCOME", "CALL"]


def _print_records(records: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        for record in records:
            print(json.dumps(record, ensure_ascii=False))
    elif records:
        _print_table(HEADERS, [_line(record) for record in records])


def _tail(args: argparse.Namespace) -> int:
    with open_audit(args) as log:
        records = list(reversed(search(log.engine, limit=args.n).records))
        _print_records(records, args.json)
        last = records[-1]["seq"] if records else 0
        while args.follow:
            time.sleep(1.0)
            more = after(log.engine, last)
            if more:
                _print_records(more, args.json)
                sys.stdout.flush()
                last = more[-1]["seq"]
    return 0


def _search(args: argparse.Namespace) -> int:
    with open_audit(args) as log:
        page = search(log.engine, _filters(args), cursor=args.cursor, limit=args.limit)
    if args.json:
        _print_json({"records": page.records, "next_cursor": page.next_cursor})
        return 0
    _print_records(page.records, False)
    if page.next_cursor:
        print(f"more: --cursor {page.next_cursor}")
    return 0


def _print_tree(node: dict[str, Any], depth: int) -> None:
    for record in node["records"]:
        print("  " * depth + "  ".join(_line(record)))
        if depth == 0:
            for key in ("arguments", "details", "decision", "policy_ids", "result_size", "result_hash", "latency_us"):
                if record.get(key) not in (None, [], {}):
                    print(f"    {key}: {json.dumps(record[key], ensure_ascii=False)}")
    for child in node["children"]:
        _print_tree(child, depth + 1)


def _show(args: argparse.Namespace) -> int:
    with open_audit(args) as log:
        node = show(log.engine, args.id)
    if node is None:
        raise ConfigError(f"no audit record {args.id!r}")
    if args.json:
        _print_json(node)
    else:
        _print_tree(node, 0)
    return 0


def _export(args: argparse.Namespace) -> int:
    with open_audit(args) as log:
        for chunk in export(log.engine, args.format, _filters(args)):
            sys.stdout.write(chunk)
    return 0


def _verify(args: argparse.Namespace) -> int:
    with open_audit(args) as log:
        report = log.verify()
    if args.json:
        _print_json(report.as_dict())
    else:
        status = "ok" if report.ok else f"FAILED ({report.kind} at seq {report.seq})"
        print(f"{status}: {report.message}; {report.records} records, {report.checkpoints} checkpoints")
        for warning in report.warnings:
            print(f"warning: {warning}")
    return 0 if report.ok else 1


def _prune(args: argparse.Namespace) -> int:
    with open_audit(args) as log:
        result = prune(log, args.before)
    if args.json:
        _print_json(result)
    else:
        print(
            f"pruned {result['pruned']} records" + (f" (through seq {result['through']})" if result["through"] else "")
        )
    return 0


def _stats(args: argparse.Namespace) -> int:
    with open_audit(args) as log:
        rows = stats(log.engine, _filters(args))
    if args.json:
        _print_json(rows)
        return 0
    table = [
        [
            row["server"],
            row["tool"],
            str(row["calls"]),
            str(row["denials"]),
            str(row["errors"]),
            "-" if row["p50_ms"] is None else f"{row['p50_ms']:.1f}",
            "-" if row["p95_ms"] is None else f"{row['p95_ms']:.1f}",
        ]
        for row in rows
    ]
    _print_table(["SERVER", "TOOL", "CALLS", "DENIALS", "ERRORS", "P50 MS", "P95 MS"], table)
    return 0


def add_db_commands(commands: Commands) -> None:
    group = commands.add_parser("db", help="the portal's database", description="The portal's database.")
    db = group.add_subparsers(dest="db_command", metavar="COMMAND", required=True)
    upgrade = db.add_parser("upgrade", parents=[_data_options()], help="apply schema migrations (Alembic)")
    upgrade.add_argument("--revision", default="head", help="target revision (default head)")
    upgrade.set_defaults(handler=_upgrade)


def _upgrade(args: argparse.Namespace) -> int:
    from portal.migrations import upgrade

    settings = load_config(args)
    engine = create_engine(settings)
    try:
        revision = upgrade(engine, args.revision)
    finally:
        engine.dispose()
    print(f"database at revision {revision}")
    return 0
