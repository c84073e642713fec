"""Keeps one upstream server connected, healthy and visible.

An `Upstream` owns the `Connector` of one configured server: it starts it,
restarts it with exponential back-off when it dies (a crashed stdio process, a
remote that went away), pings it when idle, and keeps the health figures that
`portal servers list` and `/readyz` show. Calls to a server that is down fail at
once with the last cause, so one broken server costs only its own tools.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from portal.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from portal.settings import ServerConfig, resolve_secret
from portal.upstream.base import Connector, NotificationHandler, UpstreamInfo

__all__ = ["Health", "Upstream", "build_connector"]

logger = logging.getLogger(__name__)

State = Literal["starting", "up", "down", "disabled"]

BACKOFF_START = 0.25
BACKOFF_MAX = 30.0


@dataclass
class Health:
    """What an operator sees of one server."""

    state: State = "starting"
    protocol_version: str | None = None
    last_error: str | None = None
    since: float = 0.0
    calls: int = 0
    errors: int = 0
    restarts: int = 0

    def as_dict(self, latencies: deque[float]) -> dict[str, Any]:
        ordered = sorted(latencies)
        p50 = ordered[len(ordered) // 2] * 1000 if ordered else None
        return {
            "state": self.state,
            "protocol_version": self.protocol_version,
            "last_error": self.last_error,
            "calls": self.calls,
            "errors": self.errors,
            "restarts": self.restarts,
            "p50_ms": round(p50, 3) if p50 is not None else None,
        }


def build_connector(config: ServerConfig, base_dir: str) -> Connector:
    """The connector for a server's kind; imports lazily so each transport costs only when used."""
    if config.url is not None:
        from portal.upstream.http import HttpConnector

        return HttpConnector(config.name, config.url, protocol=config.protocol)
    if config.command is not None:
        from portal.upstream.stdio import StdioConnector

        env = {
            key: resolve_secret(value, base_dir=base_dir) if value.startswith(("env:", "file:")) else value
            for key, value in config.env.items()
        }
        # "python" means the portal's own interpreter, so examples work inside any virtualenv.
        command = sys.executable if config.command in ("python", "python3") else config.command
        return StdioConnector(
            config.name, command, list(config.args), env=env, cwd=config.cwd or base_dir, protocol=config.protocol
        )
    from portal.upstream.hosted import HostedConnector

    assert config.module is not None
    return HostedConnector(config.name, config.module)


ChangeHandler = Callable[["Upstream", str], Awaitable[None]]


class Upstream:
    """One configured server and its live connection."""

    def __init__(
        self,
        config: ServerConfig,
        *,
        base_dir: str = ".",
        on_change: ChangeHandler | None = None,
        ping_interval: float = 15.0,
        connector_factory: Callable[[ServerConfig, str], Connector] = build_connector,
    ) -> None:
        self.config = config
        self.name = config.name
        self.health = Health(state="starting" if config.enabled else "disabled", since=time.time())
        self._base_dir = base_dir
        self._on_change = on_change
        self._ping_interval = ping_interval
        self._factory = connector_factory
        self._connector: Connector | None = None
        self._latencies: deque[float] = deque(maxlen=512)
        self._task: asyncio.Task[None] | None = None
        self._up = asyncio.Event()
        self._wake = asyncio.Event()
        self._last_call = 0.0

    @property
    def info(self) -> UpstreamInfo | None:
        return self._connector.info if self._connector is not None and self.health.state == "up" else None

    def health_dict(self) -> dict[str, Any]:
        return self.health.as_dict(self._latencies)

    def start(self) -> None:
        if self._task is None and self.config.enabled:
            self._task = asyncio.create_task(self._supervise(), name=f"upstream:{self.name}")

    async def wait_up(self, timeout: float) -> bool:
        """Wait until the server is up; False if it is not within `timeout` seconds."""
        try:
            async with asyncio.timeout(timeout):
                await self._up.wait()
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._drop_connector()
        self._set_state("disabled" if not self.config.enabled else "down", self.health.last_error)

    def _set_state(self, state: State, error: str | None = None) -> None:
        if state != self.health.state:
            self.health.since = time.time()
            logger.info("server %s is %s%s", self.name, state, f": {error}" if error else "")
        self.health.state = state
        self.health.last_error = error
        if state == "up":
            self._up.set()
        else:
            self._up.clear()

    async def _drop_connector(self) -> None:
        connector, self._connector = self._connector, None
        if connector is not None:
            with contextlib.suppress(Exception):
                await connector.close()

    async def _supervise(self) -> None:
        delay = BACKOFF_START
        while True:
            connector = self._factory(self.config, self._base_dir)
            connector.on_notification = self._notified
            try:
                async with asyncio.timeout(max(self.config.timeout, 10.0)):
                    info = await connector.start()
            except (UpstreamError, TimeoutError, OSError) as exc:
                cause = exc.cause if isinstance(exc, UpstreamError) else f"did not start: {type(exc).__name__}"
                with contextlib.suppress(Exception):
                    await connector.close()
                self._set_state("down", cause)
                await self._sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            self._connector = connector
            self.health.protocol_version = info.protocol_version
            self._set_state("up")
            delay = BACKOFF_START
            await self._changed("connected")
            await self._watch(connector)
            await self._drop_connector()
            self.health.restarts += 1
            await self._changed("disconnected")
            await self._sleep(delay)

    async def _watch(self, connector: Connector) -> None:
        """Return when the connection has failed: closed, or a failed call or ping woke us."""
        while not connector.closed:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(self._ping_interval, 1.0)):
                    await self._wake.wait()
            if self.health.state == "down":
                return
            if time.monotonic() - self._last_call > self._ping_interval:
                self._last_call = time.monotonic()
                try:
                    await self._ping(connector)
                except UpstreamError as exc:
                    self._set_state("down", exc.cause)
                    return
        self._set_state("down", self.health.last_error or "closed its connection")

    async def _ping(self, connector: Connector) -> None:
        assert connector.info is not None
        # `ping` is gone in 2026-07-28; `server/discover` is the cheapest request there.
        if connector.info.modern:
            await connector.request("server/discover", {}, timeout=self.config.timeout)
        else:
            await connector.request("ping", None, timeout=self.config.timeout)

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()

    async def _notified(self, method: str, params: Mapping[str, Any]) -> None:
        if method.endswith("/list_changed"):
            await self._changed(method)

    async def _changed(self, what: str) -> None:
        if self._on_change is not None:
            try:
                await self._on_change(self, what)
            except Exception:
                logger.exception("change handler for server %s failed", self.name)

    def ensure_available(self) -> None:
        """Raise `UpstreamUnavailable`, with the last cause, unless the server is up."""
        if not self.config.enabled:
            raise UpstreamUnavailable(self.name, "is disabled")
        if self._connector is None or self.health.state != "up":
            raise UpstreamUnavailable(self.name, f"is unavailable: {self.health.last_error or 'starting'}")

    async def request(
        self,
        method: str,
        params: Mapping[str, Any] | None,
        *,
        on_notification: NotificationHandler | None = None,
    ) -> dict[str, Any]:
        """Send one request; fails fast with the last cause when the server is down."""
        self.ensure_available()
        connector = self._connector
        assert connector is not None
        timeout = self.config.timeout
        started = time.perf_counter()
        self._last_call = time.monotonic()
        self.health.calls += 1
        try:
            # The connector enforces the timeout too; this bound holds even if it cannot.
            async with asyncio.timeout(timeout + 0.5):
                result = await connector.request(method, params, timeout=timeout, on_notification=on_notification)
        except TimeoutError:
            self.health.errors += 1
            raise UpstreamTimeout(self.name, f"did not answer within {timeout:g}s") from None
        except UpstreamUnavailable as exc:
            self.health.errors += 1
            self._set_state("down", exc.cause)
            self._wake.set()
            raise
        except UpstreamError:
            self.health.errors += 1
            raise
        self._latencies.append(time.perf_counter() - started)
        return result
