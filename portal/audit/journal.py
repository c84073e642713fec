"""The audit journal: the local write-ahead file every record reaches before its call goes on.

A record is appended (one `write()`, and an `fsync` when `[audit] fsync` is on) before the call
it is for is forwarded; the shipper (`portal.audit.shipper`, a process of its own) moves it into
the database. The journal is split in segments (`audit-spool.000001.jsonl`, ...): the portal
writes to the newest and starts a new one when it is large; a segment with a newer one beside it
is closed, and the shipper deletes it once the database has all of it. Whatever a crash or a
database outage leaves is shipped later, in order, skipping what the database already has.

Records are whole lines written with one `write()` each; a line cut short by a crash was never
acknowledged, and the shipper skips it. The portal holds an exclusive lock on the journal: two
portals sharing one would interleave their chains' inputs, so a second is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
from pathlib import Path
from typing import Any

import orjson

from portal.errors import PortalError

__all__ = ["SEGMENT_BYTES", "Journal", "JournalInUse"]

SEGMENT_BYTES = 8 * 1024 * 1024
"""A segment larger than this is closed and a new one started."""


class JournalInUse(PortalError):
    """Another process holds the journal."""

    code = "audit_journal_in_use"


class Journal:
    """The segments next to `path` (`<stem>.<n><suffix>`): appended by the portal, read by the shipper."""

    def __init__(self, path: Path, *, fsync: bool = False, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.path = path
        self.fsync = fsync
        self.segment_bytes = segment_bytes
        self._pattern = re.compile(re.escape(path.stem) + r"\.(\d{6,})" + re.escape(path.suffix) + "$")
        self._lock_fd: int | None = None
        self._fd: int | None = None
        self._segment = 0
        self._size = 0
        self.appended = 0
        """Records appended since `open()`."""
        self._synced = 0
        self._sync_lock: asyncio.Lock | None = None

    # The writing side (the portal)

    def open(self) -> int:
        """Lock the journal and start a new segment; returns its number (older ones are left to ship)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            raise JournalInUse(
                f"the audit journal {self.path} is in use by another portal process; "
                "give each replica its own [audit] spool_path"
            ) from None
        self._lock_fd = lock_fd
        left = self.segments()
        self._segment = (left[-1] if left else 0) + 1
        self._start_segment()
        self._sync_lock = asyncio.Lock()
        return self._segment

    def close(self, *, release: bool = True) -> None:
        """Close the current segment (it is then closed for the shipper too) and, with `release`, the lock."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if release:
            self.release()

    def release(self) -> None:
        """Let another portal open the journal."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @property
    def current(self) -> int:
        return self._segment

    def append(self, record: dict[str, Any]) -> None:
        """Write `record` to the current segment (no fsync here, see `sync`). Raises `OSError`."""
        if self._fd is None:
            raise OSError("the audit journal is not open")
        data = orjson.dumps(record) + b"\n"
        written = os.write(self._fd, data)
        if written != len(data):  # a short write on a full disk: the line is cut, and never acknowledged
            raise OSError("short write to the audit journal")
        self._size += written
        self.appended += 1
        if self._size >= self.segment_bytes:
            self.rotate()

    async def sync(self) -> None:
        """Return once everything appended so far is fsynced; one fsync serves every waiting caller."""
        assert self._sync_lock is not None
        target = self.appended
        async with self._sync_lock:
            if self._synced >= target or self._fd is None:
                return
            upto = self.appended
            await asyncio.to_thread(os.fsync, self._fd)
            self._synced = upto

    def rotate(self) -> None:
        """Close the current segment and start the next."""
        if self._fd is not None:
            if self.fsync:
                os.fsync(self._fd)  # the next segment's records must not be durable before these
                self._synced = self.appended
            os.close(self._fd)
            self._fd = None
        self._segment += 1
        self._start_segment()

    def _start_segment(self) -> None:
        self._fd = os.open(self.segment_path(self._segment), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._size = os.fstat(self._fd).st_size

    # The reading side (the shipper)

    def segments(self) -> list[int]:
        """The segment numbers on disk, oldest first."""
        if not self.path.parent.exists():
            return []
        found = []
        for entry in self.path.parent.iterdir():
            match = self._pattern.match(entry.name)
            if match:
                found.append(int(match.group(1)))
        return sorted(found)

    def segment_path(self, number: int) -> Path:
        return self.path.with_name(f"{self.path.stem}.{number:06d}{self.path.suffix}")

    def read(self, number: int, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """The whole records of segment `number` from byte `offset`, and the offset after the last of them."""
        try:
            with self.segment_path(number).open("rb") as file:
                file.seek(offset)
                data = file.read()
        except FileNotFoundError:
            return [], offset
        end = data.rfind(b"\n") + 1
        records = []
        for line in data[:end].splitlines():
            try:
                records.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                continue  # a line cut short by a crash, then appended to: never acknowledged
        return records, offset + end

    def discard(self, number: int) -> None:
        """Delete a segment the database has all of."""
        with contextlib.suppress(FileNotFoundError):
            self.segment_path(number).unlink()
