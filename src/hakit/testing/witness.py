"""An in-memory witness for tests: the pure arbiter, an injected clock, and faults.

One `FakeWitness` per test stands for the witness machine; `FakeWitness.client(node)` gives each
simulated node a `WitnessPort` with the same behaviour as `WitnessClient` (same `LeaseMemory`,
same freshness checks and lease rules: it drives `hakit.core.witness` directly, without UDP).
So simulated tests can run two nodes against one witness, cut a node off it, restart it and
move time at will. The fake answers at once: an unreachable witness answers None without
consuming simulated time (advance the clock yourself to model the timeout).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hakit.adapters.witness import LeaseMemory, WitnessReply
from hakit.core import witness as arbiter
from hakit.wire.heartbeat import make_boot_id
from hakit.wire.witness import Op, Request

DEFAULT_CLUSTER = "shop"
WALL_EPOCH = 1_700_000_000.0  # the fake wall clock is this + the fake monotonic clock


@dataclass
class Record:
    """One request the fake witness answered (or dropped: `decision` None, `rejected` set)."""

    at: float
    request: Request
    decision: arbiter.Decision | None
    rejected: str | None = None


@dataclass
class FakeWitness:
    """The witness machine, in memory.

    `clock` (monotonic seconds) is injected; without one, the fake keeps its own, starting at 0,
    moved only by `advance`. `unreachable(node)` makes the witness unreachable for that node
    (both ways) until `unreachable(node, False)`; `restart()` makes it forget everything and
    start a new quarantine, like a real restart.
    """

    quarantine: float = 10.0
    clock: Callable[[], float] | None = None
    records: list[Record] = field(default_factory=list)
    rejected: Counter[str] = field(default_factory=Counter)
    notes: list[arbiter.Note] = field(default_factory=list)
    restarts: int = 0
    _now: float = 0.0
    _cut: set[str] = field(default_factory=set)
    _boots: int = 0
    state: arbiter.Arbiter = field(init=False)

    def __post_init__(self) -> None:
        self.state = arbiter.new_arbiter(self.now(), self.quarantine)

    # -- the world ------------------------------------------------------------------------

    def now(self) -> float:
        return self.clock() if self.clock is not None else self._now

    def wall(self) -> float:
        return WALL_EPOCH + self.now()

    def advance(self, seconds: float) -> None:
        if self.clock is not None:
            raise RuntimeError("this FakeWitness follows an injected clock: advance that one")
        if seconds < 0:
            raise ValueError("time does not go backwards")
        self._now += seconds
        self._expire()

    def unreachable(self, node: str, on: bool = True) -> None:
        if on:
            self._cut.add(node)
        else:
            self._cut.discard(node)

    def restart(self) -> None:
        """The witness process restarts: every lease and sequence number is forgotten, not the
        marks of outdated copies (the real one keeps them on disk)."""
        self.restarts += 1
        self.state = arbiter.new_arbiter(self.now(), self.quarantine, self.state.latest)

    def _expire(self) -> None:
        self.state, notes = arbiter.expire(self.state, self.now())
        self.notes.extend(notes)

    # -- what it holds --------------------------------------------------------------------

    def holder(self, module: str, cluster: str = DEFAULT_CLUSTER) -> str:
        """The node holding an unexpired lease on `module` now, or ""."""
        self._expire()
        lease = self.state.leases.get((cluster, module))
        return lease.holder if lease is not None else ""

    def describe(self) -> dict[str, dict[str, dict[str, Any]]]:
        return arbiter.describe(self.state, self.now())

    # -- the port -------------------------------------------------------------------------

    def client(
        self, node: str, cluster: str = DEFAULT_CLUSTER, boot_id: bytes | None = None
    ) -> FakeWitnessClient:
        self._boots += 1
        boot = boot_id or make_boot_id(int(self.now() * 1e9), self._boots.to_bytes(8, "big"))
        return FakeWitnessClient(self, cluster, node, boot)

    def reachable(self, node: str) -> bool:
        return node not in self._cut

    def handle(self, req: Request) -> arbiter.Decision | None:
        """What the real server does with an authenticated datagram (None: dropped)."""
        now = self.now()
        self.state, rejection = arbiter.admit(self.state, req, now, self.wall())
        if rejection is not None:
            self.rejected[rejection.reason.value] += 1
            self.records.append(Record(now, req, None, rejection.reason.value))
            return None
        self.state, decision = arbiter.decide(self.state, req, now)
        self.notes.extend(decision.notes)
        self.records.append(Record(now, req, decision))
        return decision


class FakeWitnessClient:
    """A `WitnessPort` over a `FakeWitness` (what `WitnessClient` is over UDP)."""

    def __init__(self, witness: FakeWitness, cluster: str, node: str, boot: bytes) -> None:
        self.witness = witness
        self.cluster = cluster
        self.node = node
        self.boot_id = boot
        self._seq = 0
        self._memory = LeaseMemory()
        self._closed = False

    async def request(
        self,
        op: str,
        module: str,
        ttl: float,
        grace: float,
        timeout: float,  # noqa: ASYNC109 - the retransmission schedule is built from it
        *,
        alone: bool = False,
        force: bool = False,
    ) -> WitnessReply | None:
        if self._closed:
            raise RuntimeError("FakeWitnessClient.request after close()")
        asked = Op(op)
        await asyncio.sleep(0)  # an await point, like the network
        w = self.witness
        if not w.reachable(self.node):
            return None
        sent = self._memory.send(asked, module, w.now())
        self._seq += 1
        req = Request(
            self.cluster,
            self.node,
            module,
            sent.op,
            ttl,
            grace,
            self.boot_id,
            self._seq,
            w.wall(),
            alone,
            force,
        )
        decision = w.handle(req)
        if decision is None or not self._memory.trusts(sent, module, w.now()):
            return None
        deadline = self._memory.answer(sent, module, decision.granted, decision.remaining, ttl)
        return WitnessReply(
            decision.granted, decision.holder, decision.remaining, decision.reason, deadline
        )

    def close(self) -> None:
        self._closed = True
