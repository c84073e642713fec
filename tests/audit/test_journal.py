"""The write-ahead journal: records are durable in it before the database has them, and none is lost."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy.engine import Engine

from portal.audit.chain import RECORDS
from portal.audit.journal import Journal, JournalInUse
from portal.db import create_engine, init_db
from portal.errors import ConfigError
from portal.settings import Settings

from .conftest import make_log


def tools(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        return list(connection.execute(sqlalchemy.select(RECORDS.c.tool).order_by(RECORDS.c.seq)).scalars())


async def until(condition: Callable[[], Any], *, seconds: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    """SQLite alone: renaming a table stands in for an outage (PostgreSQL's is in test_audit.py)."""
    engine = create_engine(Settings(database_url=f"sqlite:///{tmp_path / 'outage.db'}"))
    init_db(engine)
    yield engine
    engine.dispose()


async def test_records_are_in_the_journal_before_the_database_has_them(engine: Engine, tmp_path: Path) -> None:
    log = make_log(engine, tmp_path)
    await log.start()
    await log.admin("root", "a", "1")  # durable on return: in the journal, maybe not yet in the database
    lines = log.journal.segment_path(log.journal.current).read_bytes().splitlines()
    assert b'"tool":"1"' in lines[0]
    await log.drained()
    assert tools(engine) == ["1"]
    await log.close()
    assert tools(engine) == ["1"] and log.journal.segments() == []


async def test_a_database_outage_keeps_records_in_the_journal_and_replays_them_in_order(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    engine = sqlite_engine
    log = make_log(engine, tmp_path, retry_seconds=0.05)
    await log.start()
    await log.admin("root", "a", "1")
    await until(lambda: log.written == 1)
    with engine.begin() as connection:
        connection.exec_driver_sql("ALTER TABLE audit_head RENAME TO audit_head_away")
    for i in range(5):
        await log.admin("root", "b", str(i))
    await until(lambda: log.spooling)
    journaled = [record["tool"] for n in log.journal.segments() for record in log.journal.read(n)[0]]
    assert journaled[-5:] == ["0", "1", "2", "3", "4"]
    with engine.begin() as connection:
        connection.exec_driver_sql("ALTER TABLE audit_head_away RENAME TO audit_head")
    await log.admin("root", "c", "after")
    await until(lambda: not log.spooling and log.written == 7)
    await log.close()
    assert tools(engine) == ["1", "0", "1", "2", "3", "4", "after"]
    assert log.verify().ok and log.journal.segments() == []


async def test_records_left_by_a_crash_are_replayed_at_the_next_start(engine: Engine, tmp_path: Path) -> None:
    crashed = Journal(tmp_path / "spool.jsonl")
    crashed.open()
    first = make_log(engine, tmp_path)
    for name in ("x", "y"):
        crashed.append(first.admin_record("root", "servers.add", name))
    crashed.close()  # what a crash leaves: a segment of records the database never got
    with crashed.segment_path(crashed.current).open("ab") as file:
        file.write(b'{"id":"cut sho')  # and a line the crash cut short, never acknowledged
    log = make_log(engine, tmp_path)
    await log.start()
    await log.admin("root", "after", "z")
    await until(lambda: log.written == 3)
    await log.close()
    assert tools(engine) == ["x", "y", "z"]
    assert log.verify().ok and log.journal.segments() == []


async def test_a_replay_skips_records_the_database_already_has(engine: Engine, tmp_path: Path) -> None:
    log = make_log(engine, tmp_path)
    stored = log.admin_record("root", "a", "stored")
    log.write_sync([stored])
    crashed = Journal(tmp_path / "spool.jsonl")
    crashed.open()
    crashed.append(stored)  # committed, but the crash came before its segment was deleted
    crashed.append(log.admin_record("root", "a", "lost"))
    crashed.close()
    await log.start()
    await until(lambda: not log.spooling)
    await log.close()
    assert tools(engine) == ["stored", "lost"] and log.verify().ok


async def test_a_second_process_cannot_share_a_journal(engine: Engine, tmp_path: Path) -> None:
    log = make_log(engine, tmp_path)
    await log.start()
    with pytest.raises(JournalInUse):
        Journal(tmp_path / "spool.jsonl").open()
    await log.close()


async def test_with_fsync_every_waiting_call_shares_a_flush(engine: Engine, tmp_path: Path) -> None:
    log = make_log(engine, tmp_path, fsync=True)
    await log.start()
    await asyncio.gather(*(log.admin("root", "a", str(i)) for i in range(50)))
    assert log.journal._synced == 50
    await log.close()
    assert sorted(tools(engine), key=int) == [str(i) for i in range(50)]


async def test_segments_roll_over_and_closed_ones_are_deleted_once_shipped(engine: Engine, tmp_path: Path) -> None:
    log = make_log(engine, tmp_path)
    log.journal.segment_bytes = 2000
    await log.start()
    first = log.journal.current
    for i in range(40):
        await log.admin("root", "a", str(i), {"pad": "x" * 200})
    assert log.journal.current > first + 5
    await log.drained()
    await until(lambda: log.journal.segments() == [log.journal.current])
    await log.close()
    assert tools(engine) == [str(i) for i in range(40)] and log.journal.segments() == []


async def test_a_dead_shipper_is_started_again_and_loses_nothing(engine: Engine, tmp_path: Path) -> None:
    log = make_log(engine, tmp_path)
    await log.start()
    assert log.shipper is not None
    log.shipper._process.kill()
    for i in range(5):
        await log.admin("root", "a", str(i))
    await until(lambda: log.shipper is not None and log.shipper.alive() and log.written >= 5, seconds=15)
    await log.close()
    assert tools(engine) == [str(i) for i in range(5)]


async def test_a_shipper_killed_after_committing_is_replaced_without_storing_anything_twice(
    engine: Engine, tmp_path: Path
) -> None:
    log = make_log(engine, tmp_path)
    await log.start()
    assert log.shipper is not None
    for i in range(5):
        await log.admin("root", "a", str(i))
    await log.drained()
    log.shipper._process.kill()  # its segment is still on disk, with the records it committed
    for i in range(5, 8):
        await log.admin("root", "a", str(i))
    await log.drained(timeout=20)
    assert not log.spooling and log.shipper.alive()
    await log.close()
    assert tools(engine) == [str(i) for i in range(8)]
    assert log.verify().ok


async def test_a_journal_that_cannot_be_opened_is_a_clear_configuration_error(engine: Engine, tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the journal's folder should be")
    log = make_log(engine, tmp_path)
    log.journal = Journal(blocked / "spool.jsonl")
    with pytest.raises(ConfigError, match=r"journal .* cannot be opened"):
        await log.start()
