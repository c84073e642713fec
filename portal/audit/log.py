"""`AuditLog`: the write-ahead journal, group commit, checkpoints, auth and admin records.

With `on_db_failure = "spool"` (the default), a record is durable once it is in the local
journal (`portal.audit.journal`): appending it is one `write()` (and one shared `fsync` when
`[audit] fsync` is on), so a call waits microseconds, not a database round trip. The shipper
(`portal.audit.shipper`, its own process) chains and inserts journaled records in batches
(group commit) and keeps them in the journal for as long as the database is away.

With `on_db_failure = "refuse"` there is no journal: records are group-committed by a task of
the portal, a call waits for its record's commit, and a call whose record cannot be committed
gets `AuditUnavailable` and is not forwarded. So does every call on an in-memory SQLite database,
which no other process can reach.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select, text, update
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
from portal.audit.journal import Journal
from portal.audit.redact import Redactor
from portal.audit.settings import AuditSettings
from portal.audit.shipper import ShipperProcess
from portal.auth.crypto import MasterKey
from portal.errors import ConfigError, PortalError

if TYPE_CHECKING:
    from portal.audit.stage import AuditGate, AuditStage
    from portal.auth.events import AuthEvent, AuthEvents
    from portal.settings import Settings

__all__ = ["AuditLog", "AuditUnavailable", "prune"]

logger = logging.getLogger("portal.audit")

_DB_ERRORS = (SQLAlchemyError, OSError, PortalError)
SHIPPER_STOP_SECONDS = 30.0
"""How long shutdown waits for the shipper to move the journal into the database."""


class AuditUnavailable(PortalError):
    """A record could not be made durable; the call it is for is refused."""

    code = "audit_unavailable"
    http_status = 503


_STOP = object()


class AuditLog:
    """The audit log of one database.

    `await start()` on the portal's event loop, `await close()` at shutdown (ships or commits
    what is pending and signs the head). Without `start()` (the CLI), records are written to the
    database at once.
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
        self.journal = Journal(
            Path(spool_path if spool_path is not None else settings.spool_path), fsync=settings.fsync
        )
        self.shipper: ShipperProcess | None = None
        self._lock = threading.Lock()
        self._queue: asyncio.Queue[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._unsubscribe: list[Callable[[], None]] = []
        self._written = 0

    @classmethod
    def from_settings(cls, settings: Settings, engine: Engine, audit: AuditSettings | None = None) -> AuditLog:
        """The audit log of a portal: its `[audit]` settings, master key and journal in its data folder."""
        from portal.auth.crypto import load_master_key

        audit = audit or getattr(settings, "audit", None) or AuditSettings()
        return cls(engine, audit, master=load_master_key(settings), spool_path=settings.resolve_path(audit.spool_path))

    # Life cycle

    @property
    def written(self) -> int:
        """Records inserted into the database since `start()` (by the shipper or by this process)."""
        shipped = self.shipper.status.stored.value if self.shipper is not None else 0
        return self._written + shipped

    @property
    def spooling(self) -> bool:
        """Whether records wait in the journal because the database refuses them."""
        return self.shipper is not None and bool(self.shipper.status.failing.value)

    async def start(self) -> None:
        """Open the journal and start the shipper (or, without a journal, the commit task)."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        if self.settings.on_db_failure == "spool" and not _in_memory(self.engine):
            try:
                first = self.journal.open()
            except OSError as exc:
                raise ConfigError(
                    f"[audit] spool_path: the journal {self.journal.path} cannot be opened ({exc.strerror})"
                ) from None
            synchronous = await asyncio.to_thread(_sqlite_synchronous, self.engine)
            url = self.engine.url.render_as_string(hide_password=False)
            self.shipper = ShipperProcess(url, synchronous, self.journal.path, self.settings)
            try:
                await asyncio.to_thread(self.shipper.start, first)
            except BaseException:
                self.journal.close()
                self.shipper = None
                raise
            self._tasks = [asyncio.create_task(self._watch_shipper(), name="audit-shipper-watch")]
        else:
            self._queue = asyncio.Queue()
            self._tasks = [asyncio.create_task(self._write_loop(), name="audit-writer")]
        if self.settings.checkpoint_interval_seconds > 0:
            self._tasks.append(asyncio.create_task(self._checkpoint_loop(), name="audit-checkpoints"))

    async def close(self) -> None:
        """Ship or commit everything pending, sign the head, stop."""
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()
        writer = self._tasks[0] if self._queue is not None and self._tasks else None
        for task in self._tasks:
            if task is not writer:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if writer is not None and self._queue is not None:
            self._queue.put_nowait(_STOP)
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        self._tasks = []
        self._queue = None
        self._loop = None
        failing = False
        if self.shipper is not None:
            # The lock is kept until the shipper is done: it then treats every segment as closed.
            self.journal.close(release=False)
            try:
                await asyncio.to_thread(self.shipper.stop, SHIPPER_STOP_SECONDS)
            finally:
                self.journal.release()
            failing = bool(self.shipper.status.failing.value)
        if not failing:
            try:
                await asyncio.to_thread(checkpoint, self.engine, self.keys)
            except _DB_ERRORS as exc:
                logger.warning("audit: no checkpoint at shutdown: %s", exc)

    async def drained(self, timeout: float = 30.0) -> None:
        """Return once every record appended so far is in the database (or raise `TimeoutError`)."""
        async with asyncio.timeout(timeout):
            if self.shipper is not None:
                target = self.journal.appended
                while self.shipper.status.shipped.value < target:
                    await asyncio.sleep(0.005)
            elif self._queue is not None:
                marker: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self._queue.put_nowait((None, marker))
                await marker

    # Writing

    async def append(self, record: dict[str, Any]) -> None:
        """Make `record` durable (raises `AuditUnavailable` when it cannot be)."""
        await self.submit(record)

    def submit(self, record: dict[str, Any]) -> asyncio.Future[None]:
        """Record `record`; the future resolves when it is durable. Outside a started log, writes it now."""
        loop = self._loop
        if loop is None:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            try:
                self.write_sync([record])
                future.set_result(None)
            except AuditUnavailable as exc:
                future.set_exception(exc)
            return future
        if self.shipper is None:
            assert self._queue is not None
            future = loop.create_future()
            self._queue.put_nowait((record, future))
            return future
        future = loop.create_future()
        try:
            self.journal.append(record)
        except OSError as exc:
            logger.error("audit: the journal cannot be written: %s", exc)
            future.set_exception(AuditUnavailable("the audit log cannot be written; the call was refused"))
            return future
        if self.journal.fsync:
            return asyncio.ensure_future(self.journal.sync())
        future.set_result(None)
        return future

    def write_sync(self, records: list[dict[str, Any]]) -> None:
        """Commit `records` to the database now, in this thread (the CLI, and the commit task's worker thread)."""
        with self._lock:
            try:
                self.writer.append(records)
            except _DB_ERRORS as exc:
                raise AuditUnavailable("the audit log cannot be written") from exc
        self._written += len(records)

    async def _watch_shipper(self) -> None:
        assert self.shipper is not None
        while True:
            await asyncio.sleep(1.0)
            await asyncio.to_thread(self.shipper.revive)

    async def _write_loop(self) -> None:
        """Without a journal: commit what is queued, one transaction per batch; callers wait for it."""
        assert self._queue is not None
        queue = self._queue
        stop = False
        while not stop:
            item = await queue.get()
            batch: list[tuple[dict[str, Any] | None, asyncio.Future[None]]] = []
            while True:
                if item is _STOP:
                    stop = True
                else:
                    batch.append(item)
                if stop or len(batch) >= self.settings.batch_max or queue.empty():
                    break
                item = queue.get_nowait()
            if batch:
                await self._commit(batch)

    async def _commit(self, batch: list[tuple[dict[str, Any] | None, asyncio.Future[None]]]) -> None:
        records = [record for record, _ in batch if record is not None]
        error: AuditUnavailable | None = None
        if records:
            try:
                await asyncio.to_thread(self.write_sync, records)
            except AuditUnavailable as exc:
                error = exc
            except Exception as exc:
                logger.exception("audit: write failed")
                error = AuditUnavailable(f"audit write failed: {exc}")
        for record, future in batch:
            if future.done():
                continue
            if error is not None and record is not None:
                future.set_exception(error)
                future.exception()  # an end record's future is not awaited: do not warn
            else:
                future.set_result(None)

    async def _checkpoint_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.checkpoint_interval_seconds)
            if self.spooling:
                continue
            try:
                await asyncio.to_thread(checkpoint, self.engine, self.keys)
            except _DB_ERRORS as exc:
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
        self.post(self.auth_record(event))

    def post(self, record: dict[str, Any]) -> None:
        """Record `record` from any thread, without waiting (a failure is logged)."""
        loop = self._loop
        if loop is not None and threading.get_ident() != self._thread:
            loop.call_soon_threadsafe(lambda: self.submit(record).add_done_callback(_log_failure))
        elif loop is not None:
            self.submit(record).add_done_callback(_log_failure)
        else:
            try:
                self.write_sync([record])
            except AuditUnavailable:
                logger.exception("audit: record lost")

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


def _in_memory(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite" and (engine.url.database or ":memory:") in ("", ":memory:")


def _sqlite_synchronous(engine: Engine) -> str:
    """The `synchronous` the portal's SQLite connections use, for the shipper's (`normal` elsewhere)."""
    if engine.dialect.name != "sqlite":
        return "normal"
    with engine.connect() as connection:
        value = connection.execute(text("PRAGMA synchronous")).scalar()
    return "full" if value is not None and int(value) >= 2 else "normal"


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
