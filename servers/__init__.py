"""Internal MCP servers that the portal hosts.

Each server module exposes a module-level `server` (an `MCPServer`): the portal
serves a `module = "servers.<name>"` entry in-process by importing the module and
taking that attribute. Every module also runs on its own, over stdio by default
or as a Streamable HTTP server with `--http`. The example portal (`examples/portal.toml`)
uses three of them, one per kind of server:

- `servers.notes`: a notes store on SQLite, searched with FTS5.
- `servers.docs`: read-only BM25 search over a folder of Markdown and text files.
- `servers.clock`: time zones: the time now, conversions, date arithmetic.

Submodules are not imported here, so importing one server never opens another's
database or folder.
"""

from __future__ import annotations

__all__: list[str] = []
