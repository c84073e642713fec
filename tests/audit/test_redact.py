"""The secret detector: every kind of secret it knows is caught, through the quick pre-check too."""

from __future__ import annotations

import pytest

from portal.audit import redact
from portal.audit.redact import MARKER_PREFIX, Redactor

EXAMPLES = [
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----",
    "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl",
    "Bearer abcdefghijklmnop1234",
    "basic dXNlcjpwYXNzd29yZA==",
    "AKIAIOSFODNN7EXAMPLE",
    "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG",
    "ghp_0123456789abcdefghij0123456789abcdef",
    "github_pat_0123456789abcdefghij0123456789",
    "xoxb-1234567890-abcdefghij",
    "sk-abcdefghijklmnopqrstuvwxyz",
    "AIzaSyA1234567890abcdefghijklmnopqrstuv",
    "sk_live_0123456789abcdefgh",
    "password=hunter2",
    "API-KEY: abc123",
    "https://user:s3cret@example.test/path",
]


@pytest.mark.parametrize("secret", EXAMPLES)
def test_each_kind_of_secret_is_replaced_by_a_marker_inside_any_text(secret: str) -> None:
    scrubbed = Redactor(b"k" * 32).scrub({"note": f"see {secret} here"})["note"]
    assert MARKER_PREFIX in scrubbed
    assert secret not in scrubbed


def test_every_pattern_is_reachable_through_the_quick_check() -> None:
    for pattern in redact._SECRET_PATTERNS:
        hits = [example for example in EXAMPLES if pattern.search(example)]
        assert hits, f"no example for {pattern.pattern}"
        assert all(redact._may_hold_secret(example) for example in hits)


def test_text_without_secrets_is_left_as_it_is() -> None:
    text = "portal-bench-xxxxxxxx night flight to the task-list, 42 items"
    assert Redactor(b"k" * 32).scrub(text) == text
