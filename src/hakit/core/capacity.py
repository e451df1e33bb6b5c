"""Whether a node runs more primaries than it can carry (`max_primaries` in cluster.yaml).

A pure observer: fed the node's primaries as they change, it says when the node goes over its
capacity (a warning naming them), gets one more while over (a warning again), and is back
within it (info). Nothing is refused: a takeover is never held back for capacity.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Capacity:
    limit: int | None
    primaries: tuple[str, ...] = ()

    @property
    def over(self) -> bool:
        return self.limit is not None and len(self.primaries) > self.limit

    def to_json(self) -> dict[str, object]:
        return {"max_primaries": self.limit, "primaries": list(self.primaries), "over": self.over}


def observe(
    prev: Capacity, node: str, primaries: tuple[str, ...], limit: int | None
) -> tuple[Capacity, tuple[str, str] | None]:
    """The new state, and (level, sentence) when the timeline should hear of it."""
    now = Capacity(limit, tuple(sorted(primaries)))
    names = ", ".join(now.primaries)
    if now.over and (not prev.over or set(now.primaries) - set(prev.primaries)):
        return now, (
            "warning",
            f"{node} runs {len(now.primaries)} primaries ({names}), more than its "
            f"max_primaries {limit}: its resources may not carry them all",
        )
    if prev.over and not now.over:
        return now, ("info", f"{node} is back within its max_primaries {limit} ({names or 'none'})")
    return now, None
