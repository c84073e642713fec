"""The audit shipper: a process of its own that moves journaled records into the database.

Why a process: chaining and inserting records is Python work, and in a thread of the portal it
competes for the GIL with the event loop on every row the database steps (measured: a thread
writer doubled the portal's CPU per call; see docs/performance.md). Here the portal pays for a
record only what it costs to build it and `write()` it to the journal.

The shipper follows the journal's segments in order: every `flush_seconds` it reads the whole
lines added since it last looked, chains and inserts them in transactions of at most `batch_max`
(group commit, `ChainWriter`), and deletes a closed segment once all of it is in. When the
database fails it keeps its place and tries again every `retry_seconds`; records wait in the
journal meanwhile, however long that takes. Records of segments it did not see written (left by a
crash, or after a failed transaction whose outcome it cannot know) are checked against the
database by id first, so that none is stored twice.

The portal shares a few counters with it (`ShipperStatus`) and restarts it if it dies; at
shutdown it asks it to ship everything and stop. The shipper stops by itself when the portal
process is gone.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import time
from dataclasses import dataclass
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

from portal.audit.settings import AuditSettings

__all__ = ["ShipperProcess", "ShipperStatus", "ship"]

logger = logging.getLogger("portal.audit")

_CONTEXT = multiprocessing.get_context("forkserver")
"""Forked from a fork server, not from the portal: the portal has threads and an event loop that a
plain fork would copy half-way. The server is a clean process started once, with the shipper's
imports preloaded, so that starting a shipper takes milliseconds rather than an interpreter's start."""
_CONTEXT.set_forkserver_preload(["portal.audit.chain", "portal.audit.journal", "portal.db"])


NICENESS = 10
"""How much lower than the portal's the shipper's CPU priority is (nice(2) increment)."""


@dataclass
class ShipperStatus:
    """Counters the shipper updates and the portal reads."""

    shipped: Synchronized[int]
    """Records of this portal run's segments now in the database (or found there already)."""
    stored: Synchronized[int]
    """Records this shipper inserted, all segments together."""
    failing: Synchronized[int]
    """1 while the database refuses the shipper's writes."""
    stop: Synchronized[int]
    """Set by the portal: ship everything, then exit. A flag, not a `multiprocessing.Event`: setting an
    Event whose waiter was killed blocks for ever, and a shipper can be killed."""

    @classmethod
    def create(cls) -> ShipperStatus:
        value = _CONTEXT.Value
        return cls(value("q", 0), value("q", 0), value("b", 0), value("b", 0))


def ship(
    database_url: str,
    sqlite_synchronous: str,
    journal_path: str,
    settings: AuditSettings,
    first_segment: int,
    status: ShipperStatus,
    parent: int,
    revived: bool = False,
) -> None:
    """The shipper's main loop (the target of its process); returns when `stop` is set and all is shipped.

    `revived`: started again after the previous shipper of this portal died, possibly between a
    commit and forgetting what it committed; what is on disk now is checked by id before it goes in."""
    from portal.audit.chain import ChainWriter
    from portal.audit.journal import Journal
    from portal.db import create_engine_for

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Background work: records are durable in the journal already, so when the machine is busy the
    # shipper yields the CPU to the calls and catches up later (the journal grows meanwhile).
    with contextlib.suppress(OSError):
        os.nice(NICENESS)
    engine = create_engine_for(database_url, sqlite_synchronous=sqlite_synchronous)
    writer = ChainWriter(engine)
    journal = Journal(Path(journal_path))
    offsets: dict[int, int] = {}
    checked: set[int] = set()
    """Segments whose records need no check against the database: this shipper saw them from the start."""
    recheck = frozenset(journal.segments()) if revived else frozenset()
    try:
        while _alive(parent):
            # After `stop`, the portal has closed its last segment and holds the journal's lock
            # until this returns, so no other portal is writing one: every segment is closed.
            stopping = bool(status.stop.value)
            done = _ship_once(journal, writer, settings, offsets, checked, first_segment, status, stopping, recheck)
            if stopping and (done or status.failing.value):
                return
            _pause(status, settings.retry_seconds if status.failing.value else settings.flush_seconds)
        # The portal died: what is left is shipped by the next one's shipper (which checks by id).
    finally:
        engine.dispose()


def _pause(status: ShipperStatus, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not status.stop.value and (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 0.05))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ship_once(
    journal: Any,
    writer: Any,
    settings: AuditSettings,
    offsets: dict[int, int],
    checked: set[int],
    first_segment: int,
    status: ShipperStatus,
    closing: bool,
    recheck: frozenset[int] = frozenset(),
) -> bool:
    """Ship what the segments gained; True when every segment was shipped whole (and deleted if closed)."""
    from sqlalchemy.exc import SQLAlchemyError

    from portal.errors import PortalError

    segments = journal.segments()
    for index, number in enumerate(segments):
        closed = closing or index < len(segments) - 1
        offset = offsets.get(number, 0)
        if offset == 0 and number >= first_segment and number not in recheck:
            checked.add(number)  # created by this portal run: everything in it is new
        records, end = journal.read(number, offset)
        dedupe = number not in checked
        inserted_here = 0
        try:
            for start in range(0, len(records), settings.batch_max):
                inserted = writer.append(records[start : start + settings.batch_max], dedupe=dedupe)
                status.stored.value += len(inserted)
                inserted_here += len(inserted)
        except (SQLAlchemyError, OSError, PortalError) as exc:
            if not status.failing.value:
                logger.warning("audit: database unavailable, records wait in %s: %s", journal.path, exc)
            status.failing.value = 1
            checked.discard(number)  # a commit whose answer was lost may have landed: check next time
            return False
        if status.failing.value:
            logger.warning("audit: database back, journaled records shipped")
            status.failing.value = 0
        checked.add(number)
        offsets[number] = end
        if number >= first_segment:
            # A revived shipper re-reads what its predecessor shipped (and counted): only what it inserts counts.
            status.shipped.value += inserted_here if number in recheck else len(records)
        if closed:
            journal.discard(number)
            offsets.pop(number, None)
            checked.discard(number)
    return True


class ShipperProcess:
    """The portal's handle on its shipper: start, restart when it dies, stop."""

    def __init__(self, database_url: str, sqlite_synchronous: str, journal_path: Path, settings: AuditSettings) -> None:
        self.database_url = database_url
        self.sqlite_synchronous = sqlite_synchronous
        self.journal_path = journal_path
        self.settings = settings
        self.status = ShipperStatus.create()
        self._process: Any = None
        self._first_segment = 0

    def start(self, first_segment: int) -> None:
        self._first_segment = first_segment
        self.status.stop.value = 0
        self._spawn()

    def _spawn(self, *, revived: bool = False) -> None:
        args = (
            self.database_url,
            self.sqlite_synchronous,
            str(self.journal_path),
            self.settings,
            self._first_segment,
            self.status,
            os.getpid(),
            revived,
        )
        self._process = _CONTEXT.Process(target=ship, args=args, name="portal-audit-shipper", daemon=True)
        self._process.start()

    def alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    def revive(self) -> bool:
        """Start the shipper again if it died; True if it had to."""
        if self._process is None or self.status.stop.value or self._process.is_alive():
            return False
        logger.error("audit: the shipper exited (code %s); starting it again", self._process.exitcode)
        self._spawn(revived=True)
        return True

    def stop(self, timeout: float) -> bool:
        """Ask the shipper to ship everything and stop (blocking); True if it did in time."""
        if self._process is None:
            return True
        self.status.stop.value = 1
        self._process.join(timeout)
        if self._process.is_alive():
            logger.warning("audit: the shipper did not finish in %.0f s; the journal keeps the rest", timeout)
            self._process.terminate()
            with contextlib.suppress(Exception):
                self._process.join(5)
            return False
        return True
