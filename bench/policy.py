"""Policy decision cost with 100 policies, and tools/list filtering over 500 tools.

- decision_us: 50 tools called over and over with the same arguments (the decision cache's
  case, as a client repeating calls); decision_miss_us: every call with new arguments (Cedar
  evaluates each one: the cost of a first call).
- list_500_cold_ms: every cache of the snapshot emptied first (the first listing after a load);
  list_500_cached_ms: the same listing again; list_500_reference_ms: one Cedar partial evaluation
  per tool, the way lists were filtered before (the answers must agree).

.venv/bin/python bench/policy.py   -> bench/results/policy.json
"""

from __future__ import annotations

import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from portal.catalog import Catalog, ServerCatalog
from portal.policy.engine import PolicyEngine, Subject

ROOT = Path(__file__).resolve().parents[1]
SERVERS, TOOLS_PER_SERVER = 10, 50


def catalog() -> Catalog:
    out = Catalog()
    for s in range(SERVERS):
        entry = ServerCatalog(f"srv{s}")
        entry.items["tools"] = [
            {
                "name": f"tool{t}",
                "inputSchema": {
                    "type": "object",
                    "properties": {"repo": {"type": "string"}, "amount": {"type": "integer"}},
                    "required": ["repo"],
                },
                "annotations": {"readOnlyHint": t % 3 == 0, "destructiveHint": t % 3 == 2},
            }
            for t in range(TOOLS_PER_SERVER)
        ]
        out.replace(entry)
    return out


def policies() -> str:
    out = []
    for i in range(100):
        s, t = i % SERVERS, i % TOOLS_PER_SERVER
        if i % 4 == 0:
            out.append(
                f'@id("p{i}")\npermit (principal in Group::"g{i % 7}", action in Action::"server:srv{s}", resource);'
            )
        elif i % 4 == 1:
            out.append(
                f'@id("p{i}")\npermit (principal in Group::"g{i % 7}", action == Action::"srv{s}_tool{t}", resource)\n'
                'when { context.input.repo like "acme/*" && '
                "(if context.input has amount then context.input.amount < 1000 else true) };"
            )
        elif i % 4 == 2:
            out.append(f'@id("p{i}")\npermit (principal in Group::"g{i % 7}", action in Action::"read", resource);')
        else:
            out.append(
                f'@id("p{i}")\nforbid (principal, action in Action::"destructive", resource) '
                "when { context.via_codemode };"
            )
    return "\n\n".join(out)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    folder = Path(tempfile.mkdtemp())
    shutil.copy(ROOT / "policies" / "schema.cedarschema", folder / "schema.cedarschema")
    (folder / "bench.cedar").write_text(policies())
    cat = catalog()
    started = time.perf_counter()
    engine = PolicyEngine(folder, cat, poll_interval=0)
    load_ms = (time.perf_counter() - started) * 1000
    who = Subject("alice", ("g0", "g1"), "client", frozenset({"tools:*"}))
    args = {"repo": "acme/x", "amount": 5}
    for _ in range(200):
        engine.decide(who, "srv1_tool1", "srv1", args)
    samples = []
    for i in range(5000):
        action = f"srv{i % SERVERS}_tool{i % TOOLS_PER_SERVER}"
        n0 = time.perf_counter_ns()
        engine.decide(who, action, f"srv{i % SERVERS}", args)
        samples.append((time.perf_counter_ns() - n0) / 1000)
    misses = []
    for i in range(2000):
        action = f"srv{i % SERVERS}_tool{i % TOOLS_PER_SERVER}"
        fresh = {"repo": "acme/x", "amount": 10_000 + i}
        n0 = time.perf_counter_ns()
        engine.decide(who, action, f"srv{i % SERVERS}", fresh)
        misses.append((time.perf_counter_ns() - n0) / 1000)
    actions = list(engine.snapshot.built.actions.items())
    cold = []
    warm = []
    for _round in range(5):
        engine.snapshot.clear_caches()
        t0 = time.perf_counter()
        visible = sum(engine.visible(who, name, info.server) for name, info in actions)
        cold.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        sum(engine.visible(who, name, info.server) for name, info in actions)
        warm.append((time.perf_counter() - t0) * 1000)
    reference = []
    for _round in range(2):
        t0 = time.perf_counter()
        expected = sum(engine.partially_evaluate(who, name, info.server) for name, info in actions)
        reference.append((time.perf_counter() - t0) * 1000)
    assert expected == visible, (expected, visible)
    result = {
        "python": platform.python_version(),
        "policies": 100,
        "tools": len(actions),
        "load_ms": round(load_ms, 1),
        "decision_us": {
            "p50": round(pct(samples, 0.5), 1),
            "p90": round(pct(samples, 0.9), 1),
            "p99": round(pct(samples, 0.99), 1),
            "mean": round(statistics.mean(samples), 1),
        },
        "decision_miss_us": {
            "p50": round(pct(misses, 0.5), 1),
            "p90": round(pct(misses, 0.9), 1),
            "p99": round(pct(misses, 0.99), 1),
        },
        "list_500_cold_ms": {"median": round(statistics.median(cold), 2)},
        "list_500_cached_ms": {"median": round(statistics.median(warm), 2)},
        "list_500_reference_ms": {"median": round(statistics.median(reference), 1)},
        "visible_tools": visible,
        "targets": {"decision_p50_us": 100, "list_500_ms": 20},
    }
    out = ROOT / "bench" / "results" / "policy.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
