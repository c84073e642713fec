"""In-memory token buckets for the login form and the token-side endpoints.

One bucket per key (a client IP, or a user name and client IP), holding up to `per_minute`
tokens and refilled at `per_minute` a minute: a burst of `per_minute` requests passes, then
one every `60 / per_minute` seconds. A request that finds its bucket empty is refused with
the seconds until the next token (`Retry-After`).

Per process: each replica counts its own requests, so N replicas behind a load balancer let
up to N times the rate through. The bucket table is bounded: past `max_keys`, full buckets
(indistinguishable from new ones) are dropped first, then the oldest.

The client IP is the ASGI client address, which uvicorn takes from `X-Forwarded-For` when the
proxy is trusted (`FORWARDED_ALLOW_IPS`; 127.0.0.1 by default): otherwise every client behind a
proxy shares the proxy's address, and its limits.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable

__all__ = ["RateLimiter"]


class RateLimiter:
    """Token buckets of one limit, by key."""

    def __init__(self, per_minute: int, *, max_keys: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        """`per_minute` <= 0 turns the limit off."""
        self.per_minute = per_minute
        self.max_keys = max_keys
        self._clock = clock
        self._rate = per_minute / 60.0
        self._buckets: dict[Hashable, tuple[float, float]] = {}
        """key -> (tokens, when they were counted)."""

    def take(self, key: Hashable) -> float:
        """Spend one token of `key`'s bucket: 0 if there was one, else the seconds until there is."""
        if self.per_minute <= 0:
            return 0.0
        now = self._clock()
        tokens, then = self._buckets.pop(key, (float(self.per_minute), now))
        tokens = min(float(self.per_minute), tokens + (now - then) * self._rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            self._bound(now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self._rate

    @staticmethod
    def retry_after(wait: float) -> str:
        """`Retry-After` (RFC 9110 §10.2.3, whole seconds) for a wait of `wait` seconds."""
        return str(max(1, math.ceil(wait)))

    def _bound(self, now: float) -> None:
        if len(self._buckets) <= self.max_keys:
            return
        full = float(self.per_minute)
        for key in [k for k, (tokens, then) in self._buckets.items() if tokens + (now - then) * self._rate >= full]:
            del self._buckets[key]
        # Still too many (a flood of distinct keys): forget the least recently used, down to 90 %
        # of the bound, so that the next sweep is some time away.
        excess = len(self._buckets) - self.max_keys * 9 // 10
        for key in list(self._buckets)[: max(0, excess)]:
            del self._buckets[key]
