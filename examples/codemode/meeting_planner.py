# ruff: noqa: F704, B018
# A Code Mode program (run by `execute`, not by Python directly): when is a 15:00 Paris meeting for everyone?
# The five conversions are independent, so they run at once with asyncio.gather: one round trip, not five.
import asyncio

from tools import clock

meeting = "2026-03-30T15:00"
offices = ["America/New_York", "America/Los_Angeles", "Asia/Tokyo", "Asia/Kolkata", "Australia/Sydney"]

conversions = await asyncio.gather(
    *[clock.convert_time(from_timezone="Europe/Paris", to_timezone=zone, time=meeting) for zone in offices]
)

schedule = {}
for zone, conversion in zip(offices, conversions, strict=True):
    local = conversion["target"]
    hour = int(local["time"][:2])
    awake = 8 <= hour < 19
    schedule[zone] = f"{local['weekday']} {local['time'][:5]} {local['abbreviation']}"
    print(f"{zone:22} {schedule[zone]:22} {'ok' if awake else 'outside office hours'}")

schedule
