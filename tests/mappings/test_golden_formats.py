"""Every format writes, for a fixed corpus, the bytes it wrote when the snapshot was taken
(`tests/golden_formats.py` says how to regenerate it when a change is meant to alter them)."""
from __future__ import annotations

import sys
from typing import Any

import orjson
import pytest

from tests.mappings import golden_formats


@pytest.fixture(scope="module", autouse=True)
def _deep_json() -> Any:
    previous = sys.getrecursionlimit()
    sys.setrecursionlimit(max(previous, 10_000))
    yield
    sys.setrecursionlimit(previous)


def _comparable(row: dict[str, Any]) -> dict[str, Any]:
    """A library's own wording of an error is not ours to keep: an error stays an error."""
    return {key: "error" if isinstance(value, str) and value.startswith("error ") else value
            for key, value in row.items()}


def test_every_format_writes_the_bytes_of_the_snapshot() -> None:
    expected = [orjson.loads(line) for line in golden_formats.SNAPSHOT.read_bytes().splitlines()]
    found = golden_formats.snapshot()
    assert [row["case"] for row in found] == [row["case"] for row in expected]
    differences = [(old["case"], key, old.get(key), new.get(key))
                   for old, new in zip(expected, found, strict=True)
                   for key in sorted(set(old) | set(new))
                   if _comparable(old).get(key) != _comparable(new).get(key)]
    assert not differences, f"{len(differences)} outputs differ, the first: {differences[:5]}"
