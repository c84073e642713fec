"""`AuditLog`: group commit, the write-ahead spool, checkpoints, auth and admin records.

Records are queued; one writer task takes everything queued (up to `batch_max`) and
appends it in one transaction (group commit), then wakes every caller of the batch. When
the database fails, the batch goes to the spool (JSONL, fsynced) and so does everything
after it, until a replay (every `retry_seconds`) has moved the spool into the chain, in
order; with `on_db_failure = "refuse"` the callers get `AuditUnavailable` instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from portal.audit.chain import (
    CHECKPOINTS,
    HEAD,
    RECORDS,
    AuditKeys,
    ChainWriter,
    VerifyReport,
    checkpoint,
    new_id,
    now_us,
    verify_chain,
)
from portal.audit.redact import Redactor
from portal.audit.settings import AuditSettings
from portal.auth.crypto import MasterKey
from portal.errors import PortalError

if TYPE_CHECKING:
    from portal.audit.stage import AuditGate, AuditStage
    from portal.auth.events import AuthEvent, AuthEvents
    from portal.settings import Settings

__all__ = ["AuditLog", "AuditUnavailable", "Spool", "prune"]

logger = logging.getLogger("portal.audit")


class AuditUnavailable(PortalError):
    """A record could not be made durable; the call it is for is refused."""

    code = "audit_unavailable"
    http_status = 503


class Spool:
    """An append-only JSONL file of records not yet in the database, fsynced on every append."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, records: list[dict[str, Any]]) -> None:
        data = "".join(json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n" for record in records)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, data.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        records = []
        with self.path.open(encoding="utf-8") as file:
            for line in file:
                try:
                    records.append(json.loads(line))
                except ValueError:  # a line cut short by a crash mid-append: it was never acknowledged
                    logger.warning("audit spool: skipping a partial line")
        return records

    def pending(self) -> bool:
        return self.path.exists() and self.path.stat().st_size > 0

    def clear(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


_STOP = object()


class AuditLog:
    """The audit log of one database.

    `await start()` on the portal's event loop, `await close()` at shutdown (drains the queue
    and signs the head). Without `start()` (the CLI), records are written synchronously.
    """

    def __init__(
        self, engine: Engine, settings: AuditSettings, *, master: MasterKey, spool_path: Path | str | None = None
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.master = master
        self.redactor = Redactor(master.derive("audit redact"))
        self.keys = AuditKeys(engine, master)
        self.writer = ChainWriter(engine)
        self.spool = Spool(Path(spool_path if spool_path is not None else settings.spool_path))
        self._lock = threading.Lock()
        self._spooling = self.spool.pending()
        self._last_retry = 0.0
        self._queue: asyncio.Queue[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._unsubscribe: list[Callable[[], None]] = []
        self.written = 0
        """Records this process made durable (database or spool)."""

    @classmethod
    def from_settings(cls, settings: Settings, engine: Engine, audit: AuditSettings | None = None) -> AuditLog:
        """The audit log of a portal: its `[audit]` settings, master key and spool in its data folder."""
        from portal.auth.crypto import load_master_key

        audit = audit or getattr(settings, "audit", None) or AuditSettings()
        return cls(engine, audit, master=load_master_key(settings), spool_path=settings.resolve_path(audit.spool_path))

    # Life cycle

    @property
    def spooling(self) -> bool:
        return self._spooling

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        if self._spooling:
            await asyncio.to_thread(self._replay)
        self._tasks = [asyncio.create_task(self._write_loop(), name="audit-writer")]
        if self.settings.checkpoint_interval_seconds > 0:
            self._tasks.append(asyncio.create_task(self._checkpoint_loop(), name="audit-checkpoints"))

    async def close(self) -> None:
        """Write everything queued, try to replay the spool, sign the head, stop."""
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()
        if self._queue is not None and self._tasks:
            self._queue.put_nowait(_STOP)
            with contextlib.suppress(asyncio.CancelledError):
                await self._tasks[0]
            for task in self._tasks[1:]:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._tasks = []
        self._queue = None
        self._loop = None
        await asyncio.to_thread(self._final_checkpoint)

    def _final_checkpoint(self) -> None:
        try:
            if self._spooling:
                self._replay(force=True)
            if not self._spooling:
                checkpoint(self.engine, self.keys)
        except (SQLAlchemyError, OSError) as exc:
            logger.warning("audit: no checkpoint at shutdown: %s", exc)

    # Writing

    async def append(self, record: dict[str, Any]) -> None:
        """Queue `record` and return once it is durable (raises `AuditUnavailable` otherwise)."""
        await self.submit(record)

    def submit(self, record: dict[str, Any]) -> asyncio.Future[None]:
        """Queue `record` without waiting; the future resolves when it is durable. Outside a started log,
        writes it now."""
        if self._queue is None or self._loop is None:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            try:
                self.write_sync([record])
                future.set_result(None)
            except AuditUnavailable as exc:
                future.set_exception(exc)
            return future
        future = self._loop.create_future()
        self._queue.put_nowait((record, future))
        return future

    def write_sync(self, records: list[dict[str, Any]]) -> None:
        """Make `records` durable now, in this thread (the CLI; the writer task's worker thread)."""
        with self._lock:
            self._persist(records)

    def _persist(self, records: list[dict[str, Any]]) -> None:
        if self._spooling:
            self._to_spool(records)
            if time.monotonic() - self._last_retry >= self.settings.retry_seconds:
                self._replay()
            return
        try:
            self.writer.append(records)
        except (SQLAlchemyError, OSError) as exc:
            if self.settings.on_db_failure == "refuse":
                raise AuditUnavailable("the audit log cannot be written; the call was refused") from exc
            logger.warning("audit: database unavailable, spooling to %s: %s", self.spool.path, exc)
            self._spooling = True
            self._last_retry = time.monotonic()
            self._to_spool(records)
        self.written += len(records)

    def _to_spool(self, records: list[dict[str, Any]]) -> None:
        try:
            self.spool.append(records)
        except OSError as exc:
            raise AuditUnavailable("the audit log cannot be written; the call was refused") from exc

    def _replay(self, *, force: bool = False) -> bool:
        """Move the spool into the chain, in order; True when it is empty afterwards."""
        self._last_retry = time.monotonic()
        records = self.spool.read()
        try:
            size = self.settings.batch_max
            for index in range(0, len(records), size):
                self.writer.append(records[index : index + size], dedupe=True)
        except (SQLAlchemyError, OSError) as exc:
            if force:
                logger.warning("audit: %d records stay in the spool %s: %s", len(records), self.spool.path, exc)
            return False
        self.spool.clear()
        if self._spooling:
            logger.info("audit: database back, replayed %d spooled records", len(records))
        self._spooling = False
        return True

    def _locked_replay(self) -> None:
        with self._lock:
            if self._spooling:
                self._replay()

    async def _write_loop(self) -> None:
        assert self._queue is not None
        queue = self._queue
        stop = False
        while not stop:
            try:
                timeout = self.settings.retry_seconds if self._spooling else None
                item = await asyncio.wait_for(queue.get(), timeout)
            except TimeoutError:
                await asyncio.to_thread(self._locked_replay)
                continue
            batch: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
            while True:
                if item is _STOP:
                    stop = True
                else:
                    batch.append(item)
                if stop or len(batch) >= self.settings.batch_max or queue.empty():
                    break
                item = queue.get_nowait()
            if not batch:
                continue
            records = [record for record, _ in batch]
            try:
                await asyncio.to_thread(self.write_sync, records)
            except Exception as exc:
                error = exc if isinstance(exc, AuditUnavailable) else AuditUnavailable(f"audit write failed: {exc}")
                if not isinstance(exc, AuditUnavailable):
                    logger.exception("audit: write failed")
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                        future.exception()  # an end record's future is not awaited: do not warn
            else:
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)

    async def _checkpoint_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.checkpoint_interval_seconds)
            if self._spooling:
                continue
            try:
                await asyncio.to_thread(checkpoint, self.engine, self.keys)
            except (SQLAlchemyError, OSError) as exc:
                logger.warning("audit: checkpoint failed: %s", exc)

    def checkpoint(self) -> dict[str, Any] | None:
        """Sign the chain head now (synchronously)."""
        return checkpoint(self.engine, self.keys)

    def verify(self) -> VerifyReport:
        return verify_chain(self.engine, self.keys)

    # Record kinds

    def stage(self, *, split: bool = False) -> AuditStage:
        """The pipeline stage; with `split`, pair it with `gate()` placed just before forwarding."""
        from portal.audit.stage import AuditStage

        return AuditStage(self, split=split)

    def gate(self) -> AuditGate:
        from portal.audit.stage import AuditGate

        return AuditGate(self)

    def subscribe(self, events: AuthEvents) -> None:
        """Record every auth event of `events` (until `close()`)."""
        self._unsubscribe.append(events.subscribe(self.on_auth_event))

    def auth_record(self, event: AuthEvent) -> dict[str, Any]:
        record_id = new_id()
        return self.record(
            id=record_id,
            kind="auth",
            time_us=int(event.time * 1_000_000),
            principal=event.subject,
            client_id=event.client_id,
            token_id=event.token_id,
            method=f"auth.{event.kind}",
            tool=event.kind,
            outcome=event.outcome,
            details=self.redactor.scrub({"reason": event.reason}) if event.reason else None,
        )

    def on_auth_event(self, event: AuthEvent) -> None:
        """`AuthEvents` subscriber: queues the event's record (written at once outside the event loop)."""
        record = self.auth_record(event)
        if self._queue is not None:
            self.submit(record).add_done_callback(_log_failure)
        else:
            try:
                self.write_sync([record])
            except AuditUnavailable:
                logger.exception("audit: auth event not recorded")

    def admin_record(
        self, actor: str, action: str, target: str | None, details: Mapping[str, Any] | Any = None
    ) -> dict[str, Any]:
        if is_dataclass(details) and not isinstance(details, type):
            details = asdict(details)
        body = {"target": target, "details": dict(details) if isinstance(details, Mapping) else details}
        return self.record(
            kind="admin",
            principal=actor,
            method=action,
            tool=target,
            outcome="ok",
            details=self.redactor.scrub(body),
        )

    async def admin(
        self, actor: str, action: str, target: str | None, details: Mapping[str, Any] | None = None
    ) -> None:
        """Record an admin change (`servers.add`, `policy.reload`, `keys.rotate`, ...); durable on return."""
        await self.append(self.admin_record(actor, action, target, details))

    def admin_sync(self, actor: str, action: str, target: str | None, details: Mapping[str, Any] | None = None) -> None:
        """`admin()` for synchronous callers (the CLI)."""
        self.write_sync([self.admin_record(actor, action, target, details)])

    @staticmethod
    def record(**fields: Any) -> dict[str, Any]:
        """A record with an id, a time and `fields` (`kind` is required)."""
        record_id = fields.pop("id", None) or new_id()
        record: dict[str, Any] = {
            "id": record_id,
            "call_id": record_id,
            "phase": "event",
            "time_us": now_us(),
            "groups": [],
            "policy_ids": [],
        }
        record.update(fields)
        return record


def _log_failure(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.error("audit: record lost: %s", future.exception())


def prune(log: AuditLog, before_us: int, *, actor: str = "cli") -> dict[str, Any]:
    """Delete records older than `before_us`, keeping the chain verifiable from a signed checkpoint.

    The chain is verified first (pruning a broken chain would hide the break); the last record to
    go is signed as a checkpoint, which anchors the records that stay; the prune is itself recorded.
    """
    report = log.verify()
    if not report.ok:
        raise PortalError(f"the audit chain does not verify, not pruning: {report.message}")
    with log.engine.connect() as connection:
        last = connection.execute(
            select(RECORDS.c.seq, RECORDS.c.hash)
            .where(RECORDS.c.time_us < before_us)
            .order_by(RECORDS.c.seq.desc())
            .limit(1)
        ).one_or_none()
    if last is None:
        return {"pruned": 0, "through": None}
    seq, chain_hash = int(last.seq), str(last.hash)
    checkpoint(log.engine, log.keys, at=(seq, chain_hash))
    with log.engine.begin() as connection:
        result = connection.execute(delete(RECORDS).where(RECORDS.c.seq <= seq))
        connection.execute(delete(CHECKPOINTS).where(CHECKPOINTS.c.seq < seq))
        connection.execute(update(HEAD).where(HEAD.c.id == 1).values(pruned_through=seq))
    count = int(result.rowcount or 0)
    log.admin_sync(actor, "audit.prune", "audit", {"before_us": before_us, "through_seq": seq, "records": count})
    return {"pruned": count, "through": seq}
