"""Redaction of what the audit log stores: secrets and policy-named fields become keyed hashes.

A redacted value is replaced by the marker `[redacted:<hmac>]`, where `<hmac>` is the first
128 bits of HMAC-SHA256 over the value's canonical JSON, keyed with a key derived from the
master key: equal values give equal markers (so an auditor can match them) without the value
being recoverable, and nobody without the key can test guesses against the log.

What is redacted:
- values under names that say "secret" (`password`, `token`, `api_key`, `authorization`, ...);
- substrings that look like secrets wherever they are (JWTs, bearer credentials, AWS access
  keys, PEM private keys, GitHub/Slack/OpenAI-style tokens, `password=...` pairs);
- the JSON paths a policy names with `@redact` (`input.password`, `input.items.*.card`, `result`).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from typing import Any

from portal.audit.canonical import canonical_json

__all__ = ["MARKER_PREFIX", "Redactor"]

MARKER_PREFIX = "[redacted:"

_SECRET_NAME = re.compile(
    r"(pass(word|wd|phrase)?|pwd|secret|token|api[_-]?key|apikey|auth(orization)?|credential|cookie|"
    r"private[_-]?key|access[_-]?key|session[_-]?(id|key)|signature|otp|pin)$|^(x-api-key|proxy-authorization)$",
    re.IGNORECASE,
)

_SECRET_PATTERNS = [
    re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)", re.DOTALL),
    re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"),  # JWT / JWS
    re.compile(r"(?i)\b(bearer|basic|token)\s+[A-Za-z0-9\-._~+/]{8,}=*"),  # Authorization values
    re.compile(r"\b(AKIA|ASIA|AGPA|AIDA|AROA)[0-9A-Z]{16}\b"),  # AWS access key ids
    re.compile(r"(?i)aws_?secret_?access_?key\s*[:=]\s*\S+"),
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"),  # GitHub
    re.compile(r"\bgithub_pat_[A-Za-z0-9_]{30,}\b"),
    re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}\b"),  # Slack
    re.compile(r"\bsk-[A-Za-z0-9_-]{20,}\b"),  # OpenAI-style
    re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b"),  # Google API keys
    re.compile(r"\b(sk|rk|pk)_(live|test)_[A-Za-z0-9]{16,}\b"),  # Stripe
    re.compile(r"(?i)\b(password|passwd|pwd|secret|token|api[_-]?key)\s*[=:]\s*[^\s&;,]+"),
    re.compile(r"(?i)(://[^/\s:@]+:)[^/\s@]+(@)"),  # credentials in URLs
]


_HINTS = (
    "-----begin",
    "eyj",
    "bearer",
    "basic",
    "token",
    "akia",
    "asia",
    "agpa",
    "aida",
    "aroa",
    "secret",
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "xox",
    "sk-",
    "aiza",
    "_live_",
    "_test_",
    "pass",
    "pwd",
    "api",
    "://",
)
"""Substrings (lowercased) at least one of which every pattern above needs: most strings hold none,
and a substring test is far cheaper than thirteen regular expressions."""


def _may_hold_secret(text: str) -> bool:
    lowered = text.lower()
    return any(hint in lowered for hint in _HINTS)


class Redactor:
    """Redacts JSON values with one HMAC key."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def marker(self, value: Any) -> str:
        """The marker that stands for `value` (equal values, equal markers)."""
        data = value.encode() if isinstance(value, str) else canonical_json(value)
        return MARKER_PREFIX + hmac.new(self._key, data, hashlib.sha256).hexdigest()[:32] + "]"

    def redact(self, document: dict[str, Any], paths: Iterable[str] = ()) -> dict[str, Any]:
        """A copy of `document` (e.g. `{"input": ..., "result": ...}`) with `paths` and detected secrets redacted."""
        value = _copy(document)
        for path in paths:
            value = self._redact_path(value, [part for part in path.split(".") if part])
        return self._detect(value)

    def scrub(self, value: Any) -> Any:
        """`value` with detected secrets redacted (no paths)."""
        return self._detect(_copy(value))

    def _redact_path(self, value: Any, parts: list[str]) -> Any:
        if not parts:
            return value if _is_marker(value) else self.marker(value)
        head, rest = parts[0], parts[1:]
        if isinstance(value, dict):
            for key in list(value):
                if head in ("*", key):
                    value[key] = self._redact_path(value[key], rest)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                if head in ("*", str(index)):
                    value[index] = self._redact_path(item, rest)
        return value

    def _detect(self, value: Any) -> Any:
        if isinstance(value, dict):
            for key, item in value.items():
                if _SECRET_NAME.search(str(key)) and isinstance(item, str | dict | list) and not _is_marker(item):
                    value[key] = self.marker(item)
                else:
                    value[key] = self._detect(item)
            return value
        if isinstance(value, list):
            return [self._detect(item) for item in value]
        if isinstance(value, str):
            return self._scrub_string(value)
        return value

    def _scrub_string(self, text: str) -> str:
        if text.startswith(MARKER_PREFIX) or not _may_hold_secret(text):
            return text
        for pattern in _SECRET_PATTERNS:
            if pattern.groups and pattern.pattern.startswith("(?i)(://"):
                text = pattern.sub(lambda m: m.group(1) + self.marker(m.group(0)) + m.group(2), text)
            else:
                text = pattern.sub(lambda m: self.marker(m.group(0)), text)
        return text


def _is_marker(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(MARKER_PREFIX) and value.endswith("]") and len(value) == 43


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(key): _copy(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_copy(item) for item in value]
    return value
