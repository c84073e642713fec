"""The policy engine: the set in force, decisions, list visibility, hot reload.

A `Snapshot` is everything one decision needs (parsed policies, the schema generated
from the catalog, caches); it is immutable once built and replaced as a whole, so a
reload never disturbs a decision in flight: a decision reads `engine.snapshot` once.

- `reload()` reads `policies/`, parses and validates it against the schema of the live
  catalog; a broken set raises `PolicyError` (file, line, reason) and the running set stays.
- `start()` polls the folder's mtimes (`poll_interval`) and reloads on change.
- A catalog change (its `generation`) rebuilds the schema for the same policies on the next
  decision. A policy that names a tool which has gone away is logged, not refused: a server
  going down must not take the policies with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cedarpy

from portal.catalog import Catalog
from portal.policy.loader import (
    LoadedPolicies,
    PolicyError,
    PolicySource,
    load_policy_files,
    parse_policies,
    validation_problems,
)
from portal.policy.schema import CODEMODE_SERVER, ArgumentTypeError, BuiltSchema, build_schema

__all__ = ["Decision", "PolicyEngine", "Snapshot", "Subject"]

log = logging.getLogger("portal.policy")

_CACHE_LIMIT = 10_000


@dataclass(frozen=True)
class Subject:
    """Who a decision is about (a `Principal` fits)."""

    subject: str
    groups: tuple[str, ...] = ()
    client_id: str = ""
    scopes: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Decision:
    allowed: bool
    policy_ids: tuple[str, ...]
    """The @ids of the deciding policies (the forbids when denied by one, the permits when allowed)."""
    version: str
    annotations: tuple[Mapping[str, str], ...] = ()
    errors: tuple[str, ...] = ()

    @property
    def decision(self) -> str:
        return "allow" if self.allowed else "deny"

    def annotation_values(self, name: str) -> list[str]:
        return [notes[name] for notes in self.annotations if name in notes]


@dataclass
class Snapshot:
    loaded: LoadedPolicies
    built: BuiltSchema
    schema: Any
    """The cedarpy Schema handle."""
    policies: Any
    """The cedarpy PolicySet handle."""
    generation: int
    warnings: tuple[str, ...] = ()
    by_cedar_id: dict[str, PolicySource] = field(default_factory=dict)
    entities: dict[tuple[Any, ...], Any] = field(default_factory=dict)
    visible: dict[tuple[Any, ...], bool] = field(default_factory=dict)

    @property
    def version(self) -> str:
        return self.loaded.version


def _tools_of(catalog: Catalog) -> dict[str, list[dict[str, Any]]]:
    return {server.server: list(server.items["tools"]) for server in catalog.servers()}


def build_snapshot(loaded: LoadedPolicies, catalog: Catalog, *, strict: bool = True) -> Snapshot:
    """Generate the schema for `catalog`, validate `loaded` against it (strict: refuse on error)."""
    try:
        built = build_schema(loaded.stub, _tools_of(catalog))
        schema = cedarpy.Schema.from_json_str(json.dumps(built.json))
    except ValueError as exc:
        raise PolicyError([f"schema.cedarschema: {exc}"]) from exc
    problems = validation_problems(loaded, schema)
    if problems and strict:
        raise PolicyError(problems)
    policies = cedarpy.PolicySet.from_str(loaded.text or "")
    return Snapshot(
        loaded,
        built,
        schema,
        policies,
        catalog.generation,
        tuple(problems),
        {f"policy{source.index}": source for source in loaded.sources},
    )


class PolicyEngine:
    def __init__(self, directory: Path | str, catalog: Catalog, *, poll_interval: float = 1.0) -> None:
        self.directory = Path(directory)
        self.catalog = catalog
        self.poll_interval = poll_interval
        self._lock = threading.Lock()
        self._task: asyncio.Task[None] | None = None
        self._snapshot: Snapshot | None = None
        self.last_error: PolicyError | None = None
        self._seen: dict[str, float] = {}
        self.reload()

    @classmethod
    def from_settings(cls, settings: Any, catalog: Catalog, **options: Any) -> PolicyEngine:
        return cls(settings.resolve_path(settings.policies_dir), catalog, **options)

    # the set in force

    @property
    def snapshot(self) -> Snapshot:
        snap = self._snapshot
        assert snap is not None
        if snap.generation != self.catalog.generation:
            with self._lock:
                snap = self._snapshot
                assert snap is not None
                if snap.generation != self.catalog.generation:
                    snap = build_snapshot(snap.loaded, self.catalog, strict=False)
                    for warning in snap.warnings:
                        log.warning("policy no longer validates against the catalog: %s", warning)
                    self._snapshot = snap
        return snap

    @property
    def version(self) -> str:
        return self.snapshot.version

    def reload(self) -> str:
        """Load `policies/` again; returns the version in force. Raises PolicyError (set unchanged)."""
        with self._lock:
            try:
                texts, stub, mtimes = load_policy_files(self.directory)
                loaded = parse_policies(texts, stub)
                loaded.files.update(mtimes)
                snap = build_snapshot(loaded, self.catalog)
            except PolicyError as exc:
                self.last_error = exc
                log.error("policy set refused, keeping %s: %s", self._snapshot and self._snapshot.version, exc)
                raise
            self._snapshot = snap
            self._seen = dict(loaded.files)
            self.last_error = None
            log.info("policy set %s in force (%d policies)", snap.version, len(loaded.sources))
            return snap.version

    def _mtimes(self) -> dict[str, float]:
        current: dict[str, float] = {}
        with contextlib.suppress(OSError):
            for path in self.directory.glob("*.cedar"):
                current[path.name] = path.stat().st_mtime_ns
            current["schema.cedarschema"] = (self.directory / "schema.cedarschema").stat().st_mtime_ns
        return current

    def _changed(self) -> bool:
        return self._mtimes() != self._seen

    def poll(self) -> bool:
        """Reload when the folder changed since the last attempt; True if a new set is in force.

        A refused set is tried once per change (its mtimes count as seen), not on every poll."""
        current = self._mtimes()
        if current == self._seen:
            return False
        self._seen = current
        try:
            self.reload()
        except PolicyError:
            return False
        return True

    async def start(self) -> None:
        if self._task is None and self.poll_interval > 0:
            self._task = asyncio.create_task(self._watch(), name="policy-watcher")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                if self._changed():
                    await asyncio.to_thread(self.poll)
            except Exception:  # the watcher must outlive any one bad reload
                log.exception("policy watcher")

    # decisions

    def _entities(self, snap: Snapshot, who: Subject, server: str) -> Any:
        key = (who.subject, who.groups, who.client_id)
        entities = snap.entities.get(key)
        if entities is None:
            items: list[dict[str, Any]] = [
                {
                    "uid": {"type": "User", "id": who.subject},
                    "attrs": {},
                    "parents": [{"type": "Group", "id": group} for group in who.groups],
                },
                *({"uid": {"type": "Group", "id": group}, "attrs": {}, "parents": []} for group in who.groups),
                {"uid": {"type": "Client", "id": who.client_id}, "attrs": {}, "parents": []},
            ]
            servers = {info.server for info in snap.built.actions.values()} | {CODEMODE_SERVER}
            items.extend({"uid": {"type": "Server", "id": name}, "attrs": {}, "parents": []} for name in servers)
            entities = cedarpy.Entities.from_json_str(json.dumps(items), snap.schema)
            if len(snap.entities) >= _CACHE_LIMIT:
                snap.entities.clear()
            snap.entities[key] = entities
        return entities

    @staticmethod
    def context(
        who: Subject, input_value: Any, *, via_codemode: bool = False, now: float | None = None
    ) -> dict[str, Any]:
        moment = time.time() if now is None else now
        utc = time.gmtime(moment)
        return {
            "input": input_value,
            "client_id": who.client_id,
            "scopes": sorted(who.scopes),
            "via_codemode": via_codemode,
            "time": {"unix": int(moment), "hour": utc.tm_hour, "weekday": utc.tm_wday},
        }

    def decide(
        self,
        who: Subject,
        action: str,
        server: str,
        arguments: Mapping[str, Any] | None,
        *,
        via_codemode: bool = False,
        now: float | None = None,
    ) -> Decision:
        """Deny unless a policy permits; a forbid wins. Arguments that do not fit the schema are denied."""
        snap = self.snapshot
        input_type = snap.built.input_types.get(action)
        if input_type is None:
            return Decision(False, (), snap.version, errors=(f"no action {action}",))
        try:
            value = snap.built.converter().convert(input_type, dict(arguments or {}))
        except ArgumentTypeError as exc:
            return Decision(False, (), snap.version, errors=(str(exc),))
        request = {
            "principal": f'User::"{_quote(who.subject)}"',
            "action": f'Action::"{_quote(action)}"',
            "resource": f'Server::"{_quote(server)}"',
            "context": self.context(who, value, via_codemode=via_codemode, now=now),
        }
        result = cedarpy.is_authorized(request, snap.policies, self._entities(snap, who, server), snap.schema)
        sources = [snap.by_cedar_id[reason] for reason in result.diagnostics.reasons if reason in snap.by_cedar_id]
        return Decision(
            result.allowed,
            tuple(source.policy_id for source in sources),
            snap.version,
            tuple(source.annotations for source in sources),
            tuple(result.diagnostics.errors),
        )

    def visible(self, who: Subject, action: str, server: str, *, via_codemode: bool = False) -> bool:
        """Whether some arguments could permit `action` (partial evaluation, `context.input` unknown).

        `time` is unknown too (a listing is cached), so a tool allowed only at some hours is listed."""
        snap = self.snapshot
        key = (who.subject, who.groups, who.client_id, who.scopes, action, server, via_codemode)
        cached = snap.visible.get(key)
        if cached is not None:
            return cached
        if action not in snap.built.input_types:
            return False
        context = self.context(who, {"__extn": {"fn": "unknown", "arg": "input"}}, via_codemode=via_codemode)
        context["time"] = {"__extn": {"fn": "unknown", "arg": "time"}}
        request = {
            "principal": f'User::"{_quote(who.subject)}"',
            "action": f'Action::"{_quote(action)}"',
            "resource": f'Server::"{_quote(server)}"',
            "context": context,
        }
        # No schema here: cedarpy refuses a context holding unknowns against a typed one; the
        # policies were validated at load, and a call is always decided in full by `decide`.
        result = cedarpy.is_authorized_partial(request, snap.policies, self._entities(snap, who, server))
        verdict = _could_allow(result)
        if len(snap.visible) >= _CACHE_LIMIT * 10:
            snap.visible.clear()
        snap.visible[key] = verdict
        return verdict

    def tool_action(self, server: str, tool: str) -> str | None:
        from portal.catalog import aggregate_name

        name = aggregate_name(server, tool)
        return name if name in self.snapshot.built.actions else None

    def sources(self) -> Iterable[PolicySource]:
        return self.snapshot.loaded.sources


def _could_allow(result: Any) -> bool:
    decision = result.decision
    if decision == cedarpy.Decision.Allow:
        return True
    if decision == cedarpy.Decision.Deny:
        return False
    nontrivial = set(result.diagnostics.nontrivial_residuals)
    residuals: Mapping[str, Any] = result.residuals or {}
    for policy_id, residual in residuals.items():
        if residual.get("effect") == "permit" and (policy_id in nontrivial or _not_false(residual)):
            return True
    return False


def _not_false(residual: Mapping[str, Any]) -> bool:
    return all(condition.get("body") != {"Value": False} for condition in residual.get("conditions", []))


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')
