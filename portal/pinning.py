"""Tool pinning and quarantine (issue 7): a tool that changes upstream is held until an operator looks.

"When a server is first synced, each tool's definition (name, description, schemas,
annotations) is hashed and pinned. A tool whose definition changes upstream is
quarantined: hidden and not callable until an operator reviews it. New tools of a known
server wait for approval unless the server is set to trust new tools." A server that
quietly rewrites a tool's description after it was trusted (a "rug pull") thus changes
nothing a model sees until a person has read the new text (`portal servers diff`) and
accepted it (`portal servers approve`).

Each (server, tool) has one row in `tool_pins`, in one of three states:

- `pinned`: `pinned` holds the accepted definition (canonical JSON, RFC 8785) and its
  SHA-256. The tool is offered while the server lists exactly that definition.
- `quarantined`: the server lists a different definition (`current`); the tool is hidden
  and not callable. If the server goes back to the pinned definition, it is pinned again.
- `pending`: a tool first seen after the server's first sync (unless the server has
  `trust_new_tools`), or one whose description the scan flagged (`portal.scan`), even at
  the first sync; `current` holds it, `pinned` is empty.

A tool the server stops listing keeps its row, so that it cannot come back changed unseen.
Rows are shared by replicas and the CLI through the database. Every change of a server's
rows bumps that server's `revision` in `tool_pin_servers`, which running portals poll
(`ServerSet`), so an approval made with the CLI reaches them within a poll interval.

Methods are synchronous; the async portal calls them through a worker thread.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, get_args

import orjson
from sqlalchemy import JSON, DateTime, Text
from sqlalchemy.engine import Engine
from sqlmodel import Field, Session, SQLModel, col, select

from portal.audit.canonical import canonical_json
from portal.db import insert_for
from portal.errors import PortalError
from portal.scan import Flag, scan_definition

__all__ = [
    "DEFINITION_KEYS",
    "PIN_STATES",
    "PinChange",
    "PinError",
    "PinState",
    "PinStore",
    "Reconciled",
    "ToolPin",
    "ToolPinRow",
    "ToolPinServerRow",
    "UnknownToolPin",
    "canonical_definition",
    "tool_definition",
]

PinState = Literal["pinned", "quarantined", "pending"]
PIN_STATES: tuple[str, ...] = get_args(PinState)

DEFINITION_KEYS = ("name", "title", "description", "inputSchema", "outputSchema", "annotations")
"""What a pin covers: everything of a tool a model reads or a client decides on. `_meta`, icons
and the like are left out, so that a server changing them does not quarantine its tools."""


class PinError(PortalError):
    """A pin operation that cannot be done."""

    code = "tool_pin_error"
    http_status = 400


class UnknownToolPin(PinError):
    """`approve` named a tool the server has never listed."""

    code = "unknown_tool_pin"
    http_status = 404


def _now() -> datetime:
    return datetime.now(UTC)


class ToolPinRow(SQLModel, table=True):
    """One tool of one server, its accepted definition and, when it differs, the one last listed."""

    __tablename__ = "tool_pins"

    server: str = Field(primary_key=True, max_length=32)
    tool: str = Field(primary_key=True, max_length=255)
    state: str = Field(max_length=16)
    pinned: str | None = Field(default=None, sa_type=Text)
    """The accepted definition, canonical JSON; None while the tool is pending."""
    pinned_sha256: str | None = Field(default=None, max_length=64)
    current: str | None = Field(default=None, sa_type=Text)
    """The definition last listed, when it differs from `pinned` (quarantined, pending)."""
    current_sha256: str | None = Field(default=None, max_length=64)
    flags: list[dict[str, str]] = Field(default_factory=list, sa_type=JSON)
    """What the scan found in the definition awaiting approval (or in the pinned one)."""
    first_seen_at: datetime = Field(default_factory=_now, sa_type=DateTime(timezone=True))
    pinned_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    changed_at: datetime = Field(default_factory=_now, sa_type=DateTime(timezone=True))


class ToolPinServerRow(SQLModel, table=True):
    """Per server: whether its first sync happened, and a revision bumped by every change of its pins."""

    __tablename__ = "tool_pin_servers"

    server: str = Field(primary_key=True, max_length=32)
    revision: int = 0
    synced_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))


def tool_definition(tool: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a listed tool that a pin covers."""
    return {key: tool[key] for key in DEFINITION_KEYS if key in tool and tool[key] is not None}


def canonical_definition(tool: Mapping[str, Any]) -> tuple[str, str]:
    """The canonical JSON of a tool's definition and its SHA-256 (hex)."""
    encoded = canonical_json(tool_definition(tool))
    return encoded.decode(), hashlib.sha256(encoded).hexdigest()


@dataclass(frozen=True)
class ToolPin:
    """A pin as the CLI shows it."""

    server: str
    tool: str
    state: PinState
    pinned: dict[str, Any] | None
    current: dict[str, Any] | None
    pinned_sha256: str | None
    current_sha256: str | None
    flags: tuple[Flag, ...]
    first_seen_at: datetime
    pinned_at: datetime | None
    changed_at: datetime


@dataclass(frozen=True)
class PinChange:
    """One tool whose pin a reconcile or an approval changed."""

    tool: str
    state: PinState
    before: PinState | None
    """None for a tool seen for the first time."""
    flags: tuple[Flag, ...] = ()


@dataclass(frozen=True)
class Reconciled:
    """What a server's listing comes to once compared with its pins."""

    visible: frozenset[str]
    """Tools offered to clients: pinned, and listed with exactly the pinned definition."""
    held: Mapping[str, PinState] = field(default_factory=dict)
    """Listed tools that are not offered, and why."""
    changes: tuple[PinChange, ...] = ()
    revision: int = 0
    """The server's pin revision after this reconcile."""
    first_sync: bool = False


class PinStore:
    """The pins of every server, in the portal's database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # Reading

    def revisions(self) -> dict[str, int]:
        """Each server's pin revision; one small query, cheap enough to poll every few seconds."""
        with Session(self.engine) as session:
            return {row.server: row.revision for row in session.exec(select(ToolPinServerRow))}

    def pins(self, server: str) -> list[ToolPin]:
        """Every pin of `server`, by tool name."""
        with Session(self.engine) as session:
            rows = session.exec(
                select(ToolPinRow).where(col(ToolPinRow.server) == server).order_by(col(ToolPinRow.tool))
            ).all()
        return [_to_pin(row) for row in rows]

    def counts(self) -> dict[str, dict[str, int]]:
        """Per server, how many tools are in each state, and how many carry flags."""
        out: dict[str, dict[str, int]] = {}
        with Session(self.engine) as session:
            for row in session.exec(select(ToolPinRow)):
                counts = out.setdefault(row.server, {state: 0 for state in (*PIN_STATES, "flagged")})
                counts[row.state] += 1
                counts["flagged"] += bool(row.flags)
        return out

    # Changing

    def reconcile(self, server: str, tools: Iterable[Mapping[str, Any]], *, trust_new_tools: bool) -> Reconciled:
        """Compare a server's listed tools with its pins, record what is new or changed, and say what to offer.

        The first sync of a server pins every tool it lists (trust on first use); later, new
        tools are pending unless `trust_new_tools`, changed ones quarantined. A flagged tool
        is never pinned without an operator.
        """
        listed = {tool["name"]: tool for tool in tools}
        unchanged = self._unchanged(server, listed, trust_new_tools)
        if unchanged is not None:
            return unchanged
        with Session(self.engine) as session:
            marker = self._lock(session, server)
            first = marker.synced_at is None
            rows = {row.tool: row for row in session.exec(select(ToolPinRow).where(col(ToolPinRow.server) == server))}
            now = _now()
            visible: set[str] = set()
            held: dict[str, PinState] = {}
            changes: list[PinChange] = []
            touched = False
            for name, tool in listed.items():
                text, digest = canonical_definition(tool)
                row = rows.get(name)
                before: PinState | None = None if row is None else row.state  # type: ignore[assignment]
                if row is None:
                    flags = scan_definition(tool_definition(tool))
                    row = ToolPinRow(server=server, tool=name, state="pending", first_seen_at=now, changed_at=now)
                    if (first or trust_new_tools) and not flags:
                        _pin(row, text, digest, flags, now)
                    else:
                        _hold(row, "pending", text, digest, flags, now)
                elif row.pinned_sha256 == digest:
                    if row.state == "pinned":
                        _offer(visible, held, row)
                        continue
                    # The server went back to the accepted definition: that one may be offered again.
                    _pin(row, text, digest, scan_definition(tool_definition(tool)), now)
                elif row.current_sha256 != digest:
                    flags = scan_definition(tool_definition(tool))
                    if row.pinned is None and trust_new_tools and not flags:
                        _pin(row, text, digest, flags, now)
                    else:
                        _hold(row, "quarantined" if row.pinned is not None else "pending", text, digest, flags, now)
                elif row.state == "pending" and trust_new_tools and not row.flags:
                    # The server has been set to trust new tools since this one arrived.
                    _pin(row, text, digest, [], now)
                else:
                    _offer(visible, held, row)
                    continue
                session.add(row)
                touched = True
                if row.state != before:
                    changes.append(
                        PinChange(name, row.state, before, tuple(Flag.from_mapping(f) for f in row.flags))  # type: ignore[arg-type]
                    )
                _offer(visible, held, row)
            if first:
                marker.synced_at = now
            if touched:
                marker.revision += 1
            session.add(marker)
            session.commit()
            revision = marker.revision
        return Reconciled(frozenset(visible), held, tuple(changes), revision, first)

    def approve(self, server: str, tools: Sequence[str] = ()) -> list[PinChange]:
        """Pin the definition awaiting approval of `tools` (default: every held tool of `server`).

        Naming a tool that is already pinned changes nothing; naming one the server never
        listed raises `UnknownToolPin`. Returns the tools that were pinned.
        """
        with Session(self.engine) as session:
            marker = self._lock(session, server)
            rows = {row.tool: row for row in session.exec(select(ToolPinRow).where(col(ToolPinRow.server) == server))}
            missing = [name for name in tools if name not in rows]
            if missing:
                raise UnknownToolPin(
                    f"server '{server}' has no tool {', '.join(repr(m) for m in missing)} (see `portal servers diff`)",
                    server=server,
                )
            chosen = [rows[name] for name in dict.fromkeys(tools)] if tools else list(rows.values())
            now = _now()
            approved: list[PinChange] = []
            for row in chosen:
                if row.state == "pinned" or row.current is None or row.current_sha256 is None:
                    continue
                before: PinState = row.state  # type: ignore[assignment]
                _pin(row, row.current, row.current_sha256, list(row.flags), now)
                session.add(row)
                approved.append(PinChange(row.tool, "pinned", before, tuple(Flag.from_mapping(f) for f in row.flags)))
            if approved:
                marker.revision += 1
                session.add(marker)
            session.commit()
        return approved

    def forget(self, server: str) -> None:
        """Drop every pin of `server` (its next sync is a first sync again)."""
        with Session(self.engine) as session:
            self._lock(session, server)
            for row in session.exec(select(ToolPinRow).where(col(ToolPinRow.server) == server)):
                session.delete(row)
            marker = session.get(ToolPinServerRow, server)
            if marker is not None:
                # No new revision: running portals have nothing to re-list for a server being removed
                # (and re-listing it now would pin it again as a first sync).
                marker.synced_at = None
                session.add(marker)
            session.commit()

    # Internals

    def _unchanged(
        self, server: str, listed: Mapping[str, Mapping[str, Any]], trust_new_tools: bool
    ) -> Reconciled | None:
        """The common case without a write: every listed tool is known and as it was last time.

        None when something would change; the caller then takes the lock and looks again.
        """
        with Session(self.engine) as session:
            marker = session.get(ToolPinServerRow, server)
            if marker is None or marker.synced_at is None:
                return None
            rows = {row.tool: row for row in session.exec(select(ToolPinRow).where(col(ToolPinRow.server) == server))}
        visible: set[str] = set()
        held: dict[str, PinState] = {}
        for name, tool in listed.items():
            row = rows.get(name)
            if row is None:
                return None
            digest = canonical_definition(tool)[1]
            if row.state == "pinned" and row.pinned_sha256 == digest:
                visible.add(name)
            elif row.state != "pinned" and row.current_sha256 == digest:
                if row.state == "pending" and trust_new_tools and not row.flags:
                    return None
                held[name] = row.state  # type: ignore[assignment]  # written from a PinState
            else:
                return None
        return Reconciled(frozenset(visible), held, (), marker.revision, False)

    def _lock(self, session: Session, server: str) -> ToolPinServerRow:
        """The server's marker row, locked for the rest of the transaction.

        Replicas, and the CLI, reconcile and approve concurrently: without the lock, an approval
        landing between a reconcile's read and its write would be overwritten. The insert takes
        SQLite's write lock at once; `FOR UPDATE` takes the row lock on PostgreSQL.
        """
        insert = insert_for(self.engine, ToolPinServerRow).values(server=server, revision=0, synced_at=None)
        session.exec(insert.on_conflict_do_nothing(index_elements=["server"]))
        marker = session.exec(
            select(ToolPinServerRow).where(col(ToolPinServerRow.server) == server).with_for_update()
        ).one()
        return marker


def _offer(visible: set[str], held: dict[str, PinState], row: ToolPinRow) -> None:
    if row.state == "pinned":
        visible.add(row.tool)
    else:
        held[row.tool] = row.state  # type: ignore[assignment]  # written from a PinState


def _pin(row: ToolPinRow, text: str, digest: str, flags: Sequence[Flag | dict[str, str]], now: datetime) -> None:
    row.state = "pinned"
    row.pinned, row.pinned_sha256 = text, digest
    row.current = row.current_sha256 = None
    # Kept once approved: `list` and `diff` still say what the operator accepted.
    row.flags = [flag.to_mapping() if isinstance(flag, Flag) else dict(flag) for flag in flags]
    row.pinned_at = row.changed_at = now


def _hold(row: ToolPinRow, state: PinState, text: str, digest: str, flags: list[Flag], now: datetime) -> None:
    row.state = state
    row.current, row.current_sha256 = text, digest
    row.flags = [flag.to_mapping() for flag in flags]
    row.changed_at = now


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes even for timezone-aware columns; they were written in UTC.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _to_pin(row: ToolPinRow) -> ToolPin:
    return ToolPin(
        server=row.server,
        tool=row.tool,
        state=row.state,  # type: ignore[arg-type]  # written from a PinState
        pinned=orjson.loads(row.pinned) if row.pinned is not None else None,
        current=orjson.loads(row.current) if row.current is not None else None,
        pinned_sha256=row.pinned_sha256,
        current_sha256=row.current_sha256,
        flags=tuple(Flag.from_mapping(flag) for flag in row.flags or ()),
        first_seen_at=_aware(row.first_seen_at),
        pinned_at=_aware(row.pinned_at) if row.pinned_at is not None else None,
        changed_at=_aware(row.changed_at),
    )
