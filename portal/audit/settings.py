"""`[audit]` settings: what the audit log keeps, where it spools, and how often it signs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

from portal.errors import ConfigError

__all__ = ["AuditSettings"]

OnFailure = Literal["spool", "refuse"]


@dataclass(frozen=True)
class AuditSettings:
    """The `[audit]` table of `portal.toml`."""

    enabled: bool = True
    on_db_failure: OnFailure = "spool"
    """`spool`: every record is first appended to a local write-ahead journal (`spool_path`), which is its
    durability point; the database gets it group-committed in the background, and while the database is away
    the journal keeps everything and is replayed in order when it returns. `refuse`: no journal; a call waits
    for its record's commit and is refused when the database cannot take it. Never is a call forwarded
    unrecorded."""
    spool_path: str = "audit-spool.jsonl"
    """Base name of the journal's segments (`audit-spool.000001.jsonl`, ...), relative to the directory of
    `portal.toml`. One per process: give each replica on a machine its own."""
    fsync: bool = False
    """fsync the journal before a call goes on (one fsync serves every call waiting at that moment). Off, a
    record survives a crash of the portal; on, also a power loss or an OS crash."""
    record_results: bool = False
    """Keep result bodies (redacted); off by default, when only their size and SHA-256 are kept."""
    checkpoint_interval_seconds: float = 60.0
    """How often the chain head is signed (and always at shutdown)."""
    batch_max: int = 512
    """Most records written in one transaction (group commit)."""
    flush_seconds: float = 0.05
    """With the journal (`on_db_failure = "spool"`), how long the writer gathers records before a
    transaction: records reach the database (and searches) this much later, and a busy portal
    writes a few large transactions a second instead of hundreds of small ones."""
    retry_seconds: float = 1.0
    """How often a spooling writer tries the database again."""
    max_argument_chars: int = 65_536
    """Arguments (after redaction) longer than this, as JSON, are kept as their size and SHA-256 only."""

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> AuditSettings:
        """Settings from the `[audit]` table (unknown keys and bad values are `ConfigError`s)."""
        known = {field.name: field for field in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in raw.items():
            if key not in known:
                raise ConfigError(f"[audit]: unknown setting {key!r}")
            default = getattr(cls(), key)
            if isinstance(default, bool):
                if not isinstance(value, bool):
                    raise ConfigError(f"[audit] {key}: expected true or false")
            elif isinstance(default, int | float) and not isinstance(default, bool):
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ConfigError(f"[audit] {key}: expected a number")
                value = type(default)(value)
                if value <= 0:
                    raise ConfigError(f"[audit] {key}: must be positive")
            elif not isinstance(value, str):
                raise ConfigError(f"[audit] {key}: expected a string")
            values[key] = value
        if values.get("on_db_failure", "spool") not in ("spool", "refuse"):
            raise ConfigError("[audit] on_db_failure: expected 'spool' or 'refuse'")
        return cls(**values)
