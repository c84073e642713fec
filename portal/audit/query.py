"""Reading the audit log: search (paginated by cursor), show (with a Code Mode run's tree), export, stats.

The admin API and the CLI call these. Pages go newest first; the cursor is the `seq` of the
last record of a page, opaque to callers.
"""

from __future__ import annotations

import csv
import io
import json
import re
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Text, cast, or_, select
from sqlalchemy.engine import Engine

from portal.audit.chain import RECORDS
from portal.errors import BadRequest

__all__ = ["CSV_FIELDS", "Filters", "Page", "export", "iso", "parse_time", "search", "show", "stats"]

CSV_FIELDS = [column.name for column in RECORDS.columns]


def iso(time_us: int) -> str:
    return datetime.fromtimestamp(time_us / 1_000_000, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


_RELATIVE = re.compile(r"(\d+)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(text: str, *, now: float | None = None) -> int:
    """Unix microseconds of an ISO 8601 date or time (UTC unless it says otherwise), or of a span
    before now (`30m`, `12h`, `7d`, `2w`). `BadRequest` otherwise."""
    relative = _RELATIVE.fullmatch(text.strip())
    if relative:
        seconds = int(relative.group(1)) * _UNIT_SECONDS[relative.group(2)]
        return int(((time.time() if now is None else now) - seconds) * 1_000_000)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(
            f"not a date, time or span: {text!r} (use e.g. 2026-01-31, 2026-01-31T12:00:00Z or 7d)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1_000_000)


FILTER_PARAMS = ("user", "client", "server", "tool", "decision", "outcome", "kind", "since", "until", "text")
"""The filters by the names `portal audit search` options and the admin API's query parameters use."""


@dataclass(frozen=True)
class Filters:
    principal: str | None = None
    client_id: str | None = None
    server: str | None = None
    tool: str | None = None
    decision: str | None = None
    outcome: str | None = None
    kind: str | None = None
    since_us: int | None = None
    until_us: int | None = None
    text: str | None = None

    @classmethod
    def from_params(cls, params: Any) -> Filters:
        """Filters from a mapping with the keys of `FILTER_PARAMS` (times as `parse_time` reads them)."""

        def text(name: str) -> str | None:
            value = params.get(name)
            return str(value) if value not in (None, "") else None

        since, until = text("since"), text("until")
        kind = text("kind")
        if kind is not None and kind not in ("call", "auth", "admin"):
            raise BadRequest("kind must be call, auth or admin")
        return cls(
            principal=text("user"),
            client_id=text("client"),
            server=text("server"),
            tool=text("tool"),
            decision=text("decision"),
            outcome=text("outcome"),
            kind=kind,
            since_us=parse_time(since) if since else None,
            until_us=parse_time(until) if until else None,
            text=text("text"),
        )

    def apply(self, query: Any) -> Any:
        c = RECORDS.c
        for name, column in (
            ("principal", c.principal),
            ("client_id", c.client_id),
            ("server", c.server),
            ("tool", c.tool),
            ("decision", c.decision),
            ("outcome", c.outcome),
            ("kind", c.kind),
        ):
            value = getattr(self, name)
            if value is not None:
                query = query.where(column == value)
        if self.since_us is not None:
            query = query.where(c.time_us >= self.since_us)
        if self.until_us is not None:
            query = query.where(c.time_us < self.until_us)
        if self.text:
            pattern = "%" + self.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            query = query.where(
                or_(
                    *(
                        column.ilike(pattern, escape="\\")
                        for column in (
                            c.principal,
                            c.client_id,
                            c.server,
                            c.tool,
                            c.method,
                            c.error_code,
                            c.request_id,
                            cast(c.arguments, Text),
                            cast(c.details, Text),
                        )
                    )
                )
            )
        return query


@dataclass
class Page:
    records: list[dict[str, Any]]
    next_cursor: str | None


def _row(row: Any) -> dict[str, Any]:
    record = dict(row._asdict())
    record["time"] = iso(record["time_us"])
    return record


def search(engine: Engine, filters: Filters = Filters(), *, cursor: str | None = None, limit: int = 50) -> Page:
    """Records matching `filters`, newest first, `limit` at a time."""
    query = filters.apply(select(RECORDS))
    if cursor:
        if not cursor.isdigit():
            raise BadRequest("not a cursor this search returned")
        query = query.where(RECORDS.c.seq < int(cursor))
    query = query.order_by(RECORDS.c.seq.desc()).limit(limit + 1)
    with engine.connect() as connection:
        rows = [_row(row) for row in connection.execute(query)]
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(rows, str(rows[-1]["seq"]) if more and rows else None)


def after(engine: Engine, seq: int, *, limit: int = 500) -> list[dict[str, Any]]:
    """Records after `seq`, oldest first (`tail -f`)."""
    query = select(RECORDS).where(RECORDS.c.seq > seq).order_by(RECORDS.c.seq).limit(limit)
    with engine.connect() as connection:
        return [_row(row) for row in connection.execute(query)]


def show(engine: Engine, ident: str) -> dict[str, Any] | None:
    """The call (or event) `ident` (a record id or call id): its records and the tree of its children."""
    with engine.connect() as connection:
        first = connection.execute(
            select(RECORDS).where(or_(RECORDS.c.id == ident, RECORDS.c.call_id == ident)).limit(1)
        ).first()
        if first is None:
            return None
        return _tree(connection, first.call_id, depth=0)


def _tree(connection: Any, call_id: str, depth: int) -> dict[str, Any]:
    records = [_row(row) for row in connection.execute(select(RECORDS).where(RECORDS.c.call_id == call_id))]
    records.sort(key=lambda record: record["seq"])
    node: dict[str, Any] = {"call_id": call_id, "records": records, "children": []}
    if depth >= 8 or not records:
        return node
    start = records[0]
    keys = [call_id]
    if start.get("request_id"):
        keys.append(start["request_id"])
    end_us = records[-1]["time_us"] if len(records) > 1 else None
    query = select(RECORDS.c.call_id).where(RECORDS.c.parent_id.in_(keys), RECORDS.c.time_us >= start["time_us"])
    if end_us is not None:
        query = query.where(RECORDS.c.time_us <= end_us)
    children = []
    for child in dict.fromkeys(connection.execute(query.order_by(RECORDS.c.seq)).scalars()):
        if child != call_id:
            children.append(_tree(connection, child, depth + 1))
    node["children"] = children
    return node


def export(engine: Engine, fmt: str, filters: Filters = Filters(), *, batch: int = 1000) -> Iterator[str]:
    """Stream matching records oldest first, as JSON lines or CSV (header first)."""
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow([*CSV_FIELDS, "time"])
        yield buffer.getvalue()
    after_seq = -1
    while True:
        query = filters.apply(select(RECORDS)).where(RECORDS.c.seq > after_seq).order_by(RECORDS.c.seq).limit(batch)
        with engine.connect() as connection:
            rows = [_row(row) for row in connection.execute(query)]
        if not rows:
            return
        for record in rows:
            if fmt == "csv":
                buffer = io.StringIO()
                csv.writer(buffer).writerow(
                    [
                        json.dumps(record[name]) if isinstance(record[name], dict | list) else record[name]
                        for name in [*CSV_FIELDS, "time"]
                    ]
                )
                yield buffer.getvalue()
            else:
                yield json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
        after_seq = rows[-1]["seq"]


def _percentile(values: list[int], fraction: float) -> float | None:
    if not values:
        return None
    values.sort()
    index = min(len(values) - 1, max(0, round(fraction * (len(values) - 1))))
    return values[index] / 1000


def stats(engine: Engine, filters: Filters = Filters()) -> list[dict[str, Any]]:
    """Per server and tool: calls, denials, errors, latency p50/p95 (ms), from the calls' end records."""
    c = RECORDS.c
    query = filters.apply(select(c.server, c.tool, c.method, c.outcome, c.latency_us)).where(
        c.kind == "call", c.phase == "end"
    )
    groups: dict[tuple[str, str], dict[str, Any]] = defaultdict(
        lambda: {"calls": 0, "denials": 0, "errors": 0, "latencies": []}
    )
    with engine.connect() as connection:
        for row in connection.execute(query).yield_per(5000):
            group = groups[(row.server or "-", row.tool or row.method or "-")]
            group["calls"] += 1
            if row.outcome == "denied":
                group["denials"] += 1
            elif row.outcome in ("error", "timeout", "cancelled"):
                group["errors"] += 1
            if row.latency_us is not None:
                group["latencies"].append(row.latency_us)
    result = []
    for (server, tool), group in sorted(groups.items()):
        latencies = group.pop("latencies")
        result.append(
            {
                "server": server,
                "tool": tool,
                **group,
                "p50_ms": _percentile(latencies, 0.5),
                "p95_ms": _percentile(latencies, 0.95),
            }
        )
    return result
