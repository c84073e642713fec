"""Obligations of the deciding policies: approvals, rate limits, redaction.

- `@approval("required")`: the exact call (principal, action, argument digest) waits for an
  operator (`portal approvals approve ID`); an approval is used once and expires.
- `@rate("N/second|minute|hour|day")`: fixed windows per principal, action and policy; in
  memory, or on Redis (`INCR` + `EXPIRE`) when `redis_url` is set, so replicas share them.
- `@redact("input.password,result")`: paths (comma or space separated; Cedar annotations
  hold one string) the audit record must not keep.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy
from sqlalchemy.engine import Engine
from sqlmodel import Field, Session, SQLModel, select

from portal.errors import PortalError

__all__ = [
    "Approval",
    "ApprovalPending",
    "ApprovalStore",
    "MemoryRateLimiter",
    "RateLimited",
    "RedisRateLimiter",
    "argument_digest",
    "parse_rate",
    "redact_paths",
]

_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


def parse_rate(text: str) -> tuple[int, int]:
    """`"30/minute"` -> (30, 60)."""
    count, _, unit = text.strip().partition("/")
    if not count.strip().isdigit() or int(count) < 1 or unit.strip() not in _UNITS:
        raise ValueError(f'@rate takes "N/second|minute|hour|day", not {text!r}')
    return int(count), _UNITS[unit.strip()]


def redact_paths(values: Sequence[str]) -> list[str]:
    paths: list[str] = []
    for value in values:
        for path in value.replace(",", " ").split():
            if path not in paths:
                paths.append(path)
    return paths


def argument_digest(arguments: Any) -> str:
    canonical = json.dumps(arguments if arguments is not None else {}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class RateLimited(PortalError):
    code = "rate_limited"
    http_status = 429
    jsonrpc_code = -32053

    def __init__(self, tool: str, retry_after: int) -> None:
        super().__init__(f"rate limit reached for {tool}; retry in {retry_after} s", tool=tool, retry_after=retry_after)


class ApprovalPending(PortalError):
    """The call waits for an operator; the client retries the same call once it is approved."""

    code = "approval_pending"
    http_status = 403
    jsonrpc_code = -32054

    def __init__(self, approval_id: str, tool: str, expires_at: int) -> None:
        super().__init__(
            f"this call of {tool} needs an operator's approval (request {approval_id}); "
            f"once approved, retry the same call with the same arguments before it expires",
            approval_id=approval_id,
            tool=tool,
            expires_at=expires_at,
        )


class MemoryRateLimiter:
    """Fixed windows in this process."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()

    async def hit(self, key: str, limit: int, period: int, now: float | None = None) -> int | None:
        """Count one call; the seconds to wait when over `limit`, else None."""
        now = time.time() if now is None else now
        window = int(now // period)
        with self._lock:
            if len(self._counts) > 100_000:
                self._counts = {k: v for k, v in self._counts.items() if k[1] >= window - 1}
            count = self._counts.get((key, window), 0) + 1
            self._counts[(key, window)] = count
        if count > limit:
            return max(1, int((window + 1) * period - now))
        return None

    async def close(self) -> None:
        return None


class RedisRateLimiter:
    """Fixed windows shared by every replica, on Redis."""

    def __init__(self, url: str, prefix: str = "portal:rate:") -> None:
        import redis.asyncio

        self._redis = redis.asyncio.Redis.from_url(url)
        self.prefix = prefix

    async def hit(self, key: str, limit: int, period: int, now: float | None = None) -> int | None:
        now = time.time() if now is None else now
        window = int(now // period)
        name = f"{self.prefix}{key}:{period}:{window}"
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(name)
            pipe.expire(name, period + 1)
            count, _ = await pipe.execute()
        if int(count) > limit:
            return max(1, int((window + 1) * period - now))
        return None

    async def close(self) -> None:
        await self._redis.aclose()


class Approval(SQLModel, table=True):
    """A call held for an operator's decision."""

    __tablename__ = "policy_approvals"

    id: str = Field(primary_key=True)
    subject: str = Field(index=True)
    action: str
    digest: str
    arguments: str
    """The arguments as JSON, for the operator to read."""
    status: str = "pending"
    """pending, approved, denied or used."""
    created_at: int
    expires_at: int
    decided_by: str | None = None


class ApprovalStore:
    """Approvals in the portal's database."""

    def __init__(self, engine: Engine, ttl: int = 3600) -> None:
        self.engine = engine
        self.ttl = ttl

    def create_table(self) -> None:
        Approval.metadata.create_all(self.engine, tables=[Approval.__table__])  # type: ignore[attr-defined]

    def consume_or_request(
        self, subject: str, action: str, arguments: Any, now: int | None = None, *, shown: Any = None
    ) -> Approval:
        """Use an approved, unexpired approval of this exact call (status becomes used), or
        return the pending one (created if needed). The caller checks `status`.

        The call is matched on the digest of its real `arguments`; what is stored for the operator
        to read is `shown` (the arguments with secrets redacted) when given."""
        now = int(time.time()) if now is None else now
        digest = argument_digest(arguments)
        with Session(self.engine) as session:
            rows = session.exec(
                select(Approval).where(
                    Approval.subject == subject,
                    Approval.action == action,
                    Approval.digest == digest,
                    Approval.expires_at > now,
                    Approval.status.in_(("pending", "approved")),  # type: ignore[attr-defined]
                )
            ).all()
            for row in rows:
                if row.status == "approved":
                    # Single use, even under concurrent retries: only the UPDATE that flips it wins.
                    flipped = session.execute(
                        sqlalchemy.update(Approval)
                        .where(Approval.id == row.id, Approval.status == "approved")  # type: ignore[arg-type]
                        .values(status="used")
                    )
                    session.commit()
                    if flipped.rowcount == 1:  # type: ignore[attr-defined]
                        row.status = "used"
                        return row
            for row in rows:
                if row.status == "pending":
                    return row
            approval = Approval(
                id=secrets.token_hex(6),
                subject=subject,
                action=action,
                digest=digest,
                arguments=json.dumps(arguments if shown is None else shown, sort_keys=True)[:4000],
                created_at=now,
                expires_at=now + self.ttl,
            )
            session.add(approval)
            session.commit()
            session.refresh(approval)
            return approval

    def get(self, approval_id: str) -> Approval | None:
        with Session(self.engine) as session:
            return session.get(Approval, approval_id)

    def list(self, *, include_done: bool = False, now: int | None = None) -> list[Approval]:
        now = int(time.time()) if now is None else now
        with Session(self.engine) as session:
            query = select(Approval)
            if not include_done:
                query = query.where(Approval.status == "pending", Approval.expires_at > now)
            return list(session.exec(query.order_by(Approval.created_at)).all())  # type: ignore[arg-type]

    def decide(self, approval_id: str, approve: bool, operator: str = "operator", now: int | None = None) -> Approval:
        now = int(time.time()) if now is None else now
        with Session(self.engine) as session:
            row = session.get(Approval, approval_id)
            if row is None:
                raise PortalError(f"no approval request {approval_id}")
            if row.status != "pending" or row.expires_at <= now:
                raise PortalError(
                    f"approval request {approval_id} is {row.status if row.status != 'pending' else 'expired'}"
                )
            row.status = "approved" if approve else "denied"
            row.decided_by = operator
            # An approval lasts as long as the request would have: the client retries within it.
            session.add(row)
            session.commit()
            session.refresh(row)
            return row
