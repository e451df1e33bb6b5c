"""Simulated clusters for tests: heartbeat engines over a fake network, driven by a fake clock.

Deterministic (seeded), no sockets, no sleeping: a simulated second costs microseconds.
The fake network supports per-network partitions between node pairs, node power-off, and
random loss — the faults the lab injects for real.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from hakit.core import membership as m
from hakit.core.heartbeat import Engine, NetworkAction, Settings
from hakit.wire.heartbeat import make_boot_id


@dataclass
class FakeNetwork:
    """Delivers datagrams between simulated nodes unless cut, powered off or lost."""

    seed: int = 0
    loss: float = 0.0
    cuts: set[tuple[str, str, str]] = field(default_factory=set)  # (network, a, b), both ways
    off: set[str] = field(default_factory=set)
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def cut(self, a: str, b: str, network: str) -> None:
        self.cuts |= {(network, a, b), (network, b, a)}

    def heal(self, a: str, b: str, network: str) -> None:
        self.cuts -= {(network, a, b), (network, b, a)}

    def delivers(self, network: str, src: str, dst: str) -> bool:
        if src in self.off or dst in self.off or (network, src, dst) in self.cuts:
            return False
        return not (self.loss and self.rng.random() < self.loss)


@dataclass
class SimCluster:
    """N nodes sharing `networks`; `run_until(t)` advances time in steps of interval/4."""

    nodes: list[str]
    networks: list[str]
    interval: float = 0.2
    timeout: float = 1.0
    net: FakeNetwork = field(default_factory=FakeNetwork)
    now: float = 0.0
    engines: dict[str, Engine] = field(default_factory=dict)
    log: list[tuple[float, str, m.Action]] = field(default_factory=list)
    network_log: list[tuple[float, str, NetworkAction]] = field(default_factory=list)
    _next_send: dict[str, float] = field(default_factory=dict)
    _boots: int = 0

    def __post_init__(self) -> None:
        for n in self.nodes:
            self.power_on(n)

    def _settings(self, node: str) -> Settings:
        addr: Mapping[str, str] = {net: f"{node}@{net}" for net in self.networks}
        return Settings(
            cluster="sim",
            secret=b"x" * 32,
            local=node,
            interval=self.interval,
            timeout=self.timeout,
            peers={p: addr for p in self.nodes if p != node},
            local_networks=tuple(self.networks),
        )

    def power_on(self, node: str) -> None:
        self._boots += 1
        boot = make_boot_id(int(self.now * 1e9) + self._boots, self._boots.to_bytes(8, "big"))
        self.engines[node] = Engine(self._settings(node), boot=boot, seq=0, now=self.now)
        self.net.off.discard(node)
        # nodes do not start in lock-step
        self._next_send[node] = self.now + self.net.rng.random() * self.interval

    def power_off(self, node: str) -> None:
        self.net.off.add(node)

    def run_until(self, t: float) -> None:
        step = self.interval / 4
        while self.now < t - 1e-12:
            self.now = min(t, self.now + step)
            for node, eng in self.engines.items():
                if node in self.net.off:
                    continue
                if self.now >= self._next_send[node]:
                    self._next_send[node] += self.interval
                    for o in eng.outgoing(self.now):
                        if self.net.delivers(o.network, node, o.peer):
                            dst = self.engines[o.peer]
                            for a in dst.receive(o.data, o.network, self.now, self.now):
                                if isinstance(
                                    a,
                                    m.PeerUp | m.PeerLost | m.PeerRestarted | m.LinkUp | m.LinkDown,
                                ):
                                    self.log.append((self.now, o.peer, a))
            for node, eng in self.engines.items():
                if node in self.net.off:
                    continue
                for act in eng.tick(self.now):
                    if isinstance(act, NetworkAction):
                        self.network_log.append((self.now, node, act))
                    else:
                        self.log.append((self.now, node, act))

    def view(self, node: str) -> dict[str, m.PeerState]:
        return {p: peer.state for p, peer in self.engines[node].peers.items()}

    def first(self, observer: str, kind: type, peer: str, after: float = 0.0) -> float | None:
        for t, n, a in self.log:
            if n == observer and isinstance(a, kind) and a.peer == peer and t >= after:
                return t
        return None
