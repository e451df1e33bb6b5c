"""What a soak measured, as pure functions over the samples and the nodes' timelines: false
failovers, growth of memory and descriptors, the event loop's lag and the heartbeat gaps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hakit.latency import difference, merged, parsed, quantile

WARM_UP = 60.0  # s after the start not counted (caches filling, the first resynchronisation)
GROWTH_MIN_SPAN = 600.0  # s of samples needed before growth is judged at all
RSS_LIMIT_MIB_PER_HOUR = 8.0  # more, over the run, is a leak
FD_LIMIT = 8  # more descriptors at the end than after the warm-up is a leak

# what a node's timeline says when a failover (or a step towards one) happened
FAILOVER_KINDS = ("peer-lost",)
FAILOVER_WORDS = ("becoming primary", "leaving the primary role", "leaves the farm")


@dataclass(frozen=True)
class Probe:
    """One node at time `t`, from outside: each process of its daemon (tag -> RSS KiB, open
    descriptors), each module's `STATE status`, and the histograms its status document carries
    (heartbeat gaps by `PEER/NETWORK`, the event loop's lag)."""

    t: float
    node: str
    rss_kib: Mapping[str, int] = field(default_factory=dict)
    fds: Mapping[str, int] = field(default_factory=dict)
    states: Mapping[str, str] = field(default_factory=dict)
    gaps: Mapping[str, Any] = field(default_factory=dict)
    lag: Any = None


@dataclass(frozen=True)
class Growth:
    first: float
    last: float
    peak: float
    per_hour: float  # least-squares slope, units per hour

    def to_json(self) -> dict[str, float]:
        return {
            "first": round(self.first, 1),
            "last": round(self.last, 1),
            "peak": round(self.peak, 1),
            "per_hour": round(self.per_hour, 2),
        }


def slope_per_hour(points: Sequence[tuple[float, float]]) -> float:
    """The least-squares slope of (t seconds, value) points, per hour (0 for fewer than 2)."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    cov = sum((t - mt) * (v - mv) for t, v in points)
    return cov / var * 3600.0


def growth(points: Sequence[tuple[float, float]]) -> Growth | None:
    if not points:
        return None
    values = [v for _, v in points]
    return Growth(values[0], values[-1], max(values), slope_per_hour(points))


def settled(probes: Sequence[Probe], since: float) -> list[Probe]:
    """The probes after the warm-up (which ends at `since`)."""
    return [p for p in probes if p.t >= since]


def memory(probes: Sequence[Probe], node: str, since: float) -> Growth | None:
    """The RSS (MiB) of every process of the node's daemon together, after the warm-up."""
    pts = [(p.t, sum(p.rss_kib.values()) / 1024) for p in settled(probes, since) if p.node == node]
    return growth(pts)


def descriptors(probes: Sequence[Probe], node: str, since: float) -> Growth | None:
    pts = [(p.t, float(sum(p.fds.values()))) for p in settled(probes, since) if p.node == node]
    return growth(pts)


def leaks(probes: Sequence[Probe], nodes: Sequence[str], since: float) -> list[str]:
    """Memory or descriptors growing over a run long enough to tell (else: nothing said)."""
    out: list[str] = []
    for node in nodes:
        mine = settled([p for p in probes if p.node == node], since)
        if not mine or mine[-1].t - mine[0].t < GROWTH_MIN_SPAN:
            continue
        mem, fds = memory(probes, node, since), descriptors(probes, node, since)
        if mem is not None and mem.per_hour > RSS_LIMIT_MIB_PER_HOUR:
            out.append(
                f"{node}: the daemon's memory grows {mem.per_hour:.1f} MiB/h "
                f"({mem.first:.1f} → {mem.last:.1f} MiB; limit {RSS_LIMIT_MIB_PER_HOUR:g})"
            )
        if fds is not None and fds.last - fds.first > FD_LIMIT:
            out.append(
                f"{node}: the daemon's open descriptors grew {fds.first:.0f} → {fds.last:.0f}"
            )
    return out


def false_failovers(events: Sequence[Mapping[str, Any]], start: float, end: float) -> list[str]:
    """Every sign of a failover in [start, end] of a timeline (no fault was injected: each is
    a false one): a peer declared lost, a role taken or left, a farm node leaving."""
    out: list[str] = []
    for e in events:
        at = e.get("at")
        if not isinstance(at, int | float) or not start <= at <= end:
            continue
        msg = str(e.get("message", ""))
        if e.get("kind") in FAILOVER_KINDS or any(w in msg for w in FAILOVER_WORDS):
            out.append(f"{at:.3f} {e.get('node', '?')}: {msg[:200]}")
    return out


def link_losses(events: Sequence[Mapping[str, Any]], start: float, end: float) -> int:
    """Heartbeat networks declared silent (one network, not the peer): near misses."""
    return sum(
        1
        for e in events
        if e.get("kind") == "link-down"
        and isinstance(e.get("at"), int | float)
        and start <= e["at"] <= end
    )


def unsteady(probes: Sequence[Probe], steady: Mapping[str, Sequence[str]]) -> list[str]:
    """Probes where a module was not in one of its steady states (module -> states)."""
    out: list[str] = []
    for p in probes:
        for module, allowed in steady.items():
            state = p.states.get(module, "absent")
            if state not in allowed:
                out.append(f"{p.t:.3f} {p.node}: {module} {state}")
    return out


def spread(first: Any, last: Any) -> dict[str, float | None]:
    """p50, p99, p99.9 and the largest value counted between two snapshots of a histogram."""
    h = difference(last, first)
    p = parsed(h)
    biggest = h.get("max") if h is not None else None
    return {
        "p50": quantile(h, 0.5),
        "p99": quantile(h, 0.99),
        "p99.9": quantile(h, 0.999),
        "max_since_start": biggest if isinstance(biggest, int | float) else None,
        "count": float(sum(p[1])) if p is not None else None,
    }


def gap_spread(probes: Sequence[Probe], node: str, since: float) -> dict[str, dict[str, Any]]:
    """Per `PEER/NETWORK`: the gaps counted after the warm-up (from the node's first and last
    settled probes), and all of them merged under `all`."""
    mine = settled([p for p in probes if p.node == node], since)
    if not mine:
        return {}
    first, last = mine[0], mine[-1]
    out = {k: spread(first.gaps.get(k), h) for k, h in sorted(last.gaps.items())}
    both = merged([difference(h, first.gaps.get(k)) for k, h in last.gaps.items()])
    if both is not None:
        out["all"] = spread(None, both)
    return out


def lag_spread(probes: Sequence[Probe], node: str, since: float) -> dict[str, Any]:
    mine = settled([p for p in probes if p.node == node], since)
    if not mine:
        return {}
    return spread(mine[0].lag, mine[-1].lag)


def throughput(lines: str, since: float) -> tuple[float, int, float]:
    """(MB/s, errors, seconds) of the bulk writer's `TIME BYTES ERRORS` lines after the
    warm-up."""
    pts: list[tuple[float, int, int]] = []
    for raw in lines.splitlines():
        parts = raw.split()
        if len(parts) != 3:
            continue
        try:
            pts.append((float(parts[0]), int(parts[1]), int(parts[2])))
        except ValueError:
            continue
    after = [p for p in pts if p[0] >= since] or pts
    if len(after) < 2:
        return 0.0, pts[-1][2] if pts else 0, 0.0
    span = after[-1][0] - after[0][0]
    rate = (after[-1][1] - after[0][1]) / span / 1e6 if span > 0 else 0.0
    return rate, pts[-1][2], span
