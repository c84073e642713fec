"""The upstream MCP server of the benchmarks: one `echo` tool, served by the SDK over Streamable HTTP.

`python bench/upstream.py --port P` serves `http://127.0.0.1:P/mcp` under uvicorn, both protocol
eras on the one endpoint, with the SDK's defaults (2025-11-25 answers come as SSE streams, 2026-07-28
answers as JSON). It is a real `MCPServer`, so that "direct" in the benchmarks is what a client of an
ordinary SDK server sees. It listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse

import uvicorn
from mcp.server.mcpserver import MCPServer


def build_server() -> MCPServer:
    server = MCPServer("bench-upstream", version="1.0.0")

    @server.tool()
    async def echo(text: str) -> str:
        """Return `text` unchanged."""
        return text

    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = build_server().streamable_http_app(host="127.0.0.1")
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
