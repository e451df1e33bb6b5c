"""Histograms of durations for the metrics and the lab's reports: a count per bucket and the
sum, cheap enough for every heartbeat and every fsync, and what can be read back from one.

A snapshot is `{"bounds": [b, ...], "counts": [n per bucket ..., n above every bound], "sum": s}`
(the form the status document carries and `hakit.metrics` turns into a Prometheus histogram).
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from typing import Any


class Latency:
    """A histogram of durations: a count per bucket (the last one: above every bound) and the
    sum; thread-safe, a bisection and two additions per sample."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.max = 0.0
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        i = bisect_left(self.bounds, seconds)  # the first bound >= seconds (le semantics)
        with self._lock:
            self.counts[i] += 1
            self.sum += seconds
            self.max = max(self.max, seconds)

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            return {
                "bounds": list(self.bounds),
                "counts": list(self.counts),
                "sum": self.sum,
                "max": self.max,
            }


def parsed(snap: Any) -> tuple[list[float], list[int]] | None:
    """(bounds, counts) of a snapshot, or None when it is not one (absent, or malformed)."""
    if not isinstance(snap, Mapping):
        return None
    bounds, counts = snap.get("bounds"), snap.get("counts")
    if not (isinstance(bounds, list) and isinstance(counts, list)):
        return None
    if len(counts) != len(bounds) + 1:
        return None
    try:
        return [float(b) for b in bounds], [int(n) for n in counts]
    except (TypeError, ValueError):
        return None


def difference(later: Any, earlier: Any) -> dict[str, object] | None:
    """What was counted between two snapshots of the same histogram (None: not comparable)."""
    a, b = parsed(later), parsed(earlier)
    if a is None:
        return None
    if b is None or b[0] != a[0]:
        return dict(later)
    counts = [x - y for x, y in zip(a[1], b[1], strict=True)]
    if min(counts, default=0) < 0:  # the process restarted in between: its counts began again
        return dict(later)
    total = float(later.get("sum", 0.0)) - float(earlier.get("sum", 0.0))
    return {"bounds": a[0], "counts": counts, "sum": total, "max": later.get("max")}


def quantile(snap: Any, q: float) -> float | None:
    """The upper bound of the bucket holding the `q` quantile (an upper estimate, as
    Prometheus' histogram_quantile is one); `inf` above the last bound; None when empty."""
    p = parsed(snap)
    if p is None:
        return None
    bounds, counts = p
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for bound, n in zip([*bounds, float("inf")], counts, strict=True):
        seen += n
        if seen >= rank and n:
            return bound
    return float("inf")


def merged(snaps: Sequence[Any]) -> dict[str, object] | None:
    """Several histograms of the same buckets as one (e.g. every network of a peer)."""
    out: dict[str, object] | None = None
    for s in snaps:
        p = parsed(s)
        if p is None:
            continue
        if out is None:
            out = {"bounds": p[0], "counts": p[1], "sum": float(s.get("sum", 0.0)), "max": 0.0}
        elif out["bounds"] == p[0]:
            out["counts"] = [x + y for x, y in zip(out["counts"], p[1], strict=True)]  # type: ignore[call-overload]
            out["sum"] = float(out["sum"]) + float(s.get("sum", 0.0))  # type: ignore[arg-type]
        else:
            continue
        out["max"] = max(float(out["max"] or 0.0), float(s.get("max") or 0.0))  # type: ignore[arg-type]
    return out
