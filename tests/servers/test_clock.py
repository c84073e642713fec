"""The clock server: time zone tools in process with a fixed clock, and as a real HTTP server."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from mcp import Client
from mcp.server.mcpserver import MCPServer
from servers_testing import error_text, ok

from servers import clock as clock_module
from servers.clock import build_server

Connect = Callable[[], Client]

NOW = datetime(2026, 3, 28, 12, 0, 0, tzinfo=UTC)
"""A Saturday, the day before clocks in the EU go forward (2026-03-29 01:00 UTC)."""

TOOLS = {"current_time", "convert_time", "add_duration", "list_timezones"}


@pytest.fixture
def connect(era: str) -> Connect:
    """Opens a client on a clock server stopped at `NOW`, in the test's era (enter it in the test's task)."""
    server = build_server(lambda: NOW)
    return lambda: Client(server, mode=era)


async def call(connect: Connect, tool: str, **arguments: Any) -> dict[str, Any]:
    async with connect() as client:
        return ok(await client.call_tool(tool, arguments))


async def fail(connect: Connect, tool: str, **arguments: Any) -> str:
    async with connect() as client:
        return error_text(await client.call_tool(tool, arguments))


async def test_every_tool_is_read_only_with_described_inputs_and_an_output_schema(connect: Connect) -> None:
    async with connect() as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(tools) == TOOLS
    for tool in tools.values():
        assert tool.description
        assert tool.output_schema is not None and tool.output_schema["type"] == "object"
        assert tool.annotations is not None and tool.annotations.read_only_hint is True
        assert tool.annotations.idempotent_hint is True and tool.annotations.open_world_hint is False
        for name, prop in tool.input_schema.get("properties", {}).items():
            assert prop.get("description"), f"{tool.name}.{name} has no description"
    assert tools["convert_time"].input_schema["required"] == ["from_timezone", "to_timezone"]


async def test_current_time_is_given_in_the_requested_zone(connect: Connect) -> None:
    paris = await call(connect, "current_time", timezone="Europe/Paris")
    assert paris == {
        "timezone": "Europe/Paris",
        "iso": "2026-03-28T13:00:00+01:00",
        "date": "2026-03-28",
        "time": "13:00:00",
        "weekday": "Saturday",
        "utc_offset": "+01:00",
        "abbreviation": "CET",
        "is_dst": False,
        "unix": int(NOW.timestamp()),
    }
    assert (await call(connect, "current_time"))["iso"] == "2026-03-28T12:00:00+00:00"
    kolkata = await call(connect, "current_time", timezone="Asia/Kolkata")
    assert kolkata["utc_offset"] == "+05:30" and kolkata["time"] == "17:30:00"


async def test_zone_names_are_matched_without_regard_to_case(connect: Connect) -> None:
    assert (await call(connect, "current_time", timezone="america/new_york"))["timezone"] == "America/New_York"


@pytest.mark.parametrize(
    ("zone", "expected"),
    [
        ("Europe/Pariss", "did you mean Europe/Paris"),
        ("Mars/Olympus_Mons", "list_timezones shows them"),
        ("../../etc/passwd", "unknown time zone"),
        ("/etc/localtime", "unknown time zone"),
        ("", "unknown time zone"),
    ],
)
async def test_an_unknown_zone_is_a_tool_error_with_suggestions(connect: Connect, zone: str, expected: str) -> None:
    assert expected in await fail(connect, "current_time", timezone=zone)


async def test_convert_time_reads_a_naive_time_as_wall_clock_in_the_source_zone(connect: Connect) -> None:
    result = await call(
        connect, "convert_time", from_timezone="America/New_York", to_timezone="Asia/Tokyo", time="2026-07-01T09:00"
    )
    assert result["source"]["iso"] == "2026-07-01T09:00:00-04:00"
    assert result["target"]["iso"] == "2026-07-01T22:00:00+09:00"
    assert result["source"]["unix"] == result["target"]["unix"]
    assert result["offset_difference_hours"] == 13.0
    assert result["notes"] == []


async def test_convert_time_honours_an_explicit_offset_and_defaults_to_now(connect: Connect) -> None:
    explicit = await call(
        connect, "convert_time", from_timezone="Europe/London", to_timezone="UTC", time="2026-01-10T08:00:00+02:00"
    )
    assert explicit["source"]["iso"] == "2026-01-10T06:00:00+00:00"
    assert explicit["target"]["iso"] == "2026-01-10T06:00:00+00:00"
    now = await call(connect, "convert_time", from_timezone="UTC", to_timezone="America/Los_Angeles")
    assert now["target"]["iso"] == "2026-03-28T05:00:00-07:00"


async def test_convert_time_says_which_reading_of_a_repeated_time_it_used(connect: Connect) -> None:
    result = await call(
        connect, "convert_time", from_timezone="Europe/Paris", to_timezone="UTC", time="2026-10-25T02:30"
    )
    assert result["target"]["iso"] == "2026-10-25T00:30:00+00:00"
    assert "happens twice" in result["notes"][0]


async def test_adding_days_keeps_the_wall_clock_across_a_dst_change(connect: Connect) -> None:
    result = await call(connect, "add_duration", timezone="Europe/Paris", start="2026-03-28T09:00", days=1)
    assert result["end"]["iso"] == "2026-03-29T09:00:00+02:00"
    assert result["elapsed_seconds"] == 23 * 3600
    assert result["end"]["is_dst"] is True and result["start"]["is_dst"] is False


async def test_adding_hours_adds_elapsed_time_across_a_dst_change(connect: Connect) -> None:
    result = await call(connect, "add_duration", timezone="Europe/Paris", start="2026-03-28T09:00", hours=24)
    assert result["end"]["iso"] == "2026-03-29T10:00:00+02:00"
    assert result["elapsed_seconds"] == 24 * 3600


async def test_a_wall_clock_time_skipped_by_dst_is_moved_forward_and_noted(connect: Connect) -> None:
    result = await call(connect, "add_duration", timezone="Europe/Paris", start="2026-03-28T02:30", days=1)
    assert result["end"]["iso"] == "2026-03-29T03:30:00+02:00"
    assert "does not exist" in result["notes"][0]


async def test_negative_amounts_subtract_and_start_defaults_to_now(connect: Connect) -> None:
    result = await call(connect, "add_duration", timezone="UTC", weeks=-1, minutes=-30)
    assert result["start"]["iso"] == "2026-03-28T12:00:00+00:00"
    assert result["end"]["iso"] == "2026-03-21T11:30:00+00:00"
    assert result["elapsed_seconds"] == -(7 * 86400 + 1800)


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"start": "next tuesday"}, "cannot read 'next tuesday'"),
        ({"start": "9999-12-31T23:00", "days": 2}, "outside the years 1-9999"),
        ({"days": 100_001}, "validation error"),
    ],
)
async def test_bad_durations_are_tool_errors(connect: Connect, arguments: dict[str, Any], expected: str) -> None:
    assert expected in await fail(connect, "add_duration", **arguments)


async def test_list_timezones_finds_names_containing_the_query(connect: Connect) -> None:
    result = await call(connect, "list_timezones", query="new york")
    assert result == {"query": "new york", "total": 1, "timezones": ["America/New_York"]}
    america = await call(connect, "list_timezones", query="America/", limit=5)
    assert len(america["timezones"]) == 5 and america["total"] > 5
    assert all(name.startswith("America/") for name in america["timezones"])
    assert "UTC" in (await call(connect, "list_timezones", query="utc"))["timezones"]


def test_the_module_exposes_a_server_reading_the_real_clock() -> None:
    assert isinstance(clock_module.server, MCPServer) and clock_module.server.name == "clock"


async def test_clock_serves_streamable_http_on_loopback(http_server: Any, era: str) -> None:
    url = http_server("servers.clock")
    assert url.startswith("http://127.0.0.1:")
    async with Client(url, mode=era) as client:
        assert {tool.name for tool in (await client.list_tools()).tools} == TOOLS
        now = ok(await client.call_tool("current_time", {"timezone": "Asia/Tokyo"}))
        assert now["timezone"] == "Asia/Tokyo" and now["utc_offset"] == "+09:00"
        assert abs(now["unix"] - datetime.now(UTC).timestamp()) < 60
        assert "unknown time zone" in error_text(await client.call_tool("current_time", {"timezone": "Nowhere"}))
