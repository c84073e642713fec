"""Where `portal policy replay` gets the tools whose actions it re-decides (see `portal.policy.replay`).

Each server's tools come from the first of: `tools.json` (the operator's declared catalog), the tool
pins (`portal.pinning`: the definitions the portal accepted), and the audit records themselves, with an
`inputSchema` inferred from the recorded arguments.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from portal.audit.redact import MARKER_PREFIX
from portal.catalog import Catalog, ServerCatalog
from portal.errors import PortalError
from portal.pinning import PinStore

if TYPE_CHECKING:
    from portal.policy.replay import RecordedCall

__all__ = ["ReplayError", "build_catalog", "pinned_tools"]


class ReplayError(PortalError):
    code = "policy_replay_invalid"
    http_status = 400


def build_catalog(
    calls: Iterable[RecordedCall],
    tools_file: Path | None,
    pinned: Mapping[str, list[dict[str, Any]]] | None = None,
) -> tuple[Catalog, dict[str, str]]:
    """`tools_file` for the servers it names, else `pinned`, else the recorded tools (schemas inferred)."""
    declared: dict[str, list[dict[str, Any]]] = {}
    if tools_file is not None and tools_file.is_file():
        try:
            declared = {str(name): list(tools) for name, tools in json.loads(tools_file.read_text("utf-8")).items()}
        except (ValueError, AttributeError, TypeError) as exc:
            raise ReplayError(f"{tools_file}: not a JSON object of tool lists by server ({exc})") from exc
    pinned = {server: tools for server, tools in (pinned or {}).items() if server not in declared}
    samples: dict[str, dict[str, list[Any]]] = {}
    for call in calls:
        if call.method == "tools/call" and call.server and call.tool and call.server not in {**declared, **pinned}:
            arguments = samples.setdefault(call.server, {}).setdefault(call.tool, [])
            if isinstance(call.arguments, dict) and not call.omitted:
                arguments.append(call.arguments)
    catalog = Catalog()
    sources: dict[str, str] = {}
    for source, lists in (
        ("tools.json", declared),
        ("pins", pinned),
        ("audit log", {server: _inferred_tools(tools) for server, tools in samples.items()}),
    ):
        for server, tools in lists.items():
            entry = ServerCatalog(server)
            entry.items["tools"] = tools
            catalog.replace(entry)
            sources[server] = source
    return catalog, dict(sorted(sources.items()))


def pinned_tools(db: Engine) -> dict[str, list[dict[str, Any]]]:
    """Each server's pinned tool definitions (the pending ones as last listed); {} without pin tables."""
    store = PinStore(db)
    try:
        pins = [pin for server in sorted(store.revisions()) for pin in store.pins(server)]
    except SQLAlchemyError:  # a database from before pinning (`portal db upgrade` adds the tables)
        return {}
    tools: dict[str, list[dict[str, Any]]] = {}
    for pin in pins:
        definition = pin.pinned or pin.current
        if definition is not None:
            tools.setdefault(pin.server, []).append({**definition, "name": pin.tool})
    return tools


def _inferred_tools(samples: Mapping[str, list[Any]]) -> list[dict[str, Any]]:
    return [{"name": name, "inputSchema": _object_schema(args)} for name, args in sorted(samples.items())]


def _kind(value: Any) -> str | None:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return None if MARKER_PREFIX in value else "string"  # a marker may stand for any type
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return None


def _infer(values: list[Any]) -> dict[str, Any] | None:
    """One JSON schema that every typed value of `values` fits; None if there is none or they disagree."""
    typed = [value for value in values if _kind(value) is not None]
    kinds = {_kind(value) for value in typed}
    if kinds == {"integer", "number"}:
        return {"type": "number"}
    if len(kinds) != 1:
        return None
    kind = kinds.pop()
    if kind == "array":
        items = _infer([item for value in typed for item in value])
        return {"type": "array", "items": items} if items is not None else None
    if kind == "object":
        return _object_schema(typed)
    return {"type": kind}


def _object_schema(samples: list[dict[str, Any]]) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    required: list[str] = []
    for key in sorted({key for sample in samples for key in sample}):
        values = [sample.get(key) for sample in samples]
        schema = _infer(values)
        if schema is None:
            continue
        properties[key] = schema
        if all(value is not None for value in values):
            required.append(key)
    return {"type": "object", "properties": properties, "required": required}


# What the policies read
