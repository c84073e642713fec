"""The fast path of `canonical_json` must give the reference encoder's bytes, or the chain breaks."""

from __future__ import annotations

import random
from typing import Any

from portal.audit import canonical
from portal.audit.canonical import canonical_json

_ALPHABET = 'ab"\\\n\t\x00\x1f\x7f/é\u2028\ufb33\U0001f600 '


def _reference(value: Any) -> bytes:
    parts: list[str] = []
    canonical._encode(value, parts)
    return "".join(parts).encode("utf-8")


def _value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(8 if depth < 3 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 2**53 + 1, 2**63 - 1, -(2**63), 2**70, rng.randrange(-1000, 1000)])
    if kind == 3:
        return rng.choice([0.5, 1.0, 1e21, 1e-7, -0.0, 123.456])
    if kind == 4:
        return "".join(rng.choice(_ALPHABET) for _ in range(rng.randrange(6)))
    if kind == 5:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["a", "B", "é", "\ufb33", "\U0001f600", "x y", ""]
    return {rng.choice(keys) + str(index % 2): _value(rng, depth + 1) for index in range(rng.randrange(5))}


def test_canonical_json_gives_the_reference_bytes_for_any_json_value() -> None:
    rng = random.Random(8785)
    for _ in range(3000):
        value = _value(rng)
        assert canonical_json(value) == _reference(value), value


def test_canonical_json_takes_the_fast_path_only_without_floats_and_non_ascii_keys() -> None:
    assert canonical._orjson_safe({"a": [1, "é", None, True, {"b": (2,)}]})
    assert not canonical._orjson_safe({"a": [1.5]})
    assert not canonical._orjson_safe({"é": 1})
    assert not canonical._orjson_safe({1: 1})
