"""The decision cache: a Cedar decision reused for a request that cannot decide otherwise.

A decision is a pure function of the policy set and schema (the snapshot), the principal's
entities (subject, groups, client), the action, the resource (server) and the context
(`input`, `client_id`, `scopes`, `via_codemode`, `time`). The key holds every one of them:

- the snapshot: each `Snapshot` owns its cache, so a reload or a catalog change (a new
  snapshot) starts empty and a stale entry is never consulted;
- subject, groups, client id, scopes, action, server, via_codemode, as given;
- `context.input` as the canonical JSON (sorted keys) of its *converted* value, which is exactly
  what Cedar sees (unnamed arguments dropped, numbers as the decimals policies compare);
- `context.time` at the granularity the policies read it (`PolicyIndex.time_fields`): nothing when
  no policy reads the clock, the UTC hour and/or weekday when only those are read. A set that reads
  `context.time.unix` (or the time record whole) is not cached at all.

Obligations (`@rate`, `@approval`, `@redact`) are carried by the decision and applied per call by
`PolicyStage` after it, so a cached decision still counts against a rate and still asks for an
approval: only Cedar's evaluation is reused. Large inputs are not cached (they rarely repeat and
would hold memory); entries are evicted least recently used first.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["MAX_INPUT_CHARS", "DecisionCache", "input_key", "time_key"]

MAX_INPUT_CHARS = 4096
"""Inputs whose canonical JSON is longer are decided every time, never kept."""

T = TypeVar("T")


class DecisionCache(Generic[T]):
    """A bounded, thread-safe LRU map (decisions are made on the event loop and in worker threads)."""

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self._items: OrderedDict[Hashable, T] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> T | None:
        with self._lock:
            found = self._items.get(key)
            if found is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return found

    def put(self, key: Hashable, value: T) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.limit:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


def input_key(value: object) -> str | None:
    """Canonical JSON of a converted `context.input`; None when too large to keep."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text if len(text) <= MAX_INPUT_CHARS else None


def time_key(fields: frozenset[str], moment: float) -> tuple[int, ...] | None:
    """The part of `context.time` at `moment` that can change a decision, given the `fields` read.

    () when no policy reads the clock; (hour, weekday) with -1 for a field not read; None (do not
    cache) when `unix` is read, since no two seconds share it. `moment` must be the very instant
    the decision's context is built from, or an hour boundary could fall between the two."""
    if not fields:
        return ()
    if "unix" in fields:
        return None
    utc = time.gmtime(moment)
    return (utc.tm_hour if "hour" in fields else -1, utc.tm_wday if "weekday" in fields else -1)
