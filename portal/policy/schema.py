"""The Cedar schema in force: the base stub plus one action per tool of the live catalog.

The per-tool actions and their typed `context.input` come from the official generator
(`cedar-policy-mcp-schema-generator`, module `cedar_mcp_schema_generator`), fed with the
catalog's tools renamed `{server}_{tool}`. The portal then reshapes its JSON output to
SPEC.md, Policies:

- the namespace the generator requires is flattened away (`Action::"notes_get_note"`);
- every action's context gains `client_id`, `scopes`, `via_codemode` and `time`;
- each tool action becomes a member of `Action::"server:{server}"` and of `Action::"read"`,
  `"write"` or `"destructive"` (MCP defaults: not read-only and no `destructiveHint: false`
  means destructive);
- `read_resource`, `get_prompt` and `use_codemode` are added.

`InputConverter` turns a call's JSON arguments into the Cedar values that type, following
the generator's encodings (numbers as `decimal`, `anyOf` as `typeChoiceN` records, string
enums as enum entities, `null` as the `Null` entity). Arguments the schema does not name
are dropped: policies only ever see typed fields.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cedar_mcp_schema_generator import generate_schema

from portal.catalog import aggregate_name

__all__ = [
    "ActionInfo",
    "ArgumentTypeError",
    "BuiltSchema",
    "build_schema",
    "classify",
    "json_to_cedarschema",
]

GENERATOR_CONFIG = {"numbersAsDecimal": True, "objectsAsRecords": True, "flattenNamespaces": True}
STATIC_ACTIONS = ("read_resource", "get_prompt", "use_codemode")
GROUP_ACTIONS = ("read", "write", "destructive")
CODEMODE_SERVER = "codemode"


class ArgumentTypeError(ValueError):
    """A call's arguments do not fit the typed `context.input` of its action."""


@dataclass(frozen=True)
class ActionInfo:
    server: str
    tool: str
    kind: str
    """read, write or destructive."""


@dataclass(frozen=True)
class BuiltSchema:
    json: dict[str, Any]
    """The Cedar JSON schema (empty namespace)."""
    actions: dict[str, ActionInfo]
    """Per-tool actions by name."""
    input_types: dict[str, Any]
    """Each action's `context.input` type (Cedar JSON schema type)."""
    common_types: dict[str, Any]
    enum_types: frozenset[str]

    def converter(self) -> InputConverter:
        return InputConverter(self.common_types, self.enum_types)


def classify(annotations: Mapping[str, Any] | None) -> str:
    """read, write or destructive, after a tool's MCP annotations and their defaults."""
    annotations = annotations or {}
    if annotations.get("readOnlyHint") is True:
        return "read"
    if annotations.get("destructiveHint") is False:
        return "write"
    return "destructive"


_TIME = {
    "type": "Record",
    "attributes": {
        "unix": {"type": "Long"},
        "hour": {"type": "Long"},
        "weekday": {"type": "Long"},
    },
}
_BASE_CONTEXT = {
    "client_id": {"type": "String"},
    "scopes": {"type": "Set", "element": {"type": "String"}},
    "via_codemode": {"type": "Boolean"},
    "time": _TIME,
}


def _strip(value: Any, namespace: str) -> Any:
    prefix = f"{namespace}::"
    if isinstance(value, dict):
        return {key: _strip(item, namespace) for key, item in value.items()}
    if isinstance(value, list):
        return [_strip(item, namespace) for item in value]
    if isinstance(value, str) and value.startswith(prefix):
        return value[len(prefix) :]
    return value


_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1
"""Cedar's `Long`."""
_NOT_IDENTIFIER = re.compile(r"[^A-Za-z0-9_]")


def _identifier(name: str) -> str:
    """`name` as a Cedar identifier, one-to-one: every other character becomes `__{hex}_`."""
    alias = _NOT_IDENTIFIER.sub(lambda match: f"__{ord(match.group(0)):x}_", name.replace("__", "___"))
    return alias if alias[:1].isalpha() or alias[:1] == "_" else "_" + alias


def build_schema(stub: str, tools_by_server: Mapping[str, Iterable[Mapping[str, Any]]]) -> BuiltSchema:
    """Generate the full schema for `tools_by_server` (raises ValueError with the generator's reason)."""
    actions: dict[str, ActionInfo] = {}
    tools: list[dict[str, Any]] = []
    real_names: dict[str, str] = {}
    for server, server_tools in sorted(tools_by_server.items()):
        for tool in server_tools:
            name = aggregate_name(server, tool["name"])
            if name in actions:
                continue
            actions[name] = ActionInfo(server, tool["name"], classify(tool.get("annotations")))
            schema = tool.get("inputSchema") or {"type": "object"}
            # The generator names types after tools, so a name must be a Cedar identifier; server
            # and tool names may hold `-` or `.`. Generated under a safe alias, renamed back below.
            alias = _identifier(name)
            real_names[alias] = name
            tools.append({"name": alias, "inputSchema": schema, "annotations": tool.get("annotations") or {}})
    result = generate_schema(stub, tools, config=GENERATOR_CONFIG)
    if not result.get("isOk"):
        raise ValueError(f"schema generation failed: {result.get('error')}")
    generated = json.loads(result["schemaJson"])
    if len(generated) != 1:
        raise ValueError("the base schema must declare exactly one namespace")
    (namespace, body), *_ = generated.items()
    body = _strip(body, namespace)
    body.setdefault("commonTypes", {})
    entity_types = body.setdefault("entityTypes", {})
    generated_actions: dict[str, Any] = {
        real_names.get(name, name): action for name, action in body.setdefault("actions", {}).items()
    }
    body["actions"] = generated_actions
    input_types: dict[str, Any] = {}
    principal_types = ["User"]
    resource_types = ["Server"]
    for name, action in generated_actions.items():
        applies = action.setdefault("appliesTo", {})
        principal_types = applies.get("principalTypes", principal_types)
        resource_types = applies.get("resourceTypes", resource_types)
        context = applies.setdefault("context", {"type": "Record", "attributes": {}})
        attributes = context.setdefault("attributes", {})
        input_types[name] = attributes.get("input", {"type": "Record", "attributes": {}})
        attributes.update(_BASE_CONTEXT)
        info = actions.get(name)
        if info is not None:
            action["memberOf"] = [{"id": f"server:{info.server}"}, {"id": info.kind}]
    for group in GROUP_ACTIONS:
        generated_actions.setdefault(group, {})
    for server in sorted({info.server for info in actions.values()}):
        generated_actions.setdefault(f"server:{server}", {})
    static_inputs = {
        "read_resource": {"uri": {"type": "String"}},
        "get_prompt": {"name": {"type": "String"}},
        "use_codemode": {},
    }
    for name, input_attributes in static_inputs.items():
        input_type = {"type": "Record", "attributes": input_attributes}
        input_types[name] = input_type
        generated_actions[name] = {
            "appliesTo": {
                "principalTypes": principal_types,
                "resourceTypes": resource_types,
                "context": {"type": "Record", "attributes": {"input": input_type, **_BASE_CONTEXT}},
            }
        }
    enums = frozenset(name for name, entity in entity_types.items() if "enum" in entity)
    return BuiltSchema({"": body}, actions, input_types, body["commonTypes"], enums)


class InputConverter:
    """JSON arguments to Cedar JSON values of a typed `context.input`."""

    def __init__(self, common_types: Mapping[str, Any], enum_types: frozenset[str]) -> None:
        self.common = common_types
        self.enums = enum_types

    def convert(self, input_type: Mapping[str, Any], value: Any) -> Any:
        return self._value(input_type, value, "input")

    def _resolve(self, kind: Mapping[str, Any]) -> Mapping[str, Any]:
        for _ in range(32):
            tag = kind.get("type")
            if tag in ("EntityOrCommon", None) or tag in self.common:
                name = str(kind.get("name") if tag == "EntityOrCommon" else tag)
                if name in self.common:
                    kind = self.common[name]
                    continue
                if name in ("Long", "String", "Bool", "Boolean", "decimal", "ipaddr", "datetime", "duration"):
                    return {
                        "type": "Extension" if name in ("decimal", "ipaddr", "datetime", "duration") else name,
                        "name": name,
                    }
                return {"type": "Entity", "name": name}
            return kind
        raise ArgumentTypeError("schema types nest too deep")

    def _value(self, kind: Mapping[str, Any], value: Any, path: str) -> Any:
        kind = self._resolve(kind)
        tag = kind["type"]
        if tag == "Long":
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or (isinstance(value, float) and not math.isfinite(value))
                or value != int(value)
                or not _LONG_MIN <= value <= _LONG_MAX
            ):
                raise ArgumentTypeError(f"{path} must be an integer (64-bit)")
            return int(value)
        if tag == "String":
            if not isinstance(value, str):
                raise ArgumentTypeError(f"{path} must be a string")
            return value
        if tag in ("Bool", "Boolean"):
            if not isinstance(value, bool):
                raise ArgumentTypeError(f"{path} must be a boolean")
            return value
        if tag == "Extension":
            if kind.get("name") == "decimal":
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ArgumentTypeError(f"{path} must be a number")
                if abs(value) >= 922337203685477:
                    raise ArgumentTypeError(f"{path} is out of range")
                return {"__extn": {"fn": "decimal", "arg": f"{value:.4f}"}}
            raise ArgumentTypeError(f"{path}: unsupported type {kind.get('name')}")
        if tag == "Set":
            if not isinstance(value, list):
                raise ArgumentTypeError(f"{path} must be an array")
            return [self._value(kind["element"], item, f"{path}[]") for item in value]
        if tag == "Entity":
            name = kind["name"]
            if name == "Null" and value is None:
                return {"__entity": {"type": "Null", "id": "null"}}
            if name in self.enums and isinstance(value, str):
                return {"__entity": {"type": name, "id": value}}
            raise ArgumentTypeError(f"{path} does not match {name}")
        if tag == "Record":
            attributes: Mapping[str, Any] = kind.get("attributes", {})
            if attributes and all(key.startswith("typeChoice") for key in attributes):
                for key, choice in attributes.items():
                    try:
                        return {key: self._value(choice, value, path)}
                    except ArgumentTypeError:
                        continue
                raise ArgumentTypeError(f"{path} matches none of its types")
            if not isinstance(value, Mapping):
                raise ArgumentTypeError(f"{path} must be an object")
            record: dict[str, Any] = {}
            for key, attribute in attributes.items():
                if key in value and not (value[key] is None and attribute.get("required") is False):
                    record[key] = self._value(attribute, value[key], f"{path}.{key}")
                elif attribute.get("required", True):
                    raise ArgumentTypeError(f"{path}.{key} is required")
            return record
        raise ArgumentTypeError(f"{path}: unsupported type {tag}")


def json_to_cedarschema(schema: Mapping[str, Any]) -> str:
    """A readable rendering of the schema in force, for `portal policy schema` (JSON, pretty-printed)."""
    return json.dumps(schema, indent=2, sort_keys=True)
