"""Reading `policies/*.cedar`: statements, their file and line, annotations, validation.

Cedar's parser reports a syntax error without a position, so each file is cut into
its statements (top-level `;`, outside strings and `//` comments) and each statement
is parsed alone: the first that fails gives the file and line. Validation errors name
positional ids (`policy3`), which map back to the same statements.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cedarpy

from portal.errors import PortalError

log = logging.getLogger("portal.policy")

__all__ = ["LoadedPolicies", "PolicyError", "PolicySource", "load_policy_files", "parse_policies"]


class PolicyError(PortalError):
    """A policy set that cannot be used: the running set stays."""

    code = "policy_invalid"
    http_status = 400

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems), problems=problems)
        self.problems = problems


@dataclass(frozen=True)
class PolicySource:
    """One policy as written: where it is, its annotations."""

    index: int
    """Its position in the set (`policy{index}` in Cedar's answers)."""
    file: str
    line: int
    text: str
    annotations: dict[str, str]

    @property
    def policy_id(self) -> str:
        return self.annotations.get("id", f"policy{self.index}")


@dataclass(frozen=True)
class LoadedPolicies:
    text: str
    sources: tuple[PolicySource, ...]
    version: str
    files: dict[str, float] = field(default_factory=dict)
    """mtime of every file read (the watcher compares them)."""
    stub: str = ""


def split_statements(text: str) -> list[tuple[int, str]]:
    """(line, text) of each `;`-terminated statement; a trailing fragment is kept (a syntax error)."""
    statements: list[tuple[int, str]] = []
    start = 0
    start_line: int | None = None
    line = 1
    i = 0
    in_string = False
    while i < len(text):
        char = text[i]
        if in_string:
            if char == "\\":
                i += 1
            elif char == '"':
                in_string = False
            elif char == "\n":
                line += 1
        elif char == "/" and text.startswith("//", i):
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
            continue
        elif char == "\n":
            line += 1
        elif not char.isspace():
            if start_line is None:
                start_line = line
            if char == '"':
                in_string = True
            elif char == ";":
                statements.append((start_line, text[start : i + 1]))
                start, start_line = i + 1, None
        i += 1
    if start_line is not None:
        statements.append((start_line, text[start:]))
    return statements


def parse_policies(files: Mapping[str, str], stub: str = "") -> LoadedPolicies:
    """Parse `files` (name -> text); raises PolicyError naming file, line and reason."""
    problems: list[str] = []
    sources: list[PolicySource] = []
    chunks: list[str] = []
    for name in sorted(files):
        for line, statement in split_statements(files[name]):
            try:
                cedarpy.PolicySet.from_str(statement)
                parsed = json.loads(cedarpy.policies_to_json_str(statement))
            except ValueError as exc:
                problems.append(f"{name}:{line}: {exc}")
                continue
            policies = parsed.get("staticPolicies", {})
            if len(policies) != 1 or parsed.get("templates"):
                problems.append(f"{name}:{line}: expected one static policy")
                continue
            (body,) = policies.values()
            annotations = {key: value or "" for key, value in (body.get("annotations") or {}).items()}
            if not annotations.get("id"):
                problems.append(f"{name}:{line}: every policy needs an @id(...) annotation")
            source = PolicySource(len(sources), name, line, statement.strip(), annotations)
            problems.extend(_check_obligations(source))
            sources.append(source)
            chunks.append(statement)
    seen: dict[str, PolicySource] = {}
    for source in sources:
        other = seen.setdefault(source.policy_id, source)
        if other is not source:
            problems.append(
                f"{source.file}:{source.line}: @id({source.policy_id!r}) is also used at {other.file}:{other.line}"
            )
    if problems:
        raise PolicyError(problems)
    digest = hashlib.sha256(stub.encode())
    for name in sorted(files):
        digest.update(b"\0" + name.encode() + b"\0" + files[name].encode())
    return LoadedPolicies("\n".join(chunks), tuple(sources), digest.hexdigest()[:16], stub=stub)


def _check_obligations(source: PolicySource) -> list[str]:
    from portal.policy.obligations import parse_rate

    where = f"{source.file}:{source.line}"
    problems = []
    approval = source.annotations.get("approval")
    if approval is not None and approval != "required":
        problems.append(f'{where}: @approval takes "required"')
    rate = source.annotations.get("rate")
    if rate is not None:
        try:
            parse_rate(rate)
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
    return problems


def validation_problems(loaded: LoadedPolicies, schema: Any, *, unknown: list[str] | None = None) -> list[str]:
    """Cedar validation of `loaded` against `schema` (a cedarpy Schema), as file:line: reason.

    A policy naming an action the catalog does not have (yet) is not a problem: the schema is
    generated from the servers' live tool lists, and a set must not be refused, nor a portal kept
    from starting, because a server is down or still connecting. Such a policy matches no call
    until the tool is there. Those findings go to `unknown` (and to the log) instead.
    """
    if not loaded.sources:
        return []
    result = cedarpy.validate_policies(loaded.text, schema)
    by_policy: dict[str, list[str]] = {}
    for found in result.errors:
        by_policy.setdefault(found.policy_id, []).append(str(found.error))
    problems = []
    for cedar_id, errors in by_policy.items():
        source = _source_of(loaded, cedar_id)
        where = f"{source.file}:{source.line} ({source.policy_id})" if source else cedar_id
        missing = [text for text in errors if "unrecognized action" in text]
        for text in errors:
            if missing and (text in missing or _NO_APPLICABLE_ACTION in text):
                continue
            problems.append(f"{where}: {text}")
        if missing:
            notes = [f"{where}: {text} (not in the catalog now; it matches no call until it is)" for text in missing]
            log.warning("%s", "; ".join(notes))
            if unknown is not None:
                unknown.extend(notes)
    return problems


_NO_APPLICABLE_ACTION = "unable to find an applicable action"


def _source_of(loaded: LoadedPolicies, cedar_id: str) -> PolicySource | None:
    if cedar_id.startswith("policy") and cedar_id[6:].isdigit():
        index = int(cedar_id[6:])
        if index < len(loaded.sources):
            return loaded.sources[index]
    return None


def load_policy_files(directory: Path) -> tuple[dict[str, str], str, dict[str, float]]:
    """The `*.cedar` texts, the schema stub and the mtimes of `directory`."""
    if not directory.is_dir():
        raise PolicyError([f"{directory}: no such policy folder"])
    texts: dict[str, str] = {}
    mtimes: dict[str, float] = {}
    for path in sorted(directory.glob("*.cedar")):
        texts[path.name] = path.read_text(encoding="utf-8")
        mtimes[path.name] = path.stat().st_mtime_ns
    schema_path = directory / "schema.cedarschema"
    if not schema_path.is_file():
        raise PolicyError([f"{schema_path}: missing"])
    mtimes[schema_path.name] = schema_path.stat().st_mtime_ns
    return texts, schema_path.read_text(encoding="utf-8"), mtimes
