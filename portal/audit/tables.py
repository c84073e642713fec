"""The audit log's tables (listed in `portal.db.TABLE_MODULES`).

`audit_records` is the hash chain: `seq` is a record's place in it (1, 2, ...), `prev_hash`
the hash of record `seq - 1` (or of the checkpoint it was pruned down to), and `hash` the
SHA-256 of the record's canonical JSON (RFC 8785) including `prev_hash`. `audit_head` is one
row naming the chain's last record, locked while a batch is appended so that replicas append
one after another. `audit_checkpoints` are signed heads; `audit_keys` the Ed25519 keys that
sign them, encrypted with the master key, never dropped (old checkpoints stay verifiable).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Connection, Index, LargeBinary, Text
from sqlmodel import Field, SQLModel

from portal.db import insert_for

__all__ = [
    "HASHED_FIELDS",
    "AuditCheckpointRow",
    "AuditHeadRow",
    "AuditKeyRow",
    "AuditRecordRow",
    "seed_rows",
]


class AuditRecordRow(SQLModel, table=True):
    """One audit record (see SPEC "Audit record")."""

    __tablename__ = "audit_records"
    __table_args__ = (
        Index("ix_audit_records_time", "time_us"),
        Index("ix_audit_records_call", "call_id"),
        Index("ix_audit_records_parent", "parent_id"),
        Index("ix_audit_records_principal_time", "principal", "time_us"),
        Index("ix_audit_records_client_time", "client_id", "time_us"),
        Index("ix_audit_records_server_tool", "server", "tool", "time_us"),
        Index("ix_audit_records_outcome_time", "outcome", "time_us"),
    )

    seq: int = Field(sa_type=BigInteger, primary_key=True, sa_column_kwargs={"autoincrement": False})
    id: str = Field(max_length=32, unique=True)
    """The record's own id (random, 128 bits, hex)."""
    call_id: str = Field(max_length=32)
    """The call a record belongs to: the id of its `start` record (its `end` record shares it)."""
    kind: str = Field(max_length=16)
    """`call` (an MCP request, a Code Mode run or inner call), `auth` (an auth event) or `admin`."""
    phase: str = Field(max_length=8)
    """`start` (written before a call is forwarded), `end` (its outcome) or `event` (auth, admin)."""
    time_us: int = Field(sa_type=BigInteger)
    """Unix time in microseconds."""
    request_id: str | None = Field(default=None, sa_type=Text)
    trace_id: str | None = Field(default=None, max_length=64)
    principal: str | None = Field(default=None, max_length=255)
    groups: list[str] = Field(default_factory=list, sa_type=JSON)
    client_id: str | None = Field(default=None, sa_type=Text)
    token_id: str | None = Field(default=None, max_length=255)
    endpoint: str | None = Field(default=None, sa_type=Text)
    server: str | None = Field(default=None, max_length=64)
    method: str | None = Field(default=None, max_length=128)
    tool: str | None = Field(default=None, sa_type=Text)
    """The tool or prompt name or resource URI; the action of an admin record; the kind of an auth event."""
    arguments: Any = Field(default=None, sa_type=JSON)
    """Redacted."""
    decision: str | None = Field(default=None, max_length=16)
    policy_ids: list[str] = Field(default_factory=list, sa_type=JSON)
    policy_version: str | None = Field(default=None, max_length=128)
    outcome: str | None = Field(default=None, max_length=16)
    """`ok`, `error`, `denied`, `timeout`, `cancelled` (calls); `success`/`failure` (auth); `ok` (admin)."""
    error_code: str | None = Field(default=None, max_length=64)
    result_size: int | None = Field(default=None, sa_type=BigInteger)
    result_hash: str | None = Field(default=None, max_length=64)
    result: Any = Field(default=None, sa_type=JSON)
    """The redacted result body, when `[audit] record_results` is on."""
    latency_us: int | None = Field(default=None, sa_type=BigInteger)
    upstream_latency_us: int | None = Field(default=None, sa_type=BigInteger)
    parent_id: str | None = Field(default=None, max_length=32)
    """The `call_id` of the Code Mode run an inner call belongs to."""
    details: Any = Field(default=None, sa_type=JSON)
    """What else the kind needs: an admin change's target and details, an auth event's reason, the actor."""
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)


HASHED_FIELDS: tuple[str, ...] = tuple(name for name in AuditRecordRow.model_fields if name != "hash")
"""The fields a record's hash covers (all but the hash itself)."""


class AuditHeadRow(SQLModel, table=True):
    """The chain's last record (one row, id 1)."""

    __tablename__ = "audit_head"

    id: int = Field(primary_key=True)
    seq: int = Field(default=0, sa_type=BigInteger)
    hash: str = Field(default="0" * 64, max_length=64)
    pruned_through: int = Field(default=0, sa_type=BigInteger)
    """Records up to this `seq` were pruned; the checkpoint at it anchors the chain."""


class AuditCheckpointRow(SQLModel, table=True):
    """A signed chain head: Ed25519 over `portal-audit-checkpoint\\n{seq}\\n{hash}\\n{time_us}`."""

    __tablename__ = "audit_checkpoints"

    id: int | None = Field(default=None, primary_key=True)
    seq: int = Field(sa_type=BigInteger, index=True)
    hash: str = Field(max_length=64)
    time_us: int = Field(sa_type=BigInteger)
    kid: str = Field(max_length=64)
    signature: bytes = Field(sa_type=LargeBinary)


class AuditKeyRow(SQLModel, table=True):
    """An Ed25519 key that signs checkpoints; the private half encrypted with the master key."""

    __tablename__ = "audit_keys"

    kid: str = Field(primary_key=True, max_length=64)
    created_at: int = Field(sa_type=BigInteger)
    private_key: bytes = Field(sa_type=LargeBinary)
    public_key: bytes = Field(sa_type=LargeBinary)


def seed_rows(connection: Connection) -> None:
    """The head row, which appending locks."""
    table: Any = getattr(AuditHeadRow, "__table__")  # noqa: B009
    statement = insert_for(connection.dialect.name, table).values(id=1, seq=0, hash="0" * 64, pruned_through=0)
    connection.execute(statement.on_conflict_do_nothing(index_elements=["id"]))
