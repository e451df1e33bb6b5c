"""The invariants of a chaos campaign, as pure functions over what was recorded from outside
the nodes: the writer's acknowledgements and the records read back, the role samples, the farm
client's log, the nodes' logs. Each returns the violations it found (an empty list: none)."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# phases a node's state file shows while it serves (or may serve) as the primary (the state
# file of a daemon that died stays as it was: the invariant is on the VIP, the phases are for
# the timeline)
PRIMARY_PHASES = frozenset({"promoting", "alone", "prim", "restarting"})
OFF = "off"  # a powered-off node: it serves nothing, whatever its last state file says
FROZEN = "frozen"  # a SIGSTOPped node: its state file is stale, it serves nothing
BOOTING = "booting"  # a state file written before the node's last power cut: stale


@dataclass(frozen=True)
class Sample:
    """What the observer saw at time `t` (seconds since the epoch): each node's phase (or OFF
    / FROZEN / BOOTING, or "" when its state file could not be read), and the nodes whose
    kernel held the module's VIP, a frozen or powered-off node excepted (it serves nothing)."""

    t: float
    phases: Mapping[str, str]
    holders: tuple[str, ...] = ()


def primaries(sample: Sample) -> list[str]:
    """The nodes serving as primary: holding the VIP (what clients reach)."""
    return sorted(sample.holders)


def reacted(sample: Sample, before: Mapping[str, str]) -> bool:
    """Whether a daemon changed its phase since `before` (what the campaign did — a node
    powered off or frozen — is not a reaction)."""
    marks = (OFF, FROZEN, BOOTING, "")
    return any(
        p not in marks and before.get(n) not in marks and p != before.get(n)
        for n, p in sample.phases.items()
    )


RESUME_ALLOWANCE = 0.5
"""Seconds a node resumed from a freeze may still hold the VIP beside the primary: its kernel
kept the address while every process of the node was stopped (a freeze cannot stop the kernel
answering for it), and its daemon needs its peer's next heartbeat (0.2 s) and its lease timer
to learn that it lost the role and release it. Its application acknowledged nothing meanwhile
(its writes are held, the replication having broken): what is counted, and reported, is how
long it kept the address."""


def _resumed(samples: Sequence[Sample]) -> list[dict[str, float]]:
    """For each sample, the nodes resumed from a freeze less than `RESUME_ALLOWANCE` before
    (node -> time of the resumption)."""
    out: list[dict[str, float]] = []
    frozen: set[str] = set()
    since: dict[str, float] = {}
    for s in samples:
        for node, phase in s.phases.items():
            if phase == FROZEN:
                frozen.add(node)
            elif node in frozen:
                frozen.discard(node)
                since[node] = s.t
        out.append({n: t for n, t in since.items() if s.t - t < RESUME_ALLOWANCE})
    return out


def stale_holds(samples: Sequence[Sample]) -> float:
    """The longest a node resumed from a freeze held the VIP beside another holder, within the
    allowance (0 when none did): reported with the round."""
    longest = 0.0
    for s, resumed in zip(samples, _resumed(samples), strict=True):
        held = [n for n in primaries(s) if n in resumed]
        if held and len(primaries(s)) > 1:
            longest = max(longest, max(s.t - resumed[n] for n in held))
    return longest


def two_primaries(samples: Sequence[Sample]) -> list[str]:
    """At most one node may be primary at any sampled instant (with a witness): each run of
    consecutive samples showing two is one violation — a node that resumed from a freeze less
    than `RESUME_ALLOWANCE` before excepted (`stale_holds` reports how long it held the VIP)."""
    out: list[str] = []
    run: list[Sample] = []
    marks = [*_resumed(samples), {}]
    for s, resumed in zip([*samples, Sample(float("inf"), {})], marks, strict=True):
        if len([n for n in primaries(s) if n not in resumed]) > 1:
            run.append(s)
            continue
        if run:
            who = " and ".join(primaries(run[0]))
            span = run[-1].t - run[0].t
            out.append(f"{run[0].t:.3f}: {who} both primary ({len(run)} samples, {span:.2f} s)")
            run = []
    return out


def parse_acked(text: str) -> list[int]:
    """The record numbers in the writer's log (`N NODE TIME` lines; a torn last line is not an
    acknowledgement the writer finished logging)."""
    out: list[int] = []
    for raw in text.splitlines():
        parts = raw.split()
        if len(parts) == 3 and parts[0].isdigit():
            out.append(int(parts[0]))
    return out


def lost_records(acked: Sequence[int], present: Mapping[int, int], where: str) -> list[str]:
    """Every acknowledged record present, intact and once, in the records read on `where`."""
    out: list[str] = []
    missing = [n for n in acked if present.get(n, 0) == 0]
    if missing:
        head = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        out.append(f"{len(missing)} acknowledged records missing or corrupted on {where}: {head}")
    doubled = sorted(n for n, c in present.items() if c > 1)
    if doubled:
        out.append(f"records present more than once on {where}: {doubled[:10]}")
    return out


def unanswered(farm_log: str) -> tuple[int, list[str]]:
    """(requests logged, numbers of those never answered) in the farm client's log."""
    count = 0
    failed: list[str] = []
    for raw in farm_log.splitlines():
        parts = raw.split()
        if len(parts) != 5:
            continue
        count += 1
        if parts[1] == "-":
            failed.append(parts[0])
    return count, failed


def farm_failures(failed: Sequence[str]) -> list[str]:
    """Every farm request must have been answered (within the client's bound)."""
    return [f"{len(failed)} farm requests never answered: {list(failed[:10])}"] if failed else []


def ack_times(text: str) -> list[float]:
    """The times of the writer's acknowledgements (`N NODE TIME` lines)."""
    out: list[float] = []
    for raw in text.splitlines():
        parts = raw.split()
        if len(parts) == 3 and parts[0].isdigit():
            with contextlib.suppress(ValueError):
                out.append(float(parts[2]))
    return out


def longest_gap(times: Sequence[float], start: float, end: float) -> float:
    """The longest time without an acknowledgement in [start, end]: how long the service was
    out in that round (from `start`, the fault)."""
    inside = sorted(t for t in times if start <= t <= end)
    points = [start, *inside] + ([] if inside and inside[-1] >= end else [end])
    return max((b - a for a, b in itertools.pairwise(points)), default=0.0)


def farm_round(farm_log: str, start: float, end: float) -> tuple[dict[str, int], float]:
    """({node: requests it answered}, longest wait of a request) for requests begun in
    [start, end] (the farm client retries a request until answered)."""
    served: dict[str, int] = {}
    wait = 0.0
    for raw in farm_log.splitlines():
        parts = raw.split()
        if len(parts) != 5 or parts[1] == "-":
            continue
        try:
            first, answered = float(parts[3]), float(parts[4])
        except ValueError:
            continue
        if start <= first <= end:
            served[parts[1]] = served.get(parts[1], 0) + 1
            wait = max(wait, answered - first)
    return served, wait


def tracebacks(logs: Mapping[str, str]) -> list[str]:
    """No log may show a Python traceback."""
    return [
        f"{name}: {text.count('Traceback (most recent call last)')} traceback(s)"
        for name, text in sorted(logs.items())
        if "Traceback (most recent call last)" in text
    ]


def segments(samples: Sequence[Sample], node: str) -> list[tuple[float, float, str]]:
    """The node's phases over time as (start, end, phase) runs (for the timeline)."""
    out: list[tuple[float, float, str]] = []
    for s in samples:
        phase = s.phases.get(node, "")
        if out and out[-1][2] == phase:
            out[-1] = (out[-1][0], s.t, phase)
        else:
            if out:
                out[-1] = (out[-1][0], s.t, out[-1][2])
            out.append((s.t, s.t, phase))
    return out
