"""`policies/tests/*.toml`: requests and the decisions they must get.

```toml
[[case]]
name = "demo may create a note"
user = "demo"
groups = ["demo"]
tool = "notes_create_note"          # the aggregated name, {server}_{tool}
args = { title = "a", body = "b" }
via_codemode = false                # optional
expect = "allow"                    # or "deny"
policies = ["demo.notes-write"]     # optional: the deciding policy ids
```
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from portal.policy.engine import PolicyEngine, Subject

__all__ = ["BASE_SCHEMA", "PERMIT_ALL", "CaseResult", "run_cases", "write_policies"]

BASE_SCHEMA = (Path(__file__).with_name("base.cedarschema")).read_text(encoding="utf-8")
"""The base schema (the repository's `policies/schema.cedarschema`, shipped with the package)."""

PERMIT_ALL = '@id("permit-all")\npermit (principal, action, resource);\n'
"""A policy set that leaves every decision to the token's capabilities (tests, trials)."""


def write_policies(directory: Path, policies: str = PERMIT_ALL) -> Path:
    """A policy folder: the base schema and `policies` as `main.cedar`; returns `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "schema.cedarschema").write_text(BASE_SCHEMA, encoding="utf-8")
    (directory / "main.cedar").write_text(policies, encoding="utf-8")
    return directory


@dataclass(frozen=True)
class CaseResult:
    file: str
    name: str
    ok: bool
    detail: str


def run_cases(engine: PolicyEngine, directory: Path) -> list[CaseResult]:
    results: list[CaseResult] = []
    for path in sorted(directory.glob("*.toml")):
        cases: list[dict[str, Any]] = tomllib.loads(path.read_text(encoding="utf-8")).get("case", [])
        for number, case in enumerate(cases, 1):
            name = str(case.get("name", f"case {number}"))
            results.append(_run(engine, path.name, name, case))
    return results


def _run(engine: PolicyEngine, file: str, name: str, case: dict[str, Any]) -> CaseResult:
    action = str(case["tool"])
    info = engine.snapshot.built.actions.get(action)
    server = str(case.get("server") or (info.server if info else ""))
    who = Subject(
        str(case["user"]),
        tuple(case.get("groups", ())),
        str(case.get("client_id", "test")),
        frozenset(case.get("scopes", ())),
    )
    decision = engine.decide(who, action, server, case.get("args", {}), via_codemode=bool(case.get("via_codemode")))
    problems = []
    if decision.decision != case.get("expect"):
        problems.append(f"expected {case.get('expect')}, got {decision.decision}")
    if "policies" in case and sorted(case["policies"]) != sorted(decision.policy_ids):
        problems.append(f"expected policies {sorted(case['policies'])}, got {sorted(decision.policy_ids)}")
    if decision.errors:
        problems.append("errors: " + "; ".join(decision.errors))
    ok = not problems or (problems == ["errors: " + "; ".join(decision.errors)] and case.get("expect") == "deny")
    return CaseResult(file, name, ok, "; ".join(problems) or "ok")
