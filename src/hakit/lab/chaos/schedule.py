"""The seeded schedule of a chaos campaign: pure, so that a seed names a campaign.

`schedule(seed, rounds, scenario)` draws, for each round, one fault among the kinds the
scenario supports and its parameters (target node, duration) from `random.Random(seed)`, in
order: the first K rounds of a seed are the same whatever the number of rounds, so a violation
found in round K is reproduced by `--seed S --rounds K`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

Kind = Literal[
    "poweroff",  # power cut of a node, power back on after `duration`
    "kill-daemon",  # SIGKILL of `hakit daemon`, restarted at once as systemd would
    "kill-app",  # SIGKILL of the module's application
    "freeze-short",  # SIGSTOP of every process of a node, shorter than the heartbeat timeout
    "freeze-long",  # the same, longer than the timeout
    "cut",  # one network cut between the two nodes
    "isolate",  # the node cut from every other host on every network
    "oneway",  # what the node sends to its peer is dropped (one direction only)
    "swap",  # `hakit swap` issued while the secondary is frozen for a moment
    "kill-heartbeat",  # SIGKILL of the node's heartbeat process (its daemon restarts it)
    "cut-witness",  # the node's traffic with the witness dropped, everything else kept
    "loss",  # a share (`percent`) of the frames between the nodes dropped at random, every network
]

ALL_KINDS: tuple[Kind, ...] = (
    "poweroff",
    "kill-daemon",
    "kill-app",
    "freeze-short",
    "freeze-long",
    "cut",
    "isolate",
    "oneway",
    "swap",
    "kill-heartbeat",
    "cut-witness",
    "loss",
)
SCENARIOS: dict[str, tuple[Kind, ...]] = {
    # without an arbiter a partition (or a freeze past the timeout) makes two primaries by
    # design — diverged files kept for the operator — so the mirror without witness gets the
    # faults whose outcome is decided: a node down, a process killed, a short freeze, a swap
    "mirror": ("poweroff", "kill-daemon", "kill-app", "freeze-short", "swap", "kill-heartbeat"),
    "mirror-witness": ALL_KINDS,
    "farm": (
        "poweroff",
        "kill-daemon",
        "kill-app",
        "freeze-short",
        "freeze-long",
        "isolate",
        "kill-heartbeat",
        "loss",
    ),
}
HEARTBEAT_TIMEOUT = 1.0  # the lab's cluster.yaml: heartbeats every 0.2 s, timeout 1 s
# (min, max) seconds a fault lasts before the campaign undoes it
DURATIONS: dict[Kind, tuple[float, float]] = {
    "poweroff": (2.0, 6.0),
    "kill-daemon": (0.0, 0.0),
    "kill-app": (0.0, 0.0),
    "freeze-short": (0.2, 0.6 * HEARTBEAT_TIMEOUT),
    "freeze-long": (2.0 * HEARTBEAT_TIMEOUT, 5.0 * HEARTBEAT_TIMEOUT),
    "cut": (2.0, 6.0),
    "isolate": (2.0, 6.0),
    "oneway": (2.0, 6.0),
    "swap": (0.3, 0.6 * HEARTBEAT_TIMEOUT),
    "kill-heartbeat": (0.0, 0.0),
    "cut-witness": (2.0, 6.0),
    "loss": (3.0, 8.0),
}
LOSS_PERCENT = (10, 60)  # (min, max) share of the frames a "loss" fault drops


@dataclass(frozen=True)
class Fault:
    round: int  # 1, 2, ...
    kind: Kind
    target: str  # a node name, or "primary"/"secondary": the node in that role when it starts
    duration: float  # seconds before the campaign undoes it (0: undone at once)
    network: int = 1  # for "cut": the network cut
    percent: int = 0  # for "loss": the share of the frames dropped

    def describe(self) -> str:
        what = f"{self.kind} {self.target}"
        if self.kind == "cut":
            what += f" net{self.network}"
        if self.kind == "loss":
            what += f" {self.percent} %"
        return what + (f" {self.duration:.1f} s" if self.duration else "")

    def to_json(self) -> dict[str, object]:
        return {
            "round": self.round,
            "kind": self.kind,
            "target": self.target,
            "duration": round(self.duration, 3),
            "network": self.network,
            "percent": self.percent,
        }


def schedule(
    seed: int,
    rounds: int,
    scenario: str,
    nodes: tuple[str, ...] = ("node1", "node2"),
    networks: int = 2,
) -> list[Fault]:
    """The faults of rounds 1..`rounds` of campaign `seed` on `scenario`."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}: one of {', '.join(SCENARIOS)}")
    if rounds < 0:
        raise ValueError("rounds must be >= 0")
    rng = random.Random(seed)
    kinds = SCENARIOS[scenario]
    roles = scenario != "farm"  # a mirror's faults aim at a role, a farm's at a node
    out: list[Fault] = []
    for r in range(1, rounds + 1):
        kind = rng.choice(kinds)
        if kind == "swap":
            target = "secondary"  # frozen while the primary is asked to hand over
        elif roles and kind == "kill-app":
            target = "primary"  # a mirror's application runs on the primary only
        elif roles:
            target = rng.choice(("primary", "secondary"))
        else:
            target = rng.choice(nodes)
        lo, hi = DURATIONS[kind]
        duration = round(rng.uniform(lo, hi), 2) if hi else 0.0
        network = rng.randint(1, networks) if kind == "cut" else 1
        percent = rng.randint(*LOSS_PERCENT) if kind == "loss" else 0
        out.append(Fault(r, kind, target, duration, network, percent))
    return out


def covering(scenario: str, rounds: int, tries: int = 10_000, start: int = 0) -> int:
    """The first seed >= `start` whose `rounds` rounds contain every kind of `scenario` that
    can fit (for short campaigns in tests that cover the kinds)."""
    kinds = set(SCENARIOS[scenario])
    want = len(kinds) if rounds >= len(kinds) else rounds
    for seed in range(start, start + tries):
        if len({f.kind for f in schedule(seed, rounds, scenario)}) >= want:
            return seed
    raise ValueError(f"no seed in {tries} covers {want} kinds in {rounds} rounds")
