"""What checking an access token costs the portal on every MCP request.

`python bench/tokens.py` builds an `AuthService` on a fresh SQLite database in a temporary
folder, mints one token, and measures `verify_access_token` as the gateway calls it (full
check: header, EdDSA signature, claims, then the database: token known and unrevoked,
user unblocked, client unrevoked), and separately its two halves:

- `decode`: header, signature and claims (CPU only);
- `check_live`: the database lookup, run in a worker thread as on the request path.

For each: p50 and p99 latency over `--calls` calls after `--warmup`, and CPU time per call.
It prints a table and writes JSON to `bench/results/tokens.json` (`--output`). Nothing
leaves the process; the run is bounded by `--calls`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from portal.auth.service import AuthService  # noqa: E402
from portal.db import create_engine  # noqa: E402
from portal.settings import Settings  # noqa: E402

BASE = "http://127.0.0.1:8000"


async def measure(name: str, call: Callable[[], Awaitable[object]], calls: int, warmup: int) -> dict[str, float]:
    for _ in range(warmup):
        await call()
    times: list[float] = []
    cpu = time.process_time()
    for _ in range(calls):
        start = time.perf_counter()
        await call()
        times.append(time.perf_counter() - start)
    cpu = time.process_time() - cpu
    times.sort()
    return {
        "name": name,  # type: ignore[dict-item]
        "p50_us": statistics.median(times) * 1e6,
        "p99_us": times[int(len(times) * 0.99) - 1] * 1e6,
        "cpu_us_per_call": cpu / calls * 1e6,
    }


async def run(calls: int, warmup: int) -> list[dict[str, float]]:
    with tempfile.TemporaryDirectory() as folder:
        settings = Settings(public_url=BASE, database_url=f"sqlite:///{folder}/portal.db", base_dir=folder)
        engine = create_engine(settings)
        auth = AuthService(settings, engine)
        await auth.start()
        auth.users.add("bench", None)
        token = auth.mint_access_token("bench", "bench-client", ["tools:*"], f"{BASE}/mcp", 3600)
        ctx = auth.context
        key = ctx.keys.current().private.public_key()
        claims = ctx.tokens.decode(token, key, audience=f"{BASE}/mcp")

        async def full() -> object:
            return await auth.verify_access_token(token, audience=f"{BASE}/mcp")

        async def decode() -> object:
            return ctx.tokens.decode(token, key, audience=f"{BASE}/mcp")

        async def live() -> object:
            await asyncio.to_thread(ctx.tokens.check_live, claims)
            return None

        results = [
            await measure("verify_access_token", full, calls, warmup),
            await measure("decode (signature, claims)", decode, calls, warmup),
            await measure("check_live (database)", live, calls, warmup),
        ]
        await auth.close()
        engine.dispose()
        return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "tokens.json")
    args = parser.parse_args()
    results = asyncio.run(run(args.calls, args.warmup))
    print(f"{'what':<30} {'p50 µs':>10} {'p99 µs':>10} {'CPU µs/call':>12}")
    for row in results:
        print(f"{row['name']:<30} {row['p50_us']:>10.1f} {row['p99_us']:>10.1f} {row['cpu_us_per_call']:>12.1f}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
