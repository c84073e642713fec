"""The fixture's one `MCPServer`, which every other module of the package registers its fixtures on.

Built with the `json_schema_2020_12_tool` already in place (its advertised schema is hand-written, which the
decorators cannot express), and with the handshake-era `initialize` options patched to declare `listChanged`.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

from mcp.server.lowlevel.server import NotificationOptions
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.tools import Tool
from mcp.shared.exceptions import MCPDeprecationWarning

# Logging, sampling and roots are deprecated in the 2026-07-28 revision, and the SDK warns on every use. This
# server exists to exercise exactly those features for handshake-era clients, so the warnings it raises itself
# are noise. The filter is scoped to this package (the pattern matches a module name's start, so it covers
# every module in it), so nothing else in the process is silenced; this module is imported first.
PACKAGE = __name__.rpartition(".")[0]
warnings.filterwarnings("ignore", category=MCPDeprecationWarning, module=re.escape(PACKAGE))

SERVER_NAME = "portal-conformance"
SERVER_VERSION = "1.0.0"

# The one JSON Schema 2020-12 document the `json-schema-2020-12` scenario looks for, keyword for keyword: the
# scenario checks that `$schema`, `$defs` (with an `$anchor`), `$ref`, `allOf`/`anyOf`, `if`/`then`/`else` and
# `additionalProperties` survive into `tools/list` untouched (SEP-1613, SEP-2106).
JSON_SCHEMA_2020_12: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {
        "address": {
            "$anchor": "addressDef",
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
        }
    },
    "properties": {
        "name": {"type": "string"},
        "address": {"$ref": "#/$defs/address"},
        "contactMethod": {"type": "string", "enum": ["phone", "email"]},
        "phone": {"type": "string"},
        "email": {"type": "string"},
    },
    "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
    "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
    "then": {"required": ["phone"]},
    "else": {"required": ["email"]},
    "additionalProperties": False,
}


def json_schema_2020_12_tool(
    name: str | None = None,
    address: dict[str, str] | None = None,
    contactMethod: str | None = None,
    phone: str | None = None,
    email: str | None = None,
) -> str:
    """Tests JSON Schema 2020-12 keyword preservation in tools/list; echoes how to reach the caller."""
    how = phone if contactMethod == "phone" else email
    return f"json_schema_2020_12_tool: {name or 'anonymous'} via {contactMethod or 'email'} at {how or 'unknown'}"


def _tool_with_schema(fn: Any, schema: dict[str, Any]) -> Tool:
    """Register `fn` as a tool whose advertised inputSchema is `schema` instead of the derived one.

    The SDK derives schemas from signatures, which cannot express `if`/`then`/`else` or `$anchor`; the
    function's own signature still validates the arguments it receives.
    """
    return Tool.from_function(fn).model_copy(update={"parameters": schema})


server: MCPServer[Any] = MCPServer(
    name=SERVER_NAME,
    version=SERVER_VERSION,
    instructions="Fixtures for the MCP conformance suite: test_* tools, test:// resources and test_* prompts.",
    tools=[_tool_with_schema(json_schema_2020_12_tool, JSON_SCHEMA_2020_12)],
)


def _announce_list_changes(notification_options: NotificationOptions | None = None, *args: Any, **kwargs: Any) -> Any:
    """The handshake-era `initialize` options, declaring `listChanged` for tools, prompts and resources.

    `test_trigger_tool_change` and `test_trigger_prompt_change` do change the lists, and a client (such as the
    portal, which re-lists a server when told) only listens for changes a server declares. The SDK takes
    these flags from `NotificationOptions`, which `streamable_http_app` leaves at "none"; at 2026-07-28 it
    derives them from `subscriptions/listen` instead.
    """
    options = notification_options or NotificationOptions(
        prompts_changed=True, resources_changed=True, tools_changed=True
    )
    return _lowlevel_initialization_options(options, *args, **kwargs)


_lowlevel_initialization_options = server._lowlevel_server.create_initialization_options
server._lowlevel_server.create_initialization_options = _announce_list_changes  # type: ignore[method-assign]
