"""The arbiter of a mirror module with fakes: the witness lease (FakeWitness on the real
clock), the ping witness and fencing, and what each tells the machine."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from hakit.adapters.scripts import ProcessScriptRunner
from hakit.config.load import ClusterFile
from hakit.config.model import Cluster
from hakit.config.module import SplitBrain
from hakit.core import mirror as mm
from hakit.daemon.arbiter import Arbitration
from hakit.daemon.modules import ModuleManager
from hakit.paths import Paths
from hakit.testing.fakes import FakeVips
from hakit.testing.witness import FakeWitness

WITNESS = {"addresses": ["10.0.0.5"], "ttl": 0.4, "grace": 0.2}
QUARANTINE = 0.7  # at least ttl + grace: a fresh witness grants no new lease before


async def quarantine_over() -> None:
    """A new witness grants nothing during its quarantine: let it pass (a known delay)."""
    await asyncio.sleep(QUARANTINE + 0.05)


async def until(cond: Any, limit: float = 5.0) -> None:
    async with asyncio.timeout(limit):
        while not cond():  # noqa: ASYNC110 - a condition of plain objects, polled
            await asyncio.sleep(0.005)


class Rig:
    def __init__(self, cfg: dict[str, Any], *, fence: bool = False) -> None:
        self.machine = mm.Mirror("db", "node1", "node2", arbitrated=True)
        self.posted: list[mm.Arbiter] = []
        self.pings: dict[str, bool] = {}
        self.fences: list[float] = []
        self.fence_ok = True
        # the fake follows the real clock (the client's deadlines are on it too)
        self.witness = FakeWitness(quarantine=QUARANTINE, clock=time.monotonic)
        sb = SplitBrain.model_validate(cfg)
        self.arb = Arbitration(
            module="db",
            cfg=sb,
            witness=self.witness.client("node1") if sb.witness is not None else None,
            ping=self.ping,
            fence=self.fence if fence else None,
            machine=lambda: self.machine,
            post=self.posted.append,
        )

    async def ping(self, address: str, limit: float) -> tuple[bool, str]:
        await asyncio.sleep(0)
        ok = self.pings.get(address, False)
        return ok, "answers" if ok else "no answer"

    async def fence(self) -> tuple[bool, str]:
        self.fences.append(time.monotonic())
        return self.fence_ok, "fence exited 0" if self.fence_ok else "fence exited 1"

    def be(self, **kw: Any) -> None:
        self.machine = replace(self.machine, **kw)

    @property
    def last(self) -> mm.Arbiter:
        return self.posted[-1]


def test_the_lease_is_acquired_when_asked_renewed_while_primary_and_released() -> None:
    async def main() -> None:
        r = Rig({"witness": WITNESS})
        await quarantine_over()
        await r.arb.round()
        assert r.last == mm.Arbiter(False, "lease released")  # nobody asked
        r.be(asking=True, phase=mm.Phase.WAITING)
        await r.arb.round()
        assert r.last == mm.Arbiter(True, "lease held")
        assert r.witness.holder("db") == "node1"
        r.be(asking=False, phase=mm.Phase.ALONE)
        for _ in range(4):  # renewed past the ttl
            await asyncio.sleep(0.15)
            await r.arb.round()
        assert r.witness.holder("db") == "node1"
        assert r.last.granted
        r.be(phase=mm.Phase.SECOND)
        await r.arb.round()
        assert r.last == mm.Arbiter(False, "lease released")
        assert r.witness.holder("db") == ""

    asyncio.run(main())


def test_a_silent_witness_ends_the_lease_at_its_deadline_not_later() -> None:
    async def main() -> None:
        r = Rig({"witness": WITNESS})
        await quarantine_over()
        r.be(phase=mm.Phase.ALONE)
        task = asyncio.create_task(r.arb.run())
        try:
            await until(lambda: r.posted and r.last.granted)
            r.witness.unreachable("node1")
            cut = time.monotonic()
            await until(lambda: not r.last.granted)
            lost = time.monotonic() - cut
        finally:
            task.cancel()
        assert lost <= WITNESS["ttl"] + 0.1  # type: ignore[operator]
        assert not r.last.granted

    asyncio.run(main())


def test_another_holder_is_named_in_the_refusal() -> None:
    async def main() -> None:
        r = Rig({"witness": WITNESS})
        await quarantine_over()
        other = r.witness.client("node2")
        assert (await other.request("acquire", "db", 0.4, 0.2, 0.1)) is not None
        r.be(asking=True, phase=mm.Phase.SECOND)
        await r.arb.round()
        assert r.last == mm.Arbiter(False, "the witness grants the role to node2")

    asyncio.run(main())


def test_the_ping_witness_allows_while_an_address_answers() -> None:
    async def main() -> None:
        r = Rig({"ping": ["10.0.0.254", "10.1.0.254"]})
        alive = mm.PeerInfo(alive=True, installed=True)
        r.be(asking=True, phase=mm.Phase.WAITING, peer=alive)
        await r.arb.round()
        assert r.last == mm.Arbiter(False, "no ping witness answers (10.0.0.254, 10.1.0.254)")
        r.pings["10.1.0.254"] = True
        await r.arb.round()
        assert r.last == mm.Arbiter(True, "ping witness 10.1.0.254 answers")
        # a takeover from a lost peer waits until an isolated primary has seen its pings fail
        r.be(asking=False, phase=mm.Phase.SECOND)
        await r.arb.round()
        r.be(asking=True, peer=mm.PeerInfo(alive=False))
        await r.arb.round()
        assert r.last == mm.Arbiter(False, "ping witness 10.1.0.254 answers; taking over in 1.25 s")
        r.arb.asked_at -= 1.25
        await r.arb.round()
        assert r.last == mm.Arbiter(True, "ping witness 10.1.0.254 answers")

    asyncio.run(main())


def test_fencing_runs_once_before_a_takeover_and_a_failure_is_retried_later() -> None:
    async def main() -> None:
        r = Rig({}, fence=True)
        r.be(phase=mm.Phase.SECOND, peer=mm.PeerInfo(alive=True, installed=True))
        await r.arb.round()
        assert not r.last.granted  # a secondary that does not ask is allowed nothing
        r.be(asking=True, peer=mm.PeerInfo(alive=False))
        r.fence_ok = False
        await r.arb.round()
        assert r.last == mm.Arbiter(False, "fencing node2: fence exited 1")
        await r.arb.round()
        assert len(r.fences) == 1  # not again at once
        r.arb.fence_failed -= 60  # as if the retry delay had passed
        r.fence_ok = True
        await r.arb.round()
        assert r.last == mm.Arbiter(True, "fencing node2: fence exited 0")
        await r.arb.round()
        assert len(r.fences) == 2
        r.be(asking=False, phase=mm.Phase.ALONE)
        await r.arb.round()
        assert r.last.granted  # a primary is never fenced out of its role

    asyncio.run(main())


def test_every_module_of_a_node_shares_one_witness_client(tmp_path: Path) -> None:
    """The witness refuses an older boot of a node: two clients of one node (two boot ids)
    would keep refusing each other, so the daemon keeps one per witness."""
    cluster = Cluster.model_validate(
        {
            "cluster": "c",
            "networks": {"lan": {}},
            "nodes": {
                "node1": {"addresses": {"lan": "10.0.0.1"}},
                "node2": {"addresses": {"lan": "10.0.0.2"}},
            },
        }
    )
    mgr = ModuleManager(
        paths=Paths(tmp_path / "etc", tmp_path / "var", tmp_path / "log"),
        cluster=ClusterFile(tmp_path / "cluster.yaml", cluster, b"s" * 32),
        local="node1",
        vips=FakeVips(),
        scripts=ProcessScriptRunner(),
        record=lambda ev: None,
        publish=lambda payload: None,
        hold=lambda vips: None,
    )
    env = mgr._env(mgr.vips)
    a = env.witness_client("c", "node1", b"s" * 32, [("10.0.0.5", 7355), ("10.1.0.5", 7355)])
    b = env.witness_client("c", "node1", b"s" * 32, [("10.1.0.5", 7355), ("10.0.0.5", 7355)])
    other = env.witness_client("c", "node1", b"s" * 32, [("10.9.0.5", 7355)])
    assert a is b
    assert other is not a


def test_held_writes_are_confirmed_only_by_a_grant_asked_after_the_break() -> None:
    """Issue 12 A: while the machine holds writes (`confirm_after`), a lease that is merely
    still running confirms nothing; the next real grant, asked after the break, is posted."""

    async def main() -> None:
        r = Rig({"witness": WITNESS})
        await quarantine_over()
        r.be(phase=mm.Phase.ALONE)
        await r.arb.round()
        assert r.last.granted
        posted = len(r.posted)
        r.witness.unreachable("node1")
        r.be(confirm_after=time.time())
        await r.arb.round()  # the witness is silent: the lease runs, nothing is confirmed
        assert all(not (a.granted and a.asked > r.machine.confirm_after) for a in r.posted)
        r.witness.unreachable("node1", on=False)
        await r.arb.round()
        assert len(r.posted) > posted
        assert r.last.granted
        assert r.last.asked > r.machine.confirm_after

    asyncio.run(main())
