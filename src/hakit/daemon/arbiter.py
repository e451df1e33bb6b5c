"""The arbiter of one mirror module on this node: what allows it to be primary without its peer.

Three mechanisms, configured in `split_brain:` of the module (see docs/mirror.md):
- a **witness** (`hakit witness` on a third machine, or the cluster's etcd): a lease. While
  the module is primary, or asks to become primary, the lease is acquired and renewed every
  `ttl`/4; it is released when the module leaves the primary role. The lease is held until
  the client-side deadline of the last granted request (the send time + `ttl`: earlier than
  the witness's own), so a node never believes it holds a lease the witness may already give
  away;
- a **ping witness**: at least one of the addresses answers a ping (checked every round while
  primary or asking); a takeover from a lost peer is allowed only `ping_timeout` + one round
  after it was first asked, the time an isolated primary needs to see its own pings fail;
- **fencing**: the module's `bin/fence` script, run once before taking over from a peer that
  is not alive; the takeover happens only if it exits 0 within `fence_timeout` (a failing
  script is tried again every 10 s while the takeover waits).

Each round, what they say is handed to the module's pure machine as an `Arbiter` event when it
changed (`granted`, and one stable sentence). The decisions (step down, stay secondary, take
over) are the machine's (core/mirror.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from hakit.adapters.probes import ProbeResult
from hakit.adapters.witness import WitnessPort
from hakit.config.module import SplitBrain
from hakit.core import mirror as mm

FENCE_RETRY = 10.0  # s between two attempts of a failing fencing script
Fence = Callable[[], Awaitable[tuple[bool, str]]]
Pinger = Callable[[str, float], Awaitable[ProbeResult]]


@dataclass
class Arbitration:
    module: str
    cfg: SplitBrain
    witness: WitnessPort | None
    ping: Pinger
    fence: Fence | None  # None: no bin/fence script
    machine: Callable[[], mm.Mirror]
    post: Callable[[mm.Arbiter], None]
    clock: Callable[[], float] = time.time  # the machine's clock (`asked` of its events)
    held: bool = field(init=False, default=False)  # witness lease
    deadline: float = field(init=False, default=0.0)  # monotonic end of the lease
    fenced: bool = field(init=False, default=False)  # fenced for the current request
    fence_failed: float = field(init=False, default=0.0)  # monotonic time of the last failure
    fence_said: str = field(init=False, default="")
    asked_at: float = field(init=False, default=0.0)  # a takeover first asked (ping witness)
    last: tuple[bool, str] | None = field(init=False, default=None)
    answered: bool = field(init=False, default=False)
    reachable: bool | None = field(init=False, default=None)  # the witness, at the last request

    def __post_init__(self) -> None:
        self._wake = asyncio.Event()

    @property
    def configured(self) -> bool:
        return self.witness is not None or bool(self.cfg.ping) or self.fence is not None

    @property
    def exclusive(self) -> bool:
        """The arbiter grants the primary role to one node at a time (a witness's lease)."""
        return self.witness is not None

    @property
    def period(self) -> float:
        lease = self.cfg.lease
        return lease.ttl / 4 if lease is not None else 0.25

    def wake(self) -> None:
        """The machine may have started asking: answer now rather than at the next round."""
        self._wake.set()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._expiry())
            while True:
                self._wake.clear()  # a wake during the round asks for another one at once
                await self.round()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.period)

    async def _expiry(self) -> None:
        """The lease ends at its deadline, not when the next (perhaps slow) request notices:
        the machine hears it at once, and a primary without its peer steps down in time."""
        while True:
            left = self.deadline - time.monotonic()
            if self.held and left <= 0:
                self.held = False
                self._say(False, "lease expired: the witness did not renew it in time")
                continue
            await asyncio.sleep(min(left, self.period) if self.held else self.period)

    async def round(self) -> None:
        m = self.machine()
        asked = self.clock()  # every request or ping of this round starts after this
        self.answered = False  # set by a real grant (not a lease merely still running)
        wants = m.asking or m.phase in mm.PRIMARYISH
        witnessed = self.witness is not None or bool(self.cfg.ping)
        if self.witness is not None:
            ok, detail = await self._lease(wants)
        elif self.cfg.ping:
            ok, detail = await self._ping() if wants else (False, "not asked")
            self.answered = ok
            if ok and m.asking and not m.peer.alive:
                # an isolated primary notices its own ping failing within ping_timeout plus a
                # round: give it that long to step down before taking over
                now = time.monotonic()
                self.asked_at = self.asked_at or now
                wait = self.cfg.ping_timeout + self.period
                if now - self.asked_at < wait:
                    ok, detail = False, f"{detail}; taking over in {wait:g} s"
        else:  # fencing only: a primary stays, a takeover from a lost peer fences it first
            ok = m.phase in mm.PRIMARYISH or (m.asking and m.peer.alive)
            self.answered = ok
            if ok or m.peer.alive:
                detail = "allowed" if ok else "not asked"
            else:
                detail = f"{m.peer_name} is not alive: fencing it first"
        fence = self.fence
        if m.asking and not m.peer.alive and fence is not None:
            allowed = ok or not witnessed  # after the witness's grant, if there is a witness
            retry = time.monotonic() - self.fence_failed >= FENCE_RETRY
            if allowed and not self.fenced and retry:
                done, said = await fence()
                self.fenced = done
                self.fence_failed = 0.0 if done else time.monotonic()
                self.fence_said = f"fencing {m.peer_name}: {said}"
            if self.fence_said:
                detail = self.fence_said
            ok = allowed and self.fenced
        if not m.asking:
            self.fenced, self.fence_failed, self.fence_said = False, 0.0, ""
            self.asked_at = 0.0
        self._say(ok, detail, asked if self.answered else 0.0)

    def _say(self, ok: bool, detail: str, asked: float = 0.0) -> None:
        """Tell the machine what changed — and every grant while it holds writes, so the first
        grant asked after the replication broke releases them."""
        confirms = ok and 0 < self.machine().confirm_after < asked
        if (ok, detail) != self.last or confirms:
            self.last = (ok, detail)
            self.post(mm.Arbiter(ok, detail, asked))

    async def _lease(self, wants: bool) -> tuple[bool, str]:
        w, cfg = self.witness, self.cfg.lease
        assert w is not None
        assert cfg is not None
        if not wants:
            if self.held:
                self.held = False
                await w.request("release", self.module, cfg.ttl, cfg.grace, cfg.ttl / 4)
            return False, "lease released"
        op = "renew" if self.held else "acquire"
        m = self.machine()
        reply = await w.request(
            op,
            self.module,
            cfg.ttl,
            cfg.grace,
            cfg.ttl / 4,
            alone=mm.serves_alone(m),
            force=m.forced,
        )
        now = time.monotonic()
        self.reachable = reply is not None
        if reply is None:
            if self.held and now < self.deadline:
                return True, "lease held (witness silent, within its term)"
            self.held = False
            return False, "witness unreachable"
        if reply.granted:
            self.held, self.deadline = True, reply.deadline
            self.answered = True
            return True, "lease held"
        self.held = False
        if reply.holder:
            return False, f"the witness grants the role to {reply.holder}"
        return False, f"the witness refuses: {reply.reason}"

    async def _ping(self) -> tuple[bool, str]:
        limit = self.cfg.ping_timeout
        results = await asyncio.gather(*(self.ping(str(a), limit) for a in self.cfg.ping))
        answered = [str(a) for a, (ok, _) in zip(self.cfg.ping, results, strict=True) if ok]
        if answered:
            return True, f"ping witness {answered[0]} answers"
        return False, f"no ping witness answers ({', '.join(str(a) for a in self.cfg.ping)})"
