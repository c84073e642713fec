"""The hash chain: appending records under the head lock, signing checkpoints, verifying.

Everything here is synchronous (the async `AuditLog` runs it in a worker thread) so that
the CLI can use it directly.
"""

from __future__ import annotations

import hashlib
import os
import random
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
from sqlalchemy import JSON, Connection, select, update
from sqlalchemy.engine import Engine

from portal.audit.canonical import canonical_json, canonical_row
from portal.audit.tables import HASHED_FIELDS, AuditCheckpointRow, AuditHeadRow, AuditKeyRow, AuditRecordRow
from portal.auth.crypto import MasterKey
from portal.errors import PortalError

__all__ = [
    "GENESIS_HASH",
    "AuditKeys",
    "ChainWriter",
    "VerifyReport",
    "checkpoint",
    "new_id",
    "now_us",
    "record_hash",
    "verify_chain",
]

GENESIS_HASH = "0" * 64
RECORDS: Any = AuditRecordRow.__table__  # type: ignore[attr-defined]
HEAD: Any = AuditHeadRow.__table__  # type: ignore[attr-defined]
CHECKPOINTS: Any = AuditCheckpointRow.__table__  # type: ignore[attr-defined]
KEYS: Any = AuditKeyRow.__table__  # type: ignore[attr-defined]


_ids = random.Random(secrets.randbits(128))
os.register_at_fork(after_in_child=lambda: _ids.seed(secrets.randbits(128)))


def new_id() -> str:
    """A record id: 48 bits of milliseconds then 80 random bits, in hex (the layout of UUIDv7).

    Time first, so that the id indexes grow at their right edge instead of at random places
    (an insert then touches pages already in cache). Ids name records, they guard nothing: a
    PRNG seeded from the OS is enough, and costs no system call per record.
    """
    return f"{time.time_ns() // 1_000_000:012x}{_ids.getrandbits(80):020x}"


def now_us() -> int:
    return time.time_ns() // 1000


def record_hash(record: dict[str, Any]) -> str:
    """SHA-256 (hex) of the RFC 8785 encoding of every hashed field of `record` (prev_hash included)."""
    body = {name: record.get(name) for name in HASHED_FIELDS}
    return hashlib.sha256(canonical_json(body)).hexdigest()


_NESTED = ("groups", "policy_ids", "arguments", "result", "details")
"""The members of a record that may hold containers (its JSON columns)."""
_JSON_COLUMNS = frozenset(name for name, column in RECORDS.c.items() if isinstance(column.type, JSON))
_COLUMNS = (*HASHED_FIELDS, "hash")


def _insert_sql(dialect: str) -> str:
    mark = "?" if dialect == "sqlite" else "%s"
    return f"INSERT INTO audit_records ({', '.join(_COLUMNS)}) VALUES ({', '.join([mark] * len(_COLUMNS))})"


def _row_values(row: dict[str, Any]) -> tuple[Any, ...]:
    # JSON columns as text, the way SQLAlchemy's JSON type stores them (None as `null`); a direct
    # executemany costs a fraction of the ORM-level insert, and every call writes two records.
    return tuple(orjson.dumps(row[name]).decode() if name in _JSON_COLUMNS else row[name] for name in _COLUMNS)


def _begin_write(connection: Connection) -> None:
    """Start a transaction that holds the write lock (SQLite) or the head row lock (PostgreSQL)."""
    if connection.dialect.name == "sqlite":
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        connection.exec_driver_sql("BEGIN")


def _head_for_update(connection: Connection) -> Any:
    query = select(HEAD).where(HEAD.c.id == 1)
    if connection.dialect.name != "sqlite":
        query = query.with_for_update()
    head = connection.execute(query).one_or_none()
    if head is None:
        raise PortalError("the audit tables are not initialized (run `portal db upgrade`)")
    return head


class ChainWriter:
    """Appends records to the chain of one database, one transaction per batch."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def append(self, records: Sequence[dict[str, Any]], *, dedupe: bool = False) -> list[dict[str, Any]]:
        """Chain and insert `records` in order; with `dedupe`, skip those whose id is already stored (replay)."""
        if not records:
            return []
        with self.engine.connect() as raw:
            connection = raw.execution_options(isolation_level="AUTOCOMMIT")
            _begin_write(connection)
            try:
                head = _head_for_update(connection)
                todo = list(records)
                if dedupe:
                    ids = [record["id"] for record in todo]
                    seen = set(connection.execute(select(RECORDS.c.id).where(RECORDS.c.id.in_(ids))).scalars())
                    todo = [record for record in todo if record["id"] not in seen]
                seq, prev = int(head.seq), str(head.hash)
                rows = []
                for record in todo:
                    seq += 1
                    row = {name: record.get(name) for name in HASHED_FIELDS}
                    row["groups"] = list(row["groups"] or [])
                    row["policy_ids"] = list(row["policy_ids"] or [])
                    row["seq"] = seq
                    row["prev_hash"] = prev
                    row["hash"] = prev = hashlib.sha256(canonical_row(row, _NESTED)).hexdigest()
                    rows.append(row)
                if rows:
                    connection.exec_driver_sql(_insert_sql(connection.dialect.name), [_row_values(row) for row in rows])
                    connection.execute(update(HEAD).where(HEAD.c.id == 1).values(seq=seq, hash=prev))
            except BaseException:
                connection.exec_driver_sql("ROLLBACK")
                raise
            connection.exec_driver_sql("COMMIT")
        return rows


# Keys and checkpoints


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


class AuditKeys:
    """The Ed25519 keys that sign checkpoints, their private halves encrypted with the master key."""

    def __init__(self, engine: Engine, master: MasterKey) -> None:
        self.engine = engine
        self.master = master
        self._current: tuple[str, Ed25519PrivateKey] | None = None

    def current(self) -> tuple[str, Ed25519PrivateKey]:
        if self._current is not None:
            return self._current
        with self.engine.connect() as connection:
            row = connection.execute(select(KEYS).order_by(KEYS.c.created_at.desc()).limit(1)).one_or_none()
        if row is not None:
            private = Ed25519PrivateKey.from_private_bytes(self.master.decrypt(row.private_key, row.kid.encode()))
            self._current = (row.kid, private)
            return self._current
        private = Ed25519PrivateKey.generate()
        public = _raw_public(private.public_key())
        kid = hashlib.sha256(public).hexdigest()[:32]
        raw = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        with self.engine.begin() as connection:
            connection.execute(
                KEYS.insert().values(
                    kid=kid,
                    created_at=int(time.time()),
                    private_key=self.master.encrypt(raw, kid.encode()),
                    public_key=public,
                )
            )
        self._current = (kid, private)
        return self._current

    def trusted(self) -> dict[str, Ed25519PublicKey]:
        """The keys whose private half the master key decrypts to their public half (others were planted)."""
        keys: dict[str, Ed25519PublicKey] = {}
        with self.engine.connect() as connection:
            rows = connection.execute(select(KEYS)).all()
        for row in rows:
            try:
                private = Ed25519PrivateKey.from_private_bytes(self.master.decrypt(row.private_key, row.kid.encode()))
            except (PortalError, ValueError):
                continue
            if _raw_public(private.public_key()) == bytes(row.public_key):
                keys[row.kid] = private.public_key()
        return keys


def _message(seq: int, chain_hash: str, time_us: int) -> bytes:
    return f"portal-audit-checkpoint\n{seq}\n{chain_hash}\n{time_us}".encode()


def checkpoint(engine: Engine, keys: AuditKeys, *, at: tuple[int, str] | None = None) -> dict[str, Any] | None:
    """Sign the chain head (or `at` = (seq, hash)); returns the checkpoint, or None for an empty chain
    or a head already signed."""
    if at is None:
        with engine.connect() as connection:
            head = connection.execute(select(HEAD).where(HEAD.c.id == 1)).one_or_none()
        if head is None or head.seq == 0:
            return None
        at = (int(head.seq), str(head.hash))
    seq, chain_hash = at
    with engine.connect() as connection:
        existing = connection.execute(
            select(CHECKPOINTS.c.id).where(CHECKPOINTS.c.seq == seq, CHECKPOINTS.c.hash == chain_hash)
        ).first()
    if existing is not None:
        return None
    kid, private = keys.current()
    time_us = now_us()
    row = {
        "seq": seq,
        "hash": chain_hash,
        "time_us": time_us,
        "kid": kid,
        "signature": private.sign(_message(seq, chain_hash, time_us)),
    }
    with engine.begin() as connection:
        connection.execute(CHECKPOINTS.insert().values(**row))
    return row


# Verification


@dataclass
class VerifyReport:
    """What `verify_chain` found: `ok`, or the first problem (`kind`, `seq`, `message`)."""

    ok: bool = True
    records: int = 0
    checkpoints: int = 0
    last_checkpoint_seq: int | None = None
    head_seq: int = 0
    kind: str | None = None
    """`changed`, `removed`, `inserted`, `truncated`, `checkpoint` or `anchor`."""
    seq: int | None = None
    message: str = "the audit chain is whole"
    warnings: list[str] = field(default_factory=list)

    def fail(self, kind: str, seq: int | None, message: str) -> VerifyReport:
        self.ok, self.kind, self.seq, self.message = False, kind, seq, message
        return self

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "records": self.records,
            "checkpoints": self.checkpoints,
            "last_checkpoint_seq": self.last_checkpoint_seq,
            "head_seq": self.head_seq,
            "kind": self.kind,
            "seq": self.seq,
            "message": self.message,
            "warnings": self.warnings,
        }


def _valid_checkpoints(
    rows: Iterable[Any], trusted: dict[str, Ed25519PublicKey], report: VerifyReport
) -> dict[int, str] | None:
    valid: dict[int, str] = {}
    for row in rows:
        key = trusted.get(row.kid)
        if key is None:
            report.fail("checkpoint", row.seq, f"the checkpoint at seq {row.seq} is signed by an untrusted key")
            return None
        try:
            key.verify(bytes(row.signature), _message(row.seq, row.hash, row.time_us))
        except InvalidSignature:
            report.fail("checkpoint", row.seq, f"the checkpoint at seq {row.seq} has a bad signature")
            return None
        if valid.get(row.seq, row.hash) != row.hash:
            report.fail("checkpoint", row.seq, f"two checkpoints at seq {row.seq} disagree")
            return None
        valid[row.seq] = row.hash
    return valid


def verify_chain(engine: Engine, keys: AuditKeys, *, batch: int = 2000) -> VerifyReport:
    """Walk the whole chain: every hash, every link, every checkpoint, the head.

    Reports the first record that was changed, removed or inserted, and a tail cut off after
    the last signed checkpoint (or after the head row).
    """
    report = VerifyReport()
    with engine.connect() as connection:
        head = connection.execute(select(HEAD).where(HEAD.c.id == 1)).one_or_none()
        checkpoint_rows = connection.execute(select(CHECKPOINTS).order_by(CHECKPOINTS.c.seq)).all()
    if head is None:
        return report.fail("anchor", None, "the audit head row is missing")
    report.head_seq = int(head.seq)
    report.checkpoints = len(checkpoint_rows)
    valid = _valid_checkpoints(checkpoint_rows, keys.trusted(), report)
    if valid is None:
        return report
    report.last_checkpoint_seq = max(valid) if valid else None
    pruned = int(head.pruned_through)
    expected_seq, expected_prev = 1, GENESIS_HASH
    if pruned:
        if pruned not in valid:
            return report.fail("anchor", pruned + 1, f"no signed checkpoint anchors the chain pruned at seq {pruned}")
        expected_seq, expected_prev = pruned + 1, valid[pruned]
    last_seq = pruned
    after = pruned
    while True:
        with engine.connect() as connection:
            rows = connection.execute(
                select(RECORDS).where(RECORDS.c.seq > after).order_by(RECORDS.c.seq).limit(batch)
            ).all()
        if not rows:
            break
        for row in rows:
            record = row._asdict()
            seq = int(record["seq"])
            report.records += 1
            if seq < expected_seq:
                return report.fail("inserted", seq, f"record {seq} lies before the pruning anchor")
            if record_hash(record) != record["hash"]:
                return report.fail("changed", seq, f"record {seq} was changed (its hash does not match)")
            if seq > expected_seq:
                missing = f"{expected_seq}" if seq == expected_seq + 1 else f"{expected_seq}-{seq - 1}"
                return report.fail("removed", seq, f"record(s) {missing} were removed (before record {seq})")
            if record["prev_hash"] != expected_prev:
                return report.fail("inserted", seq, f"record {seq} does not follow record {seq - 1} (inserted?)")
            if seq in valid and valid[seq] != record["hash"]:
                return report.fail("changed", seq, f"the chain up to record {seq} was rewritten (checkpoint mismatch)")
            expected_seq, expected_prev, last_seq = seq + 1, record["hash"], seq
        after = last_seq
    if last_seq > report.head_seq:
        return report.fail(
            "inserted", report.head_seq + 1, f"records after {report.head_seq} were added outside the portal"
        )
    if report.last_checkpoint_seq is not None and report.last_checkpoint_seq > last_seq:
        return report.fail(
            "truncated",
            last_seq + 1,
            f"the tail was cut off: the chain ends at {last_seq}, "
            f"a signed checkpoint covers {report.last_checkpoint_seq}",
        )
    if report.head_seq > last_seq:
        return report.fail(
            "truncated",
            last_seq + 1,
            f"the tail was cut off: the chain ends at {last_seq}, its head at {report.head_seq}",
        )
    if last_seq and (report.last_checkpoint_seq is None or report.last_checkpoint_seq < last_seq):
        report.warnings.append(
            f"records after {report.last_checkpoint_seq or 0} are not covered by a signed checkpoint yet"
        )
    return report
