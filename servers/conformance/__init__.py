"""The conformance fixture: an MCP server with every tool, resource and prompt the official suite expects.

The MCP conformance suite (`@modelcontextprotocol/conformance`, `server` mode) connects to a server as a
client and exercises a fixed catalogue of test fixtures by name: `test_simple_text`, `test://static-text`,
`test_prompt_with_arguments` and so on, each with an exact expected shape. This package implements that
catalogue so the suite can be pointed at it, directly or through the portal (per-server endpoint
`/servers/{name}/mcp` and the aggregated `/mcp`).

It is hosted in-process by the portal, which imports this package and takes `server`, and it also runs on its
own for testing the fixture itself:

    python -m servers.conformance --http --port 8765     # streamable HTTP on http://127.0.0.1:8765/mcp
    python -m servers.conformance                        # stdio

Every fixture works in both protocol eras on one endpoint. Where a fixture needs something from the client
(sampling, elicitation, roots) it uses the SDK's resolvers, so the same tool sends a server-to-client request
mid-call in the handshake era (2025-11-25) and returns an `InputRequiredResult` in the stateless era
(2026-07-28). The `test_input_required_result_*` fixtures hand-roll that result, because the suite checks its
exact keys, and their retries arrive as `input_responses` / `request_state`.

Layout: `core` builds the one `server`; `content`, `notifications`, `client_requests`, `list_changes` and
`input_required` register the tools, `resources` and `prompts` (with completion) the rest; `app` serves it on
its own (`create_app`, `main`, the SSE event store).
"""

from __future__ import annotations

# The fixture modules register on `server` as they are imported, and the order they are imported in is the
# order `tools/list`, `resources/list` and `prompts/list` report, so it is kept as written here.
# isort: off
from .core import server
from . import content  # noqa: F401
from . import notifications  # noqa: F401
from . import client_requests  # noqa: F401
from . import list_changes  # noqa: F401
from . import input_required  # noqa: F401
from . import resources  # noqa: F401
from . import prompts  # noqa: F401
from .app import ConformanceEventStore, create_app, main

# isort: on

__all__ = ["ConformanceEventStore", "create_app", "main", "server"]
