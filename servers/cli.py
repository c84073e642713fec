"""The command line shared by every server in `servers/`.

`python -m servers.<name>` speaks MCP over stdio, which is how the portal (or any
MCP client) runs a local server as a subprocess. `--http` serves Streamable HTTP
instead, for running the same server as a remote one:

    python -m servers.clock --http --port 8765 --host 127.0.0.1

The HTTP endpoint is `http://HOST:PORT/mcp` and speaks both protocol eras
(the `2025-11-25` handshake and the stateless `2026-07-28` requests).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from mcp.server.mcpserver import MCPServer

__all__ = ["build_parser", "run_server"]

DEFAULT_HOST = "127.0.0.1"
"""Loopback by default: a demo server must not be reachable from the network by accident."""


def build_parser(prog: str, description: str, *, default_port: int) -> argparse.ArgumentParser:
    """The argument parser of one server's `__main__`."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument(
        "--http",
        action="store_true",
        help="serve Streamable HTTP instead of stdio",
    )
    parser.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"interface to listen on with --http (default {DEFAULT_HOST})",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=default_port,
        help=f"TCP port to listen on with --http (default {default_port})",
    )
    parser.add_argument(
        "--path",
        default="/mcp",
        help="URL path of the MCP endpoint with --http (default /mcp)",
    )
    return parser


def run_server(
    server: MCPServer[Any],
    argv: Sequence[str] | None = None,
    *,
    prog: str,
    description: str,
    default_port: int,
) -> None:
    """Parse `argv` and run `server` over stdio or Streamable HTTP until stopped."""
    parser = build_parser(prog, description, default_port=default_port)
    args = parser.parse_args(argv)
    if not args.http:
        server.run("stdio")
        return
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be between 0 and 65535, got {args.port}")
    if not args.path.startswith("/"):
        parser.error("--path must start with '/'")
    server.run("streamable-http", host=args.host, port=args.port, streamable_http_path=args.path)
