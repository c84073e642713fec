"""The live set of upstream servers behind the gateway.

`ServerSet` turns the registry's list of `ServerConfig`s into running
`Upstream`s, applies changes made at run time (added, removed, enabled,
disabled or edited servers) without touching the others, keeps the `Catalog`
in step with what each server offers, and tells the client-facing side when a
list changed so that it can pass `list_changed` on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from portal.catalog import KINDS, Catalog, ServerCatalog, fetch_server_catalog
from portal.errors import UnknownServer, UpstreamError
from portal.pinning import PinStore
from portal.settings import ServerConfig
from portal.upstream.supervisor import Upstream

__all__ = ["ListChanged", "ServerSet"]

logger = logging.getLogger(__name__)

ListChanged = Callable[[str | None, str], Awaitable[None]]
"""`(server, kind)` with kind one of tools, resources, prompts; server None for the set itself."""

_RELIST_START = 0.5
_RELIST_MAX = 30.0
"""Seconds between attempts to list a server that is up but whose lists failed (doubling)."""

_KIND_OF = {"tools": "tools", "resources": "resources", "resourceTemplates": "resources", "prompts": "prompts"}


class ServerSet:
    """Every configured server, running, with its catalog."""

    def __init__(
        self,
        *,
        base_dir: str = ".",
        ping_interval: float = 15.0,
        pins: PinStore | None = None,
        pins_poll_seconds: float = 2.0,
    ) -> None:
        self.catalog = Catalog()
        self.pins = pins
        """Tool pins (issue 7): when set, only pinned, unchanged tools reach the catalog."""
        self._pins_poll = pins_poll_seconds
        self._pin_revisions: dict[str, int] = {}
        self._pins_failed: set[str] = set()
        self._pins_watch: asyncio.Task[None] | None = None
        self.upstreams: dict[str, Upstream] = {}
        self._base_dir = base_dir
        self._ping_interval = ping_interval
        self._listeners: list[ListChanged] = []
        self._refreshing: dict[str, asyncio.Task[None]] = {}
        self._refresh_again: set[str] = set()

    def subscribe(self, listener: ListChanged) -> None:
        self._listeners.append(listener)

    def get(self, name: str) -> Upstream | None:
        return self.upstreams.get(name)

    def ensure_available(self, name: str) -> None:
        """Raise the error a call to server `name` would get now (unknown, disabled, down); None if up."""
        upstream = self.get(name)
        if upstream is None:
            raise UnknownServer(f"Unknown server: {name}", server=name)
        upstream.ensure_available()

    def visible(self) -> list[str]:
        """Names of the servers whose tools are offered right now (enabled, up and listed)."""
        return [
            name
            for name, upstream in sorted(self.upstreams.items())
            if upstream.config.enabled and upstream.health.state == "up" and self.catalog.get(name) is not None
        ]

    async def apply(self, configs: Iterable[ServerConfig]) -> None:
        """Bring the running set in line with `configs`; unchanged servers keep their sessions."""
        wanted = {config.name: config for config in configs}
        if self.pins is not None and self._pins_watch is None:
            self._pins_watch = asyncio.create_task(self._watch_pins(), name="pins-watch")
        for name in [n for n in self.upstreams if n not in wanted]:
            await self._remove(name)
        for name, config in wanted.items():
            current = self.upstreams.get(name)
            if current is not None and current.config == config:
                continue
            if current is not None:
                await self._remove(name)
            upstream = Upstream(
                config, base_dir=self._base_dir, on_change=self._upstream_changed, ping_interval=self._ping_interval
            )
            self.upstreams[name] = upstream
            upstream.start()

    async def _remove(self, name: str) -> None:
        upstream = self.upstreams.pop(name)
        task = self._refreshing.pop(name, None)
        if task is not None:
            task.cancel()
        await upstream.stop()
        if self.catalog.get(name) is not None:
            self.catalog.drop(name)
            await self._emit(name, KINDS)

    async def close(self) -> None:
        watch, self._pins_watch = self._pins_watch, None
        if watch is not None:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
        for task in self._refreshing.values():
            task.cancel()
        await asyncio.gather(*(u.stop() for u in self.upstreams.values()), return_exceptions=True)
        self.upstreams.clear()

    async def _upstream_changed(self, upstream: Upstream, what: str) -> None:
        if what == "disconnected":
            if self.catalog.get(upstream.name) is not None:
                self.catalog.drop(upstream.name)
                await self._emit(upstream.name, KINDS)
            return
        self._schedule_refresh(upstream)

    def _schedule_refresh(self, upstream: Upstream) -> None:
        """Refresh a server's catalog; a change that arrives mid-refresh triggers one more pass."""
        running = self._refreshing.get(upstream.name)
        if running is not None and not running.done():
            self._refresh_again.add(upstream.name)
            return
        self._refreshing[upstream.name] = asyncio.create_task(self._refresh(upstream))

    async def refresh(self, name: str) -> None:
        """Refresh one server's catalog now and wait for it (`portal servers sync`)."""
        upstream = self.upstreams.get(name)
        if upstream is not None:
            await self._refresh(upstream, retry=False)

    async def _refresh(self, upstream: Upstream, *, retry: bool = True) -> None:
        delay = _RELIST_START
        while True:
            self._refresh_again.discard(upstream.name)
            info = upstream.info
            if info is None or self.upstreams.get(upstream.name) is not upstream:
                return
            try:
                fresh = await fetch_server_catalog(
                    upstream.name,
                    info.capabilities,
                    lambda method, params: upstream.request(method, params),
                    allow=upstream.config.exposes,
                )
            except UpstreamError as exc:
                logger.warning("could not list server %s: %s", upstream.name, exc.message)
                if not retry:
                    return
                # A failed listing (a timeout, a bad answer) must not hide a server that is up
                # until it reconnects: try again, backing off, for as long as it stays up.
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RELIST_MAX)
                continue
            if self.upstreams.get(upstream.name) is not upstream:
                return  # removed or replaced while we were listing
            if self.pins is not None:
                fresh = await self._pinned(upstream, fresh)
                if self.upstreams.get(upstream.name) is not upstream:
                    return
            old = self.catalog.get(upstream.name)
            self.catalog.replace(fresh)
            changed = {_KIND_OF[kind] for kind in KINDS if old is None or old.items[kind] != fresh.items[kind]}
            if changed:
                await self._emit(upstream.name, changed)
            if upstream.name not in self._refresh_again:
                return

    async def _pinned(self, upstream: Upstream, fresh: ServerCatalog) -> ServerCatalog:
        """`fresh` with only the tools its pins let through (issue 7: quarantined and pending tools
        are neither listed nor callable; the router answers a call to a tool missing from the
        catalog as it answers one to an unknown tool, so a held tool is not even revealed)."""
        assert self.pins is not None
        name = upstream.name
        try:
            result = await asyncio.to_thread(
                self.pins.reconcile, name, fresh.items["tools"], trust_new_tools=upstream.config.trust_new_tools
            )
        except Exception:
            # Fail closed: without the pins, no tool of the server is known to be unchanged. The
            # pins watcher tries again while the database is away.
            logger.warning("could not check the tool pins of server %s; its tools are hidden", name, exc_info=True)
            self._pins_failed.add(name)
            visible: frozenset[str] = frozenset()
        else:
            self._pins_failed.discard(name)
            self._pin_revisions[name] = result.revision
            visible = result.visible
            for change in result.changes:
                if change.state != "pinned":
                    logger.warning(
                        "server %s: tool %s is %s until approved (portal servers diff %s)%s",
                        name,
                        change.tool,
                        change.state,
                        name,
                        "; flagged: " + "; ".join(str(flag) for flag in change.flags) if change.flags else "",
                    )
        items = dict(fresh.items)
        items["tools"] = [tool for tool in fresh.items["tools"] if tool["name"] in visible]
        return ServerCatalog(fresh.server, items)

    async def _watch_pins(self) -> None:
        """Re-list a server soon after its pins change elsewhere: an approval from the CLI, or a
        change another replica recorded (each server's pin revision is one small query)."""
        assert self.pins is not None
        while True:
            await asyncio.sleep(self._pins_poll)
            try:
                revisions = await asyncio.to_thread(self.pins.revisions)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("tool pins poll failed", exc_info=True)
                continue
            for name, upstream in list(self.upstreams.items()):
                known = self._pin_revisions.get(name)
                stale = known is not None and revisions.get(name, 0) != known
                if (stale or name in self._pins_failed) and upstream.info is not None:
                    self._pin_revisions[name] = revisions.get(name, 0)  # once per change, however long the refresh
                    self._schedule_refresh(upstream)

    async def _emit(self, server: str | None, kinds: Iterable[str]) -> None:
        for kind in sorted({_KIND_OF.get(k, k) for k in kinds}):
            for listener in list(self._listeners):
                try:
                    await listener(server, kind)
                except Exception:
                    logger.exception("list_changed listener failed")

    def health(self) -> Mapping[str, dict[str, Any]]:
        return {name: upstream.health_dict() for name, upstream in sorted(self.upstreams.items())}

    async def wait_ready(self, timeout: float) -> None:
        """Wait (bounded) until every enabled server is up and listed; used by tests and `portal demo`."""

        async def one(upstream: Upstream) -> None:
            if await upstream.wait_up(timeout):
                for _ in range(int(timeout * 100)):
                    if self.catalog.get(upstream.name) is not None:
                        return
                    task = self._refreshing.get(upstream.name)
                    if task is not None:
                        with contextlib.suppress(Exception):
                            await asyncio.wait_for(asyncio.shield(task), timeout)
                    else:
                        await asyncio.sleep(0.01)

        await asyncio.gather(*(one(u) for u in self.upstreams.values() if u.config.enabled))
