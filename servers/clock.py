"""Clock: time zones over MCP, the demo's remote server.

Tools: `current_time`, `convert_time`, `add_duration`, `list_timezones`, all
read-only. Time zones are IANA names (`Europe/Paris`, `America/New_York`) from
the system's tz database via `zoneinfo`.

The example portal reaches this server over Streamable HTTP, as it would any
remote server; `portal demo` starts it as a companion process:

    python -m servers.clock --http --port 8765 --host 127.0.0.1
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from mcp.server.caching import CacheHint
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from servers.cli import run_server

__all__ = [
    "DurationResult",
    "TimeConversion",
    "TimezoneList",
    "ZonedTime",
    "build_server",
    "main",
    "server",
]

Zone = Annotated[
    str,
    Field(description="IANA time zone name, e.g. 'Europe/Paris', 'America/New_York' or 'UTC'.", max_length=64),
]
Moment = Annotated[
    str | None,
    Field(
        description="ISO 8601 date-time, e.g. '2026-03-29T09:30'. Without an offset it is a wall-clock "
        "time in the given time zone; with one ('+02:00', 'Z') it is that instant. Omit for now.",
        max_length=64,
    ),
]
Amount = Annotated[int, Field(ge=-100_000, le=100_000)]


class ZonedTime(BaseModel):
    """An instant as seen in one time zone."""

    timezone: str
    iso: str = Field(description="RFC 3339 date-time with the zone's UTC offset.")
    date: str = Field(description="YYYY-MM-DD")
    time: str = Field(description="HH:MM:SS")
    weekday: str
    utc_offset: str = Field(description="e.g. '+02:00'")
    abbreviation: str = Field(description="Zone abbreviation in force, e.g. 'CEST'.")
    is_dst: bool = Field(description="Whether daylight saving time is in force.")
    unix: int = Field(description="Seconds since 1970-01-01T00:00:00Z.")


class TimeConversion(BaseModel):
    """One instant in two time zones."""

    source: ZonedTime
    target: ZonedTime
    offset_difference_hours: float = Field(description="Target UTC offset minus source UTC offset, in hours.")
    notes: list[str] = Field(description="How an ambiguous or skipped wall-clock time was read.")


class DurationResult(BaseModel):
    """A start, the time a duration later, and how much real time lies between."""

    start: ZonedTime
    end: ZonedTime
    elapsed_seconds: int = Field(description="Real seconds from start to end (DST changes included).")
    notes: list[str] = Field(description="Adjustments made, e.g. a wall-clock time skipped by a DST change.")


class TimezoneList(BaseModel):
    """Time zone names matching a query."""

    query: str
    total: int = Field(description="How many names matched before the limit.")
    timezones: list[str]


@cache
def _zone_names() -> tuple[str, ...]:
    return tuple(sorted(available_timezones() | {"UTC"}))


def _zone(name: str) -> ZoneInfo:
    """The zone called `name`, or a tool error suggesting close names."""
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError, OSError):
        # ValueError: zoneinfo refuses keys that look like paths ('/etc', '..') and non-TZif files.
        lowered = {zone.lower(): zone for zone in _zone_names()}
        if name.strip().lower() in lowered:
            return ZoneInfo(lowered[name.strip().lower()])
        close = difflib.get_close_matches(name.strip().lower(), list(lowered), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(lowered[c] for c in close)}?" if close else "; list_timezones shows them"
        raise ToolError(f"unknown time zone {name!r}{hint}") from None


def _zoned(moment: datetime, zone: ZoneInfo) -> ZonedTime:
    local = moment.astimezone(zone)
    offset = local.utcoffset() or timedelta(0)
    sign = "-" if offset < timedelta(0) else "+"
    minutes = abs(int(offset.total_seconds())) // 60
    return ZonedTime(
        timezone=zone.key,
        iso=local.isoformat(timespec="seconds"),
        date=local.date().isoformat(),
        time=local.strftime("%H:%M:%S"),
        weekday=local.strftime("%A"),
        utc_offset=f"{sign}{minutes // 60:02d}:{minutes % 60:02d}",
        abbreviation=local.tzname() or "",
        is_dst=bool(local.dst()),
        unix=int(local.timestamp()),
    )


def _exists(local: datetime) -> bool:
    """Whether an aware wall-clock time exists in its zone (not skipped by a DST jump)."""
    zone = local.tzinfo
    assert zone is not None
    return local.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == local.replace(tzinfo=None)


def _parse(moment: str | None, zone: ZoneInfo, now: datetime) -> tuple[datetime, list[str]]:
    """An aware datetime in `zone` for `moment` (now when None), and notes on adjustments."""
    if moment is None or moment.strip().lower() == "now":
        return now.astimezone(zone), []
    try:
        parsed = datetime.fromisoformat(moment.strip())
    except ValueError:
        raise ToolError(f"cannot read {moment!r} as an ISO 8601 date-time, e.g. '2026-03-29T09:30'") from None
    if parsed.tzinfo is not None:
        return parsed.astimezone(zone), []
    local = parsed.replace(tzinfo=zone, fold=0)
    if not _exists(local):
        shifted = local.astimezone(UTC).astimezone(zone)
        note = f"{parsed.isoformat()} does not exist in {zone.key} (DST gap); used {shifted.isoformat()}"
        return shifted, [note]
    if local.replace(fold=1).utcoffset() != local.utcoffset():
        # A wall-clock time repeated when clocks go back: take the first, and say so.
        note = f"{parsed.isoformat()} happens twice in {zone.key} (DST fold); used the first, {local.isoformat()}"
        return local, [note]
    return local, []


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _read_only(title: str) -> ToolAnnotations:
    # Pure computation on the local tz database: read-only, idempotent, closed world.
    return ToolAnnotations(
        title=title, read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False
    )


def build_server(now: Callable[[], datetime] = _utc_now) -> MCPServer[Any]:
    """A clock server reading the time from `now` (an aware datetime); tests pass a fixed one."""
    mcp: MCPServer[Any] = MCPServer(
        "clock",
        title="Clock",
        version="1.0.0",
        instructions="Time zone arithmetic. Time zones are IANA names such as 'Europe/Paris'.",
        cache_hints={"tools/list": CacheHint(ttl_ms=300_000, scope="public")},
    )

    @mcp.tool(title="Current time", annotations=_read_only("Current time"))
    def current_time(timezone: Zone = "UTC") -> ZonedTime:
        """The current date and time in a time zone."""
        return _zoned(now(), _zone(timezone))

    @mcp.tool(title="Convert time", annotations=_read_only("Convert time"))
    def convert_time(from_timezone: Zone, to_timezone: Zone, time: Moment = None) -> TimeConversion:
        """Convert a date-time from one time zone to another (default: now)."""
        source_zone, target_zone = _zone(from_timezone), _zone(to_timezone)
        moment, notes = _parse(time, source_zone, now())
        source, target = _zoned(moment, source_zone), _zoned(moment, target_zone)
        difference = (moment.astimezone(target_zone).utcoffset() or timedelta(0)) - (moment.utcoffset() or timedelta(0))
        return TimeConversion(
            source=source, target=target, offset_difference_hours=difference.total_seconds() / 3600, notes=notes
        )

    @mcp.tool(title="Add duration", annotations=_read_only("Add duration"))
    def add_duration(
        timezone: Zone = "UTC",
        start: Moment = None,
        weeks: Annotated[Amount, Field(description="Calendar weeks to add (negative subtracts).")] = 0,
        days: Annotated[Amount, Field(description="Calendar days to add: same wall-clock time, DST aside.")] = 0,
        hours: Annotated[Amount, Field(description="Elapsed hours to add.")] = 0,
        minutes: Annotated[Amount, Field(description="Elapsed minutes to add.")] = 0,
        seconds: Annotated[Amount, Field(description="Elapsed seconds to add.")] = 0,
    ) -> DurationResult:
        """Add (or subtract) a duration to a date-time in a time zone.

        Weeks and days move the calendar and keep the wall-clock time ("same time next
        Tuesday"); hours, minutes and seconds are real elapsed time, so adding 24 hours
        across a DST change lands an hour off the same wall-clock time.
        """
        zone = _zone(timezone)
        begin, notes = _parse(start, zone, now())
        try:
            # Python adds a timedelta to an aware datetime on the wall clock: calendar semantics.
            calendar = begin
            if weeks or days:
                calendar = (begin + timedelta(weeks=weeks, days=days)).replace(fold=0)
            if not _exists(calendar):
                shifted = calendar.astimezone(UTC).astimezone(zone)
                notes.append(
                    f"{calendar.replace(tzinfo=None).isoformat()} does not exist in {zone.key} (DST gap); "
                    f"used {shifted.isoformat()}"
                )
                calendar = shifted
            # Elapsed time is added in UTC, where every hour is an hour.
            elapsed = timedelta(hours=hours, minutes=minutes, seconds=seconds)
            end = (calendar.astimezone(UTC) + elapsed).astimezone(zone)
        except OverflowError:
            raise ToolError("the result falls outside the years 1-9999") from None
        return DurationResult(
            start=_zoned(begin, zone),
            end=_zoned(end, zone),
            # Subtract in UTC: Python subtracts same-zone datetimes on the wall clock.
            elapsed_seconds=int((end.astimezone(UTC) - begin.astimezone(UTC)).total_seconds()),
            notes=notes,
        )

    @mcp.tool(title="List time zones", annotations=_read_only("List time zones"))
    def list_timezones(
        query: Annotated[
            str, Field(description="Part of a zone name, e.g. 'paris' or 'america/'; empty lists all.", max_length=64)
        ] = "",
        limit: Annotated[int, Field(description="Most names to return.", ge=1, le=1000)] = 50,
    ) -> TimezoneList:
        """Find IANA time zone names containing a text (case-insensitive)."""
        needle = query.strip().lower().replace(" ", "_")
        matches = [zone for zone in _zone_names() if needle in zone.lower()]
        return TimezoneList(query=query, total=len(matches), timezones=matches[:limit])

    return mcp


server = build_server()
"""The clock server; `python -m servers.clock --http` serves it as the demo's remote server."""


def main(argv: list[str] | None = None) -> None:
    """Run the clock server over stdio, or Streamable HTTP with `--http` (default port 8765)."""
    run_server(
        server,
        argv,
        prog="python -m servers.clock",
        description="Clock MCP server: current time, conversions and date arithmetic across time zones.",
        default_port=8765,
    )


if __name__ == "__main__":
    main()
