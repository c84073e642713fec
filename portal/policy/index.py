"""What each policy of a set can apply to, read once from its scope and conditions.

Two speed-ups of the engine rest on this reading, and both must never change an answer:

- the decision cache (`portal.policy.cache`) needs to know which parts of `context.time` any
  policy reads (`time_fields`): a decision can only be reused at the granularity they are read;
- list filtering (`PolicyEngine.visible`) needs the policies whose scope can match a request
  (`matching`), and whether a matched policy looks at `action` or `resource` beyond its scope:
  two actions matched by the same policies, none of which reads `action` in a condition, get
  the same partial evaluation, so one evaluation answers for all of them.

Anything this reading does not understand is treated the conservative way: a scope it cannot
read matches everything and counts as a condition (so Cedar decides), and a `context` read it
cannot place counts as reading the exact time (which turns the decision cache off).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import cedarpy

__all__ = ["TIME_FIELDS", "PolicyFacts", "PolicyIndex"]

TIME_FIELDS = frozenset({"unix", "hour", "weekday"})
"""The attributes of `context.time`; reading the record whole counts as reading `unix`."""

_OPEN_SCOPE = {"principal": {"op": "All"}, "action": {"op": "All"}, "resource": {"op": "All"}}


@dataclass(frozen=True)
class PolicyFacts:
    """One policy, as far as list filtering and the decision cache need to know it."""

    index: int
    permit: bool
    conditional: bool
    """It has a `when`/`unless`, or a scope this reading does not understand: Cedar must decide."""
    reads_action: bool
    """A condition names `action`, or the action scope was not understood: answers differ per action."""
    reads_resource: bool
    """Likewise for `resource` (the server)."""
    time_fields: frozenset[str]
    rule: int
    """Policies with the same rule decide alike wherever their scopes match (see `PolicyIndex.rules`)."""
    principal: Mapping[str, Any] | None
    """The principal scope (EST), None when not understood (then it matches everyone)."""
    resource: Mapping[str, Any] | None


class PolicyIndex:
    """The facts of every policy of a set, and which of them a request can match.

    `matching` answers from three lookups (principal, action, resource) cached per key, so a
    listing of many tools costs a few set intersections per tool, not a pass over the set."""

    def __init__(self, policy_text: str, action_parents: Mapping[str, Iterable[str]]) -> None:
        est = json.loads(cedarpy.policies_to_json_str(policy_text)) if policy_text.strip() else {}
        static: Mapping[str, Any] = est.get("staticPolicies") or {}
        self.facts: list[PolicyFacts] = []
        self._any_action: set[int] = set()
        self._eq_action: dict[str, set[int]] = {}
        """Policies scoped `action == Action::"name"`: that action only."""
        self._in_action: dict[str, set[int]] = {}
        """Policies scoped `action in Action::"name"` (or a list naming it): it and its members."""
        self.rules: list[dict[str, Any]] = []
        """A policy as it stands where its scope matches: its effect and conditions under an open
        scope (a scope matching the request is true, so it is a conjunct that adds nothing). Policies
        differing only in scope and annotations share a rule, and one copy evaluates for all. A
        policy whose scope is not understood keeps its scope (its rule is itself)."""
        self._rule_ids: dict[str, int] = {}
        self._bodies: list[tuple[str, Mapping[str, Any]]] = []
        """(Cedar id, EST) of each policy, by position."""
        for cedar_id, body in sorted(static.items(), key=lambda item: _cedar_index(item[0])):
            self._add(_cedar_index(cedar_id), body)
        self.time_fields: frozenset[str] = frozenset().union(*(facts.time_fields for facts in self.facts))
        self._parents = {name: tuple(parents) for name, parents in action_parents.items()}
        self._actions: dict[str, frozenset[int]] = {}
        self._principals: dict[tuple[str, frozenset[str]], frozenset[int]] = {}
        self._resources: dict[str, frozenset[int]] = {}

    def _add(self, index: int, body: Mapping[str, Any]) -> None:
        refs: set[str] = set()
        time_fields: set[str] = set()
        for condition in body.get("conditions") or ():
            _scan(condition.get("body"), refs, time_fields)
        action = _action_scope(body.get("action") or {})
        principal = body.get("principal") or {}
        resource = body.get("resource") or {}
        principal_known = _scope_shape(principal)
        resource_known = _scope_shape(resource)
        understood = action is not None and principal_known and resource_known and index >= 0
        position = len(self.facts)
        self._bodies.append((f"policy{index}", body))
        if understood:
            rule_body = {"effect": body.get("effect"), **_OPEN_SCOPE, "conditions": body.get("conditions") or []}
        else:
            rule_body = {key: value for key, value in body.items() if key != "annotations"}
        rule_text = json.dumps(rule_body, sort_keys=True)
        rule = self._rule_ids.get(rule_text)
        if rule is None:
            rule = self._rule_ids[rule_text] = len(self.rules)
            self.rules.append(rule_body)
        self.facts.append(
            PolicyFacts(
                index=index,
                permit=body.get("effect") == "permit",
                conditional=bool(body.get("conditions")) or not understood,
                reads_action="action" in refs or action is None,
                reads_resource="resource" in refs or not resource_known,
                time_fields=frozenset(time_fields),
                rule=rule,
                principal=principal if principal_known else None,
                resource=resource if resource_known else None,
            )
        )
        if action is None or action[0] == "All":
            self._any_action.add(position)
        elif action[0] == "==":
            self._eq_action.setdefault(action[1][0], set()).add(position)
        else:
            for name in action[1]:
                self._in_action.setdefault(name, set()).add(position)

    def rule_set(self, rules: Iterable[int]) -> str:
        """The Cedar JSON of a policy set holding `rules` (for `cedarpy.PolicySet.from_json_str`)."""
        static = {f"rule{rule}": self.rules[rule] for rule in sorted(rules)}
        return json.dumps({"staticPolicies": static, "templates": {}, "templateLinks": []})

    def policy_set(self, positions: Iterable[int]) -> str:
        """The Cedar JSON of a set holding the policies at `positions`, under their ids in the whole
        set (`policy3`), so that Cedar's reasons name them as a decision on the whole set would."""
        static = dict(self._bodies[position] for position in sorted(positions))
        return json.dumps({"staticPolicies": static, "templates": {}, "templateLinks": []})

    def forget(self) -> None:
        """Drop the per-key lookups (they are rebuilt on demand; the facts stay)."""
        self._actions.clear()
        self._principals.clear()
        self._resources.clear()

    # which policies a request can match (positions in `facts`)

    def ancestors(self, action: str) -> set[str]:
        """`action` and every group it is in, transitively (Cedar's `action in`)."""
        seen = {action}
        todo = [action]
        while todo:
            for parent in self._parents.get(todo.pop(), ()):
                if parent not in seen:
                    seen.add(parent)
                    todo.append(parent)
        return seen

    def for_action(self, action: str) -> frozenset[int]:
        found = self._actions.get(action)
        if found is None:
            matched = self._any_action | self._eq_action.get(action, set())
            for name in self.ancestors(action):
                matched |= self._in_action.get(name, set())
            found = self._actions[action] = frozenset(matched)
        return found

    def for_principal(self, subject: str, groups: Iterable[str]) -> frozenset[int]:
        key = (subject, frozenset(groups))
        found = self._principals.get(key)
        if found is None:
            found = frozenset(
                position
                for position, facts in enumerate(self.facts)
                if _principal_matches(facts.principal, subject, key[1])
            )
            if len(self._principals) >= 10_000:
                self._principals.clear()
            self._principals[key] = found
        return found

    def for_resource(self, server: str) -> frozenset[int]:
        found = self._resources.get(server)
        if found is None:
            found = frozenset(
                position for position, facts in enumerate(self.facts) if _resource_matches(facts.resource, server)
            )
            if len(self._resources) >= 10_000:
                self._resources.clear()
            self._resources[server] = found
        return found

    def matching(self, subject: str, groups: Iterable[str], action: str, server: str) -> frozenset[int]:
        """Positions of the policies whose scope matches `User::subject` (in `groups`), `action`, `server`."""
        return self.for_action(action) & self.for_principal(subject, groups) & self.for_resource(server)


def _is_context(node: Any) -> bool:
    return isinstance(node, dict) and len(node) == 1 and node.get("Var") == "context"


def _is_context_time(node: Any) -> bool:
    inner = node.get(".") if isinstance(node, dict) and len(node) == 1 else None
    return isinstance(inner, dict) and _is_context(inner.get("left")) and inner.get("attr") == "time"


def _scan(node: Any, refs: set[str], time_fields: set[str]) -> None:
    """Collect the variables a condition names and the `context.time` fields it reads.

    `context.time.hour` reads `hour`; `context.time.weekday` reads `weekday`; `context.x has y`
    reads nothing (every attribute is always there); any other use of `context.time` or of
    `context` whole reads everything, written `unix`."""
    if isinstance(node, list):
        for item in node:
            _scan(item, refs, time_fields)
        return
    if not isinstance(node, dict):
        return
    var = node.get("Var")
    if isinstance(var, str) and len(node) == 1:
        refs.add(var)
        if var == "context":
            time_fields.add("unix")
        return
    for operator, operand in node.items():
        if operator in (".", "has") and isinstance(operand, dict):
            left, attr = operand.get("left"), operand.get("attr")
            if _is_context(left):
                refs.add("context")
                if operator == "." and attr == "time":
                    time_fields.add("unix")
                continue
            if _is_context_time(left):
                refs.add("context")
                if operator == ".":
                    time_fields.add(attr if attr in ("hour", "weekday") else "unix")
                continue
            _scan(left, refs, time_fields)
        else:
            _scan(operand, refs, time_fields)


def _action_scope(scope: Mapping[str, Any]) -> tuple[str, tuple[str, ...]] | None:
    """(op, names) of an action scope: ("All", ()), ("==", (action,)), ("in", (groups...)); None if not understood."""
    op = scope.get("op")
    if op == "All":
        return "All", ()
    entities = [scope["entity"]] if "entity" in scope else scope.get("entities")
    if op not in ("==", "in") or not isinstance(entities, list) or not entities:
        return None
    ids = []
    for entity in entities:
        if not isinstance(entity, dict) or entity.get("type") != "Action" or not isinstance(entity.get("id"), str):
            return None
        ids.append(entity["id"])
    if op == "==" and len(ids) != 1:
        return None
    return str(op), tuple(ids)


def _cedar_index(cedar_id: str) -> int:
    """`policy3` -> 3 (the position `parse_policies` gave it); -1 for an id of another form."""
    return int(cedar_id[6:]) if cedar_id.startswith("policy") and cedar_id[6:].isdigit() else -1


def _scope_shape(scope: Mapping[str, Any]) -> bool:
    """Whether a principal or resource scope has a form `_principal_matches`/`_resource_matches` read."""
    op = scope.get("op")
    if op == "All":
        return True
    if op in ("==", "in"):
        entity = scope.get("entity")
        return isinstance(entity, dict) and isinstance(entity.get("type"), str) and isinstance(entity.get("id"), str)
    if op == "is":
        inner = scope.get("in")
        if inner is None:
            return isinstance(scope.get("entity_type"), str)
        return isinstance(inner, dict) and _scope_shape({"op": "in", **inner})
    return False


def _member(entity: Mapping[str, Any], uid: tuple[str, str], parents: frozenset[tuple[str, str]]) -> bool:
    """Whether `uid` is `in` `entity` (itself or one of its parents)."""
    target = (entity.get("type"), entity.get("id"))
    return target == uid or target in parents


def _principal_matches(scope: Mapping[str, Any] | None, subject: str, groups: frozenset[str]) -> bool:
    if scope is None:
        return True
    op = scope.get("op")
    uid = ("User", subject)
    if op == "All":
        return True
    if op == "==":
        return (scope["entity"]["type"], scope["entity"]["id"]) == uid
    parents = frozenset(("Group", group) for group in groups)
    if op == "in":
        return _member(scope["entity"], uid, parents)
    if op == "is":
        inner = scope.get("in")
        return scope.get("entity_type") == "User" and (inner is None or _member(inner["entity"], uid, parents))
    return True


def _resource_matches(scope: Mapping[str, Any] | None, server: str) -> bool:
    if scope is None:
        return True
    op = scope.get("op")
    uid = ("Server", server)
    if op == "All":
        return True
    if op in ("==", "in"):
        return (scope["entity"]["type"], scope["entity"]["id"]) == uid
    if op == "is":
        inner = scope.get("in")
        return scope.get("entity_type") == "Server" and (inner is None or _member(inner["entity"], uid, frozenset()))
    return True
