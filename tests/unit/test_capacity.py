"""core/capacity: when a node's primaries go over its max_primaries, and back."""

from __future__ import annotations

import pytest

from hakit.core.capacity import Capacity, observe


@pytest.mark.parametrize(
    ("before", "primaries", "limit", "level", "words"),
    [
        ((), ("a",), 1, None, ""),  # within
        (
            ("a",),
            ("a", "b"),
            1,
            "warning",
            "node3 runs 2 primaries (a, b), more than its max_primaries 1",
        ),
        (("a", "b"), ("b", "a"), 1, None, ""),  # still over, nothing new: said once
        (("a", "b"), ("a", "b", "c"), 1, "warning", "runs 3 primaries (a, b, c)"),  # one more
        (("a", "b", "c"), ("a", "c"), 1, None, ""),  # fewer but still over: nothing new
        (("a", "b"), ("b",), 1, "info", "node3 is back within its max_primaries 1 (b)"),
        (("a", "b"), ("a", "b"), None, None, ""),  # no limit: never over
    ],
)
def test_observe(
    before: tuple[str, ...],
    primaries: tuple[str, ...],
    limit: int | None,
    level: str | None,
    words: str,
) -> None:
    prev = Capacity(limit, before)
    now, say = observe(prev, "node3", primaries, limit)
    assert now.primaries == tuple(sorted(primaries))
    if level is None:
        assert say is None
    else:
        assert say is not None
        assert say[0] == level
        assert words in say[1]


def test_to_json() -> None:
    assert Capacity(1, ("a", "b")).to_json() == {
        "max_primaries": 1,
        "primaries": ["a", "b"],
        "over": True,
    }
    assert Capacity(None).to_json() == {"max_primaries": None, "primaries": [], "over": False}
