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

Speed (issue 10): a snapshot caches its decisions (`portal.policy.cache`: keyed on everything a
decision reads, so never stale), gives Cedar only the policies whose scope can match a request
(`portal.policy.index`), and filters a list with one partial evaluation per class of tools that
the matching policies cannot tell apart instead of one per tool.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cedarpy

from portal.catalog import Catalog
from portal.policy.cache import DecisionCache, input_key, time_key
from portal.policy.index import PolicyIndex
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
    index: PolicyIndex = field(default_factory=lambda: PolicyIndex("", {}))
    """What each policy can apply to and which `context.time` fields it reads."""
    entities: dict[tuple[Any, ...], Any] = field(default_factory=dict)
    decisions: DecisionCache[Decision] = field(default_factory=lambda: DecisionCache(_CACHE_LIMIT))
    """Decisions of this snapshot (see `portal.policy.cache` for why an entry is never stale)."""
    visible: dict[tuple[Any, ...], bool] = field(default_factory=dict)
    classes: dict[tuple[Any, ...], bool] = field(default_factory=dict)
    """List visibility per class of actions that partial evaluation cannot tell apart."""
    decision_slices: dict[frozenset[int], Any] = field(default_factory=dict)
    """PolicySets of the policies a decision's scope matches (positions in `index.facts`)."""
    slices: dict[frozenset[int], Any] = field(default_factory=dict)
    """PolicySets of the rules matching a class (`PolicyIndex.rules`)."""

    @property
    def version(self) -> str:
        return self.loaded.version

    def clear_caches(self) -> None:
        """Forget every cached answer (the benchmark's "cold"; answers never need it)."""
        self.entities.clear()
        self.decisions.clear()
        self.visible.clear()
        self.classes.clear()
        self.slices.clear()
        self.decision_slices.clear()
        self.index.forget()


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
        PolicyIndex(loaded.text or "", _action_parents(built)),
    )


def _action_parents(built: BuiltSchema) -> dict[str, list[str]]:
    """Each action's groups (`memberOf`), from the schema in force, stub actions included."""
    actions: Mapping[str, Any] = (built.json.get("") or {}).get("actions", {})
    return {
        name: [str(parent["id"]) for parent in action.get("memberOf") or () if isinstance(parent, dict)]
        for name, action in actions.items()
        if isinstance(action, dict)
    }


class PolicyEngine:
    def __init__(self, directory: Path | str, catalog: Catalog, *, poll_interval: float = 1.0) -> None:
        self.directory = Path(directory)
        self.catalog = catalog
        self.poll_interval = poll_interval
        self._lock = threading.Lock()
        self._task: asyncio.Task[None] | None = None
        self._snapshot: Snapshot | None = None
        self.last_error: PolicyError | None = None
        self.on_reload: Callable[[str, PolicyError | None], None] | None = None
        """Told of every reload the folder watcher makes: the version in force, and the error of a refused set."""
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
        except PolicyError as exc:
            self._tell(exc)
            return False
        self._tell(None)
        return True

    def _tell(self, error: PolicyError | None) -> None:
        if self.on_reload is not None:
            try:
                self.on_reload(self.version, error)
            except Exception:  # a listener must not stop the watcher
                log.exception("policy reload listener")

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
        """Deny unless a policy permits; a forbid wins. Arguments that do not fit the schema are denied.

        Decisions are cached per snapshot on everything they depend on (`portal.policy.cache`)."""
        snap = self.snapshot
        input_type = snap.built.input_types.get(action)
        if input_type is None:
            return Decision(False, (), snap.version, errors=(f"no action {action}",))
        try:
            value = snap.built.converter().convert(input_type, dict(arguments or {}))
        except ArgumentTypeError as exc:
            return Decision(False, (), snap.version, errors=(str(exc),))
        # One instant for both the key and the context, so an hour boundary cannot fall between.
        moment = time.time() if now is None else now
        key: tuple[Any, ...] | None = None
        when = time_key(snap.index.time_fields, moment)
        if when is not None:
            text = input_key(value)
            if text is not None:
                key = (who.subject, who.groups, who.client_id, who.scopes, action, server, via_codemode, text, when)
                cached = snap.decisions.get(key)
                if cached is not None:
                    return cached
        decision = self._evaluate(snap, who, action, server, value, via_codemode, moment)
        if key is not None:
            snap.decisions.put(key, decision)
        return decision

    def _evaluate(
        self, snap: Snapshot, who: Subject, action: str, server: str, value: Any, via_codemode: bool, moment: float
    ) -> Decision:
        request = {
            "principal": f'User::"{_quote(who.subject)}"',
            "action": f'Action::"{_quote(action)}"',
            "resource": f'Server::"{_quote(server)}"',
            "context": self.context(who, value, via_codemode=via_codemode, now=moment),
        }
        policies = self._decision_slice(snap, who, action, server)
        result = cedarpy.is_authorized(request, policies, self._entities(snap, who, server), snap.schema)
        # Cedar gives its reasons in no set order (a hash set, reordered call to call): in the order of
        # the set, a decision reads the same every time, cached or not.
        sources = sorted(
            (snap.by_cedar_id[reason] for reason in result.diagnostics.reasons if reason in snap.by_cedar_id),
            key=lambda source: source.index,
        )
        return Decision(
            result.allowed,
            tuple(source.policy_id for source in sources),
            snap.version,
            tuple(source.annotations for source in sources),
            tuple(result.diagnostics.errors),
        )

    @staticmethod
    def _decision_slice(snap: Snapshot, who: Subject, action: str, server: str) -> Any:
        """The policies whose scope can match the request, as a PolicySet under their own ids.

        A policy whose scope does not match is false before its conditions are evaluated (the
        scope is the first conjunct), so it can be neither a reason nor an error: the decision on
        the slice is the decision on the whole set, and Cedar's cost grows with the set's size."""
        index = snap.index
        if any(item.index < 0 for item in index.facts):
            return snap.policies
        matched = index.matching(who.subject, who.groups, action, server)
        policies = snap.decision_slices.get(matched)
        if policies is None:
            policies = cedarpy.PolicySet.from_json_str(index.policy_set(matched))
            if len(snap.decision_slices) >= _CACHE_LIMIT // 10:
                snap.decision_slices.clear()
            snap.decision_slices[matched] = policies
        return policies

    def visible(self, who: Subject, action: str, server: str, *, via_codemode: bool = False) -> bool:
        """Whether some arguments could permit `action` (partial evaluation, `context.input` unknown).

        `time` is unknown too (a listing is cached), so a tool allowed only at some hours is listed.

        The answer is `partially_evaluate`'s, without running it per tool: the policies whose scope
        matches the request are looked up (`PolicyIndex`); when they settle it alone (no permit;
        an unconditional forbid; unconditional permits and no forbid) that is the answer Cedar
        would give, and otherwise one partial evaluation answers for every action matched by the
        same policies (none of them reading `action`, or `resource`, in a condition: then the
        action, or the server, is part of the class)."""
        snap = self.snapshot
        key = (who.subject, who.groups, who.client_id, who.scopes, action, server, via_codemode)
        cached = snap.visible.get(key)
        if cached is not None:
            return cached
        if action not in snap.built.input_types:
            return False
        verdict = self._visible(snap, who, action, server, via_codemode)
        if len(snap.visible) >= _CACHE_LIMIT * 10:
            snap.visible.clear()
        snap.visible[key] = verdict
        return verdict

    def _visible(self, snap: Snapshot, who: Subject, action: str, server: str, via_codemode: bool) -> bool:
        index = snap.index
        matched = index.matching(who.subject, who.groups, action, server)
        facts = [index.facts[position] for position in matched]
        if not any(item.permit for item in facts):
            return False
        forbids = [item for item in facts if not item.permit]
        if any(not item.conditional for item in forbids):
            return False
        if not forbids and any(not item.conditional for item in facts):
            return True
        rules = frozenset(item.rule for item in facts)
        group = (
            who.subject,
            who.groups,
            who.client_id,
            who.scopes,
            via_codemode,
            rules,
            action if any(item.reads_action for item in facts) else None,
            server if any(item.reads_resource for item in facts) else None,
        )
        verdict = snap.classes.get(group)
        if verdict is None:
            policies = snap.slices.get(rules)
            if policies is None:
                # Only the matching policies, each once: the others cannot match this request and
                # would only add time (Cedar evaluates, and returns a residual of, every policy).
                policies = cedarpy.PolicySet.from_json_str(index.rule_set(rules))
                if len(snap.slices) >= _CACHE_LIMIT // 10:
                    snap.slices.clear()
                snap.slices[rules] = policies
            verdict = self.partially_evaluate(
                who, action, server, via_codemode=via_codemode, snap=snap, policies=policies
            )
            if len(snap.classes) >= _CACHE_LIMIT:
                snap.classes.clear()
            snap.classes[group] = verdict
        return verdict

    def partially_evaluate(
        self,
        who: Subject,
        action: str,
        server: str,
        *,
        via_codemode: bool = False,
        snap: Snapshot | None = None,
        policies: Any = None,
    ) -> bool:
        """`visible`'s answer by one Cedar partial evaluation of this very request (no sharing, no
        cache), against the whole set in force unless `policies` (a slice of it) is given."""
        snap = snap or self.snapshot
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
        result = cedarpy.is_authorized_partial(
            request, snap.policies if policies is None else policies, self._entities(snap, who, server)
        )
        return _could_allow(result)

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
