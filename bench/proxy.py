"""What the portal costs: one `tools/call` made directly to an upstream MCP server, and through the portal.

`python bench/proxy.py` starts, each in its own process and on 127.0.0.1 only:

- the upstream, a real SDK `MCPServer` with one `echo` tool under uvicorn (`bench/upstream.py`);
- the portal, `python -m portal serve`, with that server configured as `up` and pinned to the era
  being measured (one portal process per era, started and stopped in turn);

then measures, side by side, the same call made three ways, for a client of each era:

- `direct`: `echo` on the upstream's `/mcp`;
- `server`: `echo` on the portal's `/servers/up/mcp`;
- `mcp`: `up_echo` on the portal's aggregated `/mcp`.

For each: latency at concurrency 1 (p50, p99 over `--calls` calls after `--warmup`), then calls per
second at concurrency `--concurrency` (for `--duration` seconds, at most `--max-calls` calls). Each
phase is split into short chunks (`--rounds`), run target after target in a rotating order over
connections kept open, so that drift and whatever else runs on the machine weigh on all three
alike. The client is a lean one on purpose (aiohttp, keep-alive, prebuilt bodies, no validation
beyond a status and a byte check), so that the figures measure the servers rather than the client.

Beside the clock, each phase reads from /proc the CPU time the portal and the upstream spent per
call, and how busy the machine was outside the three benchmark processes ("other", in cores). Other
work on the machine disturbs every figure; calls per second the most, CPU per call the least.

Era 2026-07-28 requests carry the `params._meta` envelope and the `MCP-Protocol-Version`,
`Mcp-Method` and `Mcp-Name` headers; era 2025-11-25 requests carry the `Mcp-Session-Id` of an
`initialize` made first, and `MCP-Protocol-Version`.

Requests to the portal carry a bearer token, as every client's must: before each portal starts, the
benchmark adds a user `bench` (`portal users add bench --no-password`, granted `tools:*` in the
portal's `[auth.grants]`) and mints one token per endpoint with `portal tokens mint`. The portal's
figures therefore include checking that token on every request (signature, claims and the database
lookup for revocation; `bench/tokens.py` measures that alone).

It prints a table and writes JSON to `bench/results/proxy.json` (`--output`). The portal's
overhead is p50(portal) - p50(direct); its throughput ratio is rps(portal) / rps(direct). The
targets: at most +1 ms at p50 and at least 50% of direct throughput. Every phase is bounded in
count and in time, the whole run by `--time-limit`; it takes about a minute with the defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from _machine import machine
from _process import running

from portal.policy.testing import write_policies

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
ERAS = ("2026-07-28", "2025-11-25")
OVERHEAD_TARGET_MS = 1.0
RATIO_TARGET = 0.5
AUDIT_COST_TARGET = 0.10
"""Recording every call may cost at most this share of the portal's throughput."""
START_TIMEOUT = 20.0
REQUEST_TIMEOUT = 10.0
PHASE_TIME_CAP = 10.0
"""No latency chunk runs longer than this, whatever `--calls` says."""
BUSY_CORES = 0.3
"""Above this many cores busy outside the benchmark (kernel networking included), a run is flagged as disturbed."""
PACKAGES = ("mcp", "aiohttp", "orjson", "uvicorn", "starlette", "uvloop", "httptools")

_ACCEPT = "application/json, text/event-stream"
_CLIENT_INFO = {"name": "portal-bench", "version": "1.0"}


# -- what one target is ---------------------------------------------------------------------------


@dataclass
class Target:
    """One way of making the call: where it goes and the bytes that go there."""

    name: str
    era: str
    url: str
    tool: str
    payload: str
    headers: dict[str, str] = field(default_factory=dict)
    token: str | None = None
    """Bearer token sent with every request (the portal's endpoints); None for the upstream."""
    ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    """Request ids: unique within a target, as a 2025-11-25 session needs them to be."""
    _prefix: bytes = b""
    _suffix: bytes = b""

    def __post_init__(self) -> None:
        params: dict[str, Any] = {"name": self.tool, "arguments": {"text": self.payload}}
        if self.era >= "2026-07-28":
            params["_meta"] = {
                "io.modelcontextprotocol/protocolVersion": self.era,
                "io.modelcontextprotocol/clientCapabilities": {},
                "io.modelcontextprotocol/clientInfo": _CLIENT_INFO,
            }
            self.headers.update({"Mcp-Method": "tools/call", "Mcp-Name": self.tool})
        self.headers.update({"Accept": _ACCEPT, "Content-Type": "application/json", "MCP-Protocol-Version": self.era})
        self.headers.update(self.authorization)
        # The body is prebuilt around its id, which is the one thing that changes from call to call.
        rest = json.dumps({"method": "tools/call", "params": params}, separators=(",", ":"))
        self._prefix = b'{"jsonrpc":"2.0","id":'
        self._suffix = b"," + rest[1:].encode()

    def body(self, request_id: int) -> bytes:
        return self._prefix + str(request_id).encode() + self._suffix

    @property
    def expected(self) -> bytes:
        return self.payload.encode()

    @property
    def authorization(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def open(self, http: aiohttp.ClientSession) -> None:
        """Make the target callable: a 2025-11-25 client initializes a session first."""
        if self.era >= "2026-07-28":
            return
        init = {
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {"protocolVersion": self.era, "capabilities": {}, "clientInfo": _CLIENT_INFO},
        }
        headers = {"Accept": _ACCEPT, "Content-Type": "application/json", **self.authorization}
        async with http.post(self.url, data=json.dumps(init), headers=headers) as response:
            await response.read()
            if response.status != 200 or "Mcp-Session-Id" not in response.headers:
                raise RuntimeError(f"{self.name}: initialize answered HTTP {response.status}")
            self.headers["Mcp-Session-Id"] = response.headers["Mcp-Session-Id"]
        note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        async with http.post(self.url, data=json.dumps(note), headers=self.headers) as response:
            await response.read()
            if response.status >= 300:
                raise RuntimeError(f"{self.name}: notifications/initialized answered HTTP {response.status}")

    async def close(self, http: aiohttp.ClientSession) -> None:
        """End a 2025-11-25 session, so that sessions do not pile up in the server between chunks."""
        session = self.headers.pop("Mcp-Session-Id", None)
        if session is not None:
            headers = {"Mcp-Session-Id": session, "MCP-Protocol-Version": self.era, **self.authorization}
            async with http.delete(self.url, headers=headers) as response:
                await response.read()

    async def check(self, http: aiohttp.ClientSession, deadline: float) -> None:
        """One full call, decoded and checked, retried until the deadline (the catalog may be filling)."""
        last = ""
        while True:
            async with http.post(self.url, data=self.body(next(self.ids)), headers=self.headers) as response:
                raw = await response.read()
                message = _decode(raw, response.content_type)
                result = message.get("result") if isinstance(message, dict) else None
                if response.status == 200 and isinstance(result, dict) and not result.get("isError"):
                    texts = [c.get("text") for c in result.get("content", []) if isinstance(c, dict)]
                    if self.payload in texts:
                        return
                last = f"HTTP {response.status}: {raw[:300]!r}"
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.era} {self.name}: the call does not work: {last}")
            await asyncio.sleep(0.1)


def _decode(raw: bytes, content_type: str) -> Any:
    if content_type == "text/event-stream":
        data = [line[5:].strip() for line in raw.splitlines() if line.startswith(b"data:")]
        messages = [json.loads(d) for d in data if d]
        return next((m for m in messages if "result" in m or "error" in m), None)
    try:
        return json.loads(raw)
    except ValueError:
        return None


# -- measuring ---------------------------------------------------------------------------------------


class CallFailed(RuntimeError):
    pass


async def _call(http: aiohttp.ClientSession, target: Target, request_id: int) -> None:
    async with http.post(target.url, data=target.body(request_id), headers=target.headers) as response:
        raw = await response.read()
        if response.status != 200 or target.expected not in raw:
            raise CallFailed(f"{target.era} {target.name}: HTTP {response.status}: {raw[:200]!r}")


def _client(limit: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        # Below the servers' 5 s keep-alive: with four targets, a pool can sit idle longer than that,
        # and a call written onto a connection the server is closing fails with a reset.
        connector=aiohttp.TCPConnector(limit=limit, keepalive_timeout=4.0),
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
    )


def _percentile(sorted_values: Sequence[float], fraction: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


class CpuMeter:
    """CPU seconds used by the portal, the upstream, this client, and everything else on the machine.

    Read from /proc between two points: on a machine that other work shares, "everything else"
    says how disturbed a phase was; CPU per call is the figure that disturbance moves least.
    """

    _TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._start = self._read()

    def _read(self) -> dict[str, float]:
        now = {"wall": time.perf_counter()}
        for role, pid in self.pids.items():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                now[role] = (int(fields[11]) + int(fields[12])) / self._TICK
                now[f"{role}_sys"] = int(fields[12]) / self._TICK
            except (OSError, IndexError, ValueError):
                now[role] = 0.0
                now[f"{role}_sys"] = 0.0
        times = os.times()
        now["client"] = times.user + times.system
        try:
            ticks = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
            now["machine"] = (sum(ticks[:8]) - ticks[3] - ticks[4]) / self._TICK  # all but idle, iowait
        except (OSError, IndexError, ValueError):
            now["machine"] = 0.0
        return now

    def stop(self) -> dict[str, float]:
        end = self._read()
        return {key: end[key] - self._start[key] for key in end}


def _cpu_summary(used: dict[str, float], calls: int) -> dict[str, Any]:
    ours = sum(v for k, v in used.items() if k not in ("wall", "machine") and not k.endswith("_sys"))
    wall = used.get("wall") or 1.0
    summary: dict[str, Any] = {
        f"{role}_us_per_call": round(used[role] / calls * 1e6)
        for role in ("portal", "upstream", "client")
        if calls and role in used
    }
    if calls and "portal_sys" in used:
        summary["portal_sys_us_per_call"] = round(used["portal_sys"] / calls * 1e6)  # kernel time, in the above
    summary["other_cores"] = round(max(0.0, used.get("machine", 0.0) - ours) / wall, 2)
    return summary


@dataclass
class Phase:
    """What one or more measured chunks of the same kind gathered."""

    samples: list[float] = field(default_factory=list)
    calls: int = 0
    seconds: float = 0.0
    rounds: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)

    def add_cpu(self, used: dict[str, float]) -> None:
        for key, value in used.items():
            self.cpu[key] = self.cpu.get(key, 0.0) + value


async def warm_up(http: aiohttp.ClientSession, target: Target, calls: int, concurrency: int) -> None:
    """Untimed calls, `concurrency` at a time (which also opens that many pooled connections)."""
    for _ in range(max(1, calls // concurrency)):
        await asyncio.gather(*(_call(http, target, next(target.ids)) for _ in range(concurrency)))


async def latency_chunk(
    http: aiohttp.ClientSession, target: Target, phase: Phase, calls: int, pids: dict[str, int]
) -> None:
    """Concurrency 1 on one keep-alive connection: `calls` timed calls, one after the other."""
    samples: list[float] = []
    cap = time.monotonic() + PHASE_TIME_CAP
    clock = time.perf_counter
    meter = CpuMeter(pids)
    for _ in range(calls):
        request_id = next(target.ids)
        started = clock()
        await _call(http, target, request_id)
        samples.append(clock() - started)
        if time.monotonic() > cap:
            break
    phase.add_cpu(meter.stop())
    phase.samples += samples
    phase.calls += len(samples)
    phase.seconds += sum(samples)
    phase.rounds.append(round(_percentile(sorted(samples), 0.5) * 1000, 3))


async def throughput_chunk(
    http: aiohttp.ClientSession,
    target: Target,
    phase: Phase,
    concurrency: int,
    duration: float,
    max_calls: int,
    pids: dict[str, int],
) -> None:
    """`concurrency` callers on one keep-alive pool, for `duration` seconds or `max_calls` calls."""
    done = 0
    samples: list[float] = []
    clock = time.perf_counter
    stop_at = clock() + duration

    async def worker() -> None:
        nonlocal done
        while done < max_calls and clock() < stop_at:
            request_id = next(target.ids)
            started = clock()
            await _call(http, target, request_id)
            samples.append(clock() - started)
            done += 1

    meter = CpuMeter(pids)
    started = clock()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = clock() - started
    phase.add_cpu(meter.stop())
    phase.samples += samples
    phase.calls += done
    phase.seconds += elapsed
    phase.rounds.append(round(done / elapsed, 1))


def latency_figures(phase: Phase) -> dict[str, Any]:
    ms = sorted(s * 1000 for s in phase.samples)
    return {
        "calls": len(ms),
        "p50_ms": round(_percentile(ms, 0.50), 3),
        "p90_ms": round(_percentile(ms, 0.90), 3),
        "p99_ms": round(_percentile(ms, 0.99), 3),
        "mean_ms": round(sum(ms) / len(ms), 3),
        "min_ms": round(ms[0], 3),
        "p50_ms_by_round": phase.rounds,
        "cpu": _cpu_summary(phase.cpu, phase.calls),
    }


def throughput_figures(phase: Phase, concurrency: int) -> dict[str, Any]:
    ms = sorted(s * 1000 for s in phase.samples)
    return {
        "concurrency": concurrency,
        "calls": phase.calls,
        "seconds": round(phase.seconds, 3),
        "rps": round(phase.calls / phase.seconds, 1),
        "rps_by_round": phase.rounds,
        "p50_ms": round(_percentile(ms, 0.5), 3),
        "p99_ms": round(_percentile(ms, 0.99), 3),
        "cpu": _cpu_summary(phase.cpu, phase.calls),
    }


# -- the processes ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


async def _wait_http(url: str, process: subprocess.Popen[bytes], log: Path, ready: Any = None) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{process.args!r} exited with {process.returncode}:\n{log.read_text()[-2000:]}")
            try:
                async with http.get(url) as response:
                    body = await response.read()
                    if ready is None or ready(response.status, body):
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} not ready within {START_TIMEOUT:g}s:\n{log.read_text()[-2000:]}")


def _portal_ready(status: int, body: bytes) -> bool:
    try:
        return status == 200 and json.loads(body)["servers"]["up"]["state"] == "up"
    except (ValueError, KeyError, TypeError):
        return False


BENCH_USER = "bench"
"""The portal user whose minted tokens the benchmark sends."""


def _portal_config(folder: Path, port: int, upstream_url: str, era: str, *, audit: bool = True) -> Path:
    name = f"portal-{era}" + ("" if audit else "-noaudit")
    config = folder / f"{name}.toml"
    config.write_text(
        "[portal]\n"
        f'public_url = "http://{HOST}:{port}"\n'
        f'database_url = "sqlite:///{name}.db"\n'
        f"\n[audit]\nenabled = {'true' if audit else 'false'}\n"
        f'spool_path = "{name}-audit-spool.jsonl"\n'
        "\n[auth.grants]\n"
        f'{BENCH_USER} = ["tools:*"]\n'
        "\n[[servers]]\n"
        'name = "up"\n'
        f'url = "{upstream_url}"\n'
        f'protocol = "{era}"\n'
    )
    # One policy permitting everything: every call is decided by Cedar, as in any real portal.
    write_policies(folder / "policies")
    return config


def _portal_cli(args: list[str], config: Path, env: dict[str, str], cwd: Path) -> str:
    """`python -m portal ARGS --config CONFIG`; its standard output (it must succeed)."""
    argv = [sys.executable, "-m", "portal", *args, "--config", str(config)]
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"portal {' '.join(args[:2])} exited with {done.returncode}:\n{done.stderr[-2000:]}")
    return done.stdout


def _mint_tokens(config: Path, urls: Sequence[str], env: dict[str, str], cwd: Path, ttl: int) -> dict[str, str]:
    """A user `bench` in the portal's database, and one token of theirs for each endpoint in `urls`."""
    _portal_cli(["users", "add", BENCH_USER, "--no-password"], config, env, cwd)
    tokens = {}
    for url in urls:
        mint = ["tokens", "mint", "--user", BENCH_USER, "--scope", "tools:*", "--resource", url, "--ttl", str(ttl)]
        tokens[url] = _portal_cli(mint, config, env, cwd).strip()
    return tokens


def _portal_env(pythonpath: str | None) -> dict[str, str]:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, env.get("PYTHONPATH")) if p)
    return env


def _version_in(module: str, env: dict[str, str]) -> str | None:
    """The version of `module` a process with `env` imports, None if it cannot."""
    code = f"import {module}; print(getattr({module}, '__version__', '?'))"
    probe = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    return probe.stdout.strip() if probe.returncode == 0 else None


# -- the run ----------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"eras": {}}
    payload = "portal-bench-" + "x" * max(0, args.payload_bytes - 13)
    portal_env = _portal_env(args.portal_pythonpath)
    with tempfile.TemporaryDirectory(prefix="portal-bench-") as tmp:
        folder = Path(tmp)
        upstream_port = _free_port()
        upstream_url = f"http://{HOST}:{upstream_port}/mcp"
        upstream_log = folder / "upstream.log"
        argv = [sys.executable, str(ROOT / "bench" / "upstream.py"), "--port", str(upstream_port)]
        with running(argv, upstream_log, cwd=ROOT) as upstream:
            # An SDK server answers a bare GET on /mcp with 4xx: enough to know it listens.
            await _wait_http(upstream_url, upstream, upstream_log)
            for era in args.eras:
                results["eras"][era] = await _measure_portals(args, folder, era, upstream, upstream_url, payload)
    results["portal_loop"] = {
        "uvloop": _version_in("uvloop", portal_env),
        "httptools": _version_in("httptools", portal_env),
    }
    return results


async def _measure_portals(
    args: argparse.Namespace,
    folder: Path,
    era: str,
    upstream: subprocess.Popen[bytes],
    upstream_url: str,
    payload: str,
) -> dict[str, Any]:
    """Two portals on `upstream`, pinned to `era`: one as configured by default (audit on), measured on
    both its endpoints, and one with `[audit] enabled = false`, measured on `/mcp` beside it."""
    portal_env = _portal_env(args.portal_pythonpath)
    portal_cwd = Path(args.portal_src or ROOT)
    ttl = min(24 * 3600, int(args.time_limit) + 600)
    with contextlib.ExitStack() as stack:
        started = {}
        for audit in (True, False):
            port = _free_port()
            base = f"http://{HOST}:{port}"
            config = _portal_config(folder, port, upstream_url, era, audit=audit)
            urls = (f"{base}/servers/up/mcp", f"{base}/mcp")
            tokens = _mint_tokens(config, urls, portal_env, portal_cwd, ttl)
            argv = [sys.executable, "-m", "portal", "serve", "--config", str(config), "--port", str(port)]
            argv += ["--log-level", args.portal_log_level]
            log = config.with_suffix(".log")
            process = stack.enter_context(running(argv, log, env=portal_env, cwd=portal_cwd))
            await _wait_http(f"{base}/readyz", process, log, _portal_ready)
            started[audit] = (process, urls, tokens)
        (audited, (server_url, mcp_url), tokens), (bare, (_, bare_url), bare_tokens) = started[True], started[False]
        targets = {
            "direct": Target("direct", era, upstream_url, "echo", payload),
            "server": Target("server", era, server_url, "echo", payload, token=tokens[server_url]),
            "mcp": Target("mcp", era, mcp_url, "up_echo", payload, token=tokens[mcp_url]),
            "mcp-noaudit": Target("mcp-noaudit", era, bare_url, "up_echo", payload, token=bare_tokens[bare_url]),
        }
        # Both portals are read on every phase, so that the idle one counts as ours, not as "other".
        on = {"portal": audited.pid, "upstream": upstream.pid, "idle_portal": bare.pid}
        off = {"portal": bare.pid, "upstream": upstream.pid, "idle_portal": audited.pid}
        pids = {name: off if name == "mcp-noaudit" else on for name in targets}
        print(
            f"era {era}: portal pids {audited.pid} (audit on), {bare.pid} (off); upstream {upstream.pid}",
            file=sys.stderr,
        )
        era_results = await measure_era(targets, pids, args)
    era_results["mcp"]["audit_cost"] = _audit_cost(era_results["mcp"], era_results["mcp-noaudit"])
    return era_results


def _audit_cost(on: dict[str, Any], off: dict[str, Any]) -> dict[str, Any]:
    """What recording every call costs: `/mcp` of the audited portal against the same of the bare one."""
    ratio = on["throughput"]["rps"] / off["throughput"]["rps"]
    cpu_on = on["throughput"]["cpu"].get("portal_us_per_call")
    cpu_off = off["throughput"]["cpu"].get("portal_us_per_call")
    return {
        "p50_delta_ms": round(on["latency"]["p50_ms"] - off["latency"]["p50_ms"], 3),
        "throughput_ratio": round(ratio, 3),
        "portal_cpu_delta_us": cpu_on - cpu_off if cpu_on is not None and cpu_off is not None else None,
        "meets_target": ratio >= 1 - AUDIT_COST_TARGET,
    }


async def measure_era(
    targets: dict[str, Target], pids: dict[str, dict[str, int]], args: argparse.Namespace
) -> dict[str, Any]:
    """All targets, interleaved: the latency phase in 2 x `args.rounds` chunks and the throughput phase
    in `args.rounds` slices, target after target in a rotating order, so that drift and other load on
    the machine weigh on all of them alike. Connections (and 2025-11-25 sessions) stay open throughout."""
    names = list(targets)
    latencies = {name: Phase() for name in names}
    throughputs = {name: Phase() for name in names}
    async with contextlib.AsyncExitStack() as stack:
        single = {name: await stack.enter_async_context(_client(1)) for name in names}
        pooled = {name: await stack.enter_async_context(_client(args.concurrency)) for name in names}
        for name, target in targets.items():
            await target.open(single[name])
            stack.push_async_callback(target.close, single[name])
            await target.check(single[name], time.monotonic() + 10)
            await warm_up(single[name], target, args.warmup, 1)
            await warm_up(pooled[name], target, args.concurrency * 2, args.concurrency)
        chunks = 2 * args.rounds
        for turn in range(chunks):
            for name in names[turn % len(names) :] + names[: turn % len(names)]:
                calls = max(1, args.calls // chunks)
                await latency_chunk(single[name], targets[name], latencies[name], calls, pids[name])
        for turn in range(args.rounds):
            for name in names[turn % len(names) :] + names[: turn % len(names)]:
                await throughput_chunk(
                    pooled[name],
                    targets[name],
                    throughputs[name],
                    args.concurrency,
                    args.duration / args.rounds,
                    max(1, args.max_calls // args.rounds),
                    pids[name],
                )
    era_results: dict[str, Any] = {}
    for name, target in targets.items():
        era_results[name] = {
            "latency": latency_figures(latencies[name]),
            "throughput": throughput_figures(throughputs[name], args.concurrency),
        }
        _progress(target.era, name, "latency", era_results[name]["latency"])
        _progress(target.era, name, "throughput", era_results[name]["throughput"])
    for name in targets:
        if name != "direct":
            era_results[name]["vs_direct"] = _compare(era_results[name], era_results["direct"])
    return era_results


def _compare(portal: dict[str, Any], direct: dict[str, Any]) -> dict[str, Any]:
    overhead = portal["latency"]["p50_ms"] - direct["latency"]["p50_ms"]
    ratio = portal["throughput"]["rps"] / direct["throughput"]["rps"]
    return {
        "p50_overhead_ms": round(overhead, 3),
        "p99_overhead_ms": round(portal["latency"]["p99_ms"] - direct["latency"]["p99_ms"], 3),
        "throughput_ratio": round(ratio, 3),
        "cpu_bound_ratio": _cpu_bound_ratio(portal, direct),
        "meets_latency_target": overhead <= OVERHEAD_TARGET_MS,
        "meets_throughput_target": ratio >= RATIO_TARGET,
    }


def _cpu_bound_ratio(portal: dict[str, Any], direct: dict[str, Any]) -> float | None:
    """The throughput ratio if each server process had a core of its own: each is one event loop, so
    the busier one per call bounds the calls per second (an estimate from the measured CPU per call)."""
    via, alone = portal["throughput"]["cpu"], direct["throughput"]["cpu"]
    slowest = max(via.get("portal_us_per_call", 0), via.get("upstream_us_per_call", 0))
    baseline = alone.get("upstream_us_per_call", 0)
    return round(baseline / slowest, 3) if slowest and baseline else None


def _progress(era: str, name: str, phase: str, figures: dict[str, Any]) -> None:
    shown = ", ".join(f"{k}={v}" for k, v in figures.items() if not isinstance(v, dict | list))
    print(f"  {era} {name:<6} {phase:<10} {shown}", file=sys.stderr, flush=True)


def table(results: dict[str, Any]) -> str:
    header = ["era", "endpoint", "p50 ms", "p99 ms", "rps @c", "portal us", "upstr us", "other", "p50 +ms", "ratio"]
    header += ["targets"]
    rows = [header]
    for era, targets in results["eras"].items():
        for name, figures in targets.items():
            lat, thr = figures["latency"], figures["throughput"]
            cpu = thr["cpu"]
            versus = figures.get("vs_direct")
            endpoint = {
                "direct": "upstream /mcp",
                "server": "/servers/up/mcp",
                "mcp": "/mcp (up_echo)",
                "mcp-noaudit": "/mcp, audit off",
            }[name]
            rows.append(
                [
                    era,
                    endpoint,
                    f"{lat['p50_ms']:.2f}",
                    f"{lat['p99_ms']:.2f}",
                    f"{thr['rps']:.0f} @{thr['concurrency']}",
                    str(cpu.get("portal_us_per_call", "-")) if name != "direct" else "-",
                    str(cpu.get("upstream_us_per_call", "-")),
                    f"{cpu['other_cores']:.2f}",
                    f"{versus['p50_overhead_ms']:+.2f}" if versus else "-",
                    f"{versus['throughput_ratio']:.2f}" if versus else "-",
                    _verdict(versus) if versus else "-",
                ]
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    lines.append("")
    for era, targets in results["eras"].items():
        cost = targets.get("mcp", {}).get("audit_cost")
        if cost:
            lines.append(
                f"audit, {era}: /mcp with audit on vs off: p50 {cost['p50_delta_ms']:+.2f} ms, "
                f"throughput x{cost['throughput_ratio']:.2f}, portal CPU {cost['portal_cpu_delta_us']:+} us/call "
                f"(target: at most {AUDIT_COST_TARGET:.0%} of throughput: {'ok' if cost['meets_target'] else 'MISSED'})"
            )
    lines.append(
        "portal us, upstr us: CPU microseconds per call of each process at concurrency "
        f"{results['settings']['concurrency']}; other: cores busy outside the three benchmark "
        "processes (kernel networking, other work on the machine)."
    )
    return "\n".join(lines)


def _verdict(versus: dict[str, Any]) -> str:
    latency_ok, ratio_ok = versus["meets_latency_target"], versus["meets_throughput_target"]
    return f"p50 {'ok' if latency_ok else 'MISSED'}, rps {'ok' if ratio_ok else 'MISSED'}"


async def _bounded(step: Any, limit: float) -> Any:
    async with asyncio.timeout(limit):
        return await step


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1200, help="calls measured at concurrency 1 (1200)")
    parser.add_argument("--warmup", type=int, default=200, help="calls before measuring at concurrency 1 (200)")
    parser.add_argument("--concurrency", type=int, default=32, help="callers in the throughput phase (32)")
    parser.add_argument("--duration", type=float, default=4.5, help="seconds of each throughput phase (4.5)")
    parser.add_argument(
        "--rounds", type=int, default=6, help="throughput slices per target, latency chunks = 2x (6); interleaved"
    )
    parser.add_argument("--max-calls", type=int, default=50_000, help="cap on calls in a throughput phase")
    parser.add_argument("--payload-bytes", type=int, default=64, help="size of the echoed text (64)")
    parser.add_argument("--eras", nargs="+", choices=ERAS, default=list(ERAS), help="client eras to measure")
    parser.add_argument(
        "--portal-pythonpath",
        metavar="DIR",
        help="prepended to the portal process's PYTHONPATH only (e.g. a folder with uvloop and httptools)",
    )
    parser.add_argument(
        "--portal-src",
        metavar="DIR",
        help="run the portal package found in DIR (its working directory) instead of this checkout's",
    )
    parser.add_argument(
        "--portal-log-level",
        default="warning",
        help="`portal serve --log-level` (warning: no per-request access log; info, the serve default, logs each)",
    )
    parser.add_argument("--time-limit", type=float, default=240.0, help="seconds the whole run may take (240)")
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "proxy.json"), help="JSON results")
    args = parser.parse_args(argv)
    if not 1 <= args.duration <= 30 or not 1 <= args.calls <= 20_000 or not 1 <= args.concurrency <= 256:
        parser.error("--duration must be 1-30 s, --calls 1-20000 and --concurrency 1-256")
    if not 1 <= args.rounds <= 20:
        parser.error("--rounds must be 1-20")

    started = time.monotonic()
    load_before = os.getloadavg()
    try:
        results = asyncio.run(_bounded(run(args), args.time_limit))
    except TimeoutError:
        print(f"bench: stopped after --time-limit {args.time_limit:g} s", file=sys.stderr)
        return 1
    results = {
        "benchmark": "proxy",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.monotonic() - started, 1),
        "settings": {k: v for k, v in vars(args).items() if k != "output"},
        "targets": {"p50_overhead_ms_max": OVERHEAD_TARGET_MS, "throughput_ratio_min": RATIO_TARGET},
        "machine": machine(PACKAGES),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        **results,
    }
    print(table(results))
    loop = results["portal_loop"]
    print(
        f"\nportal: uvloop {loop['uvloop'] or 'no'}, httptools {loop['httptools'] or 'no'}; "
        f"{results['machine']['nproc']} cores shared by client, portal and upstream "
        "(throughput ratios are pessimistic on so few cores)."
    )
    busy = max(
        figures[phase]["cpu"]["other_cores"]
        for targets in results["eras"].values()
        for figures in targets.values()
        for phase in ("latency", "throughput")
    )
    results["other_cores_max"] = busy
    if busy > BUSY_CORES:
        print(
            f"warning: up to {busy:.2f} cores were busy outside the benchmark; latency and calls per second are "
            "disturbed (CPU per call less so). Re-run on a quiet machine for figures to compare."
        )
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
