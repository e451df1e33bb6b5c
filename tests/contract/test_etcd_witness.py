"""The etcd witness against a real 3-member etcd cluster (Debian's etcd 3.4) on loopback.

The same scenarios as the hakit witness's contract (tests/contract/test_witness_client.py):
one holder at a time, renewal, release, expiry, the earliest contender, outdated copies — and
what only etcd has: mutual TLS (an unknown client or server is refused), the loss of one member
(it still works) and of the majority (nothing is granted, and the holder's deadline and grace
have passed before the other node can be granted once etcd is back).

The members are started by a fixture and killed by their PID in a `finally`; their data
folders (/tmp/etcdw-*) are removed. Time only passes where leases expiring is what is tested.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from typing import TypeVar

import pytest

from hakit.adapters.etcd_witness import EtcdAccess, EtcdWitness
from hakit.adapters.witness import WitnessReply
from hakit.config.module import SplitBrain
from hakit.core import mirror as mm
from hakit.daemon.arbiter import Arbitration
from tests.daemon.conftest import free_tcp_port
from tests.etcd.cluster import EtcdCluster

pytestmark = pytest.mark.skipif(
    not EtcdCluster.available(), reason="Debian's etcd-server is not installed (bootstrap.sh)"
)

TTL = 0.6
GRACE = 0.3
TIMEOUT = 1.0  # a loaded machine: TLS handshakes to three members
STEP = 0.05
T = TypeVar("T")
_modules = itertools.count(1)


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdCluster]:
    c = EtcdCluster()
    try:
        c.start_all()
        yield c
    finally:
        c.stop()


@pytest.fixture
def module() -> str:
    return f"m{next(_modules)}"


def access(c: EtcdCluster, node: str, **changes: object) -> EtcdAccess:
    crt, key = c.cert(node)
    a = EtcdAccess(tuple(c.endpoints), c.ca, crt, key, "/hakit/shop")
    return replace(a, **changes)  # type: ignore[arg-type]


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


class Nodes:
    """The etcd witnesses of node1..node3 for one scenario (closed at its end)."""

    def __init__(self, c: EtcdCluster) -> None:
        self.c = c
        self.made: list[EtcdWitness] = []

    def __call__(self, node: str, **changes: object) -> EtcdWitness:
        w = EtcdWitness("shop", node, access(self.c, node, **changes))
        self.made.append(w)
        return w

    async def close(self) -> None:
        for w in self.made:
            await w.aclose()


async def ask(
    w: EtcdWitness, op: str, module: str, *, alone: bool = False, force: bool = False
) -> WitnessReply:
    r = await w.request(op, module, TTL, GRACE, TIMEOUT, alone=alone, force=force)
    assert r is not None, f"{op}: no answer from etcd"
    return r


async def until_granted(
    w: EtcdWitness, module: str, within: float
) -> tuple[WitnessReply, float, list[WitnessReply | None]]:
    """Ask every STEP until granted; returns the grant, when it was learnt, the refusals."""
    refusals: list[WitnessReply | None] = []
    end = time.monotonic() + within
    while time.monotonic() < end:
        r = await w.request("acquire", module, TTL, GRACE, TIMEOUT)
        learnt = time.monotonic()
        if r is not None and r.granted:
            return r, learnt, refusals
        refusals.append(r)
        await asyncio.sleep(STEP)
    raise AssertionError(f"not granted within {within} s; last answer: {refusals[-1:]}")


def scenario(etcd: EtcdCluster, body: object) -> None:
    async def main() -> None:
        nodes = Nodes(etcd)
        try:
            await body(nodes)  # type: ignore[operator]
        finally:
            await nodes.close()

    run(main())


# --- the contract (as the hakit witness's) ----------------------------------------------------


def test_first_acquire_is_granted_with_a_conservative_deadline(
    etcd: EtcdCluster, module: str
) -> None:
    async def body(n: Nodes) -> None:
        before = time.monotonic()
        r = await ask(n("node1"), "acquire", module)
        after = time.monotonic()
        assert (r.granted, r.holder) == (True, "node1")
        assert before + TTL <= r.deadline <= after + TTL
        assert r.reason == "granted (never held)"

    scenario(etcd, body)


def test_another_node_is_refused_while_it_is_held(etcd: EtcdCluster, module: str) -> None:
    async def body(n: Nodes) -> None:
        assert (await ask(n("node1"), "acquire", module)).granted
        n2 = n("node2")
        for op in ("acquire", "renew"):
            r = await ask(n2, op, module)
            assert (r.granted, r.holder, r.deadline) == (False, "node1", 0.0)
            assert r.reason == "held by node1"

    scenario(etcd, body)


def test_the_holder_renews(etcd: EtcdCluster, module: str) -> None:
    async def body(n: Nodes) -> None:
        w = n("node1")
        first = await ask(w, "acquire", module)
        r = await ask(w, "renew", module)
        assert (r.granted, r.holder, r.reason) == (True, "node1", "renewed")
        assert r.deadline > first.deadline

    scenario(etcd, body)


def test_a_release_frees_the_lease_at_once(etcd: EtcdCluster, module: str) -> None:
    async def body(n: Nodes) -> None:
        n1, n2 = n("node1"), n("node2")
        assert (await ask(n1, "acquire", module)).granted
        assert not (await ask(n2, "acquire", module)).granted
        r = await ask(n1, "release", module)
        assert (r.granted, r.holder, r.deadline) == (True, "", 0.0)
        r = await ask(n2, "acquire", module)
        assert (r.granted, r.holder) == (True, "node2")
        assert r.reason == "granted (node1 released it)"

    scenario(etcd, body)


def test_a_release_by_another_node_changes_nothing(etcd: EtcdCluster, module: str) -> None:
    async def body(n: Nodes) -> None:
        n1 = n("node1")
        assert (await ask(n1, "acquire", module)).granted
        r = await ask(n("node2"), "release", module)
        assert (r.granted, r.holder, r.reason) == (False, "node1", "not released: held by node1")
        q = await ask(n1, "query", module)
        assert (q.granted, q.holder) == (True, "node1")

    scenario(etcd, body)


def test_an_expired_lease_goes_to_another_node_only_after_the_holders_grace(
    etcd: EtcdCluster, module: str
) -> None:
    """The holder stops renewing (cut from etcd): its own deadline and its grace have passed
    before the other node is granted."""

    async def body(n: Nodes) -> None:
        d1 = (await ask(n("node1"), "acquire", module)).deadline
        r, learnt, refusals = await until_granted(n("node2"), module, TTL + GRACE + 10)
        assert learnt >= d1 + GRACE
        assert refusals[0] is not None
        assert refusals[0].reason == "held by node1"
        assert r.reason == "granted (node1's lease expired)"

    scenario(etcd, body)


def test_the_earliest_contender_wins(etcd: EtcdCluster, module: str) -> None:
    async def body(n: Nodes) -> None:
        assert (await ask(n("node1"), "acquire", module)).granted
        n2, n3 = n("node2"), n("node3")
        assert not (await ask(n2, "acquire", module)).granted
        end = time.monotonic() + TTL + GRACE + 10
        while time.monotonic() < end:  # both keep asking: node3 is never granted before node2
            r3 = await ask(n3, "acquire", module)
            assert not r3.granted, r3
            r2 = await ask(n2, "acquire", module)
            if r2.granted:
                break
            await asyncio.sleep(STEP)
        assert (r2.granted, r2.holder) == (True, "node2")
        assert r3.reason in ("held by node1", "node2 asked first")
        r3 = await ask(n3, "acquire", module)
        assert (r3.granted, r3.holder) == (False, "node2")

    scenario(etcd, body)


def test_a_query_reports_and_changes_nothing(etcd: EtcdCluster, module: str) -> None:
    async def body(n: Nodes) -> None:
        n1, n2 = n("node1"), n("node2")
        q = await ask(n2, "query", module)
        assert (q.granted, q.holder, q.deadline, q.reason) == (False, "", 0.0, "free: never held")
        assert (await ask(n1, "acquire", module)).granted
        q = await ask(n2, "query", module)
        assert (q.granted, q.holder, q.deadline) == (False, "node1", 0.0)
        now = time.monotonic()
        q = await ask(n1, "query", module)
        assert (q.granted, q.holder) == (True, "node1")
        assert now < q.deadline <= time.monotonic() + TTL
        assert not (await ask(n2, "acquire", module)).granted

    scenario(etcd, body)


def test_a_copy_outdated_by_a_node_serving_alone_is_refused_until_forced(
    etcd: EtcdCluster, module: str
) -> None:
    async def body(n: Nodes) -> None:
        n1, n2 = n("node1"), n("node2")
        d1 = (await ask(n1, "acquire", module, alone=True)).deadline
        while time.monotonic() < d1 + GRACE + 1.0:  # node1's etcd lease runs out
            r = await ask(n2, "acquire", module, alone=True)
            assert not r.granted
            await asyncio.sleep(0.2)
        assert "the copy on node2 is outdated" in r.reason
        assert (await ask(n2, "query", module)).holder == ""  # free, yet refused
        r, _, _ = await until_forced(n2, module)
        assert (r.granted, r.holder) == (True, "node2")
        # node2 is now the current copy: node1 is refused once node2 is gone
        assert (await ask(n2, "release", module)).granted
        r = await ask(n1, "acquire", module)
        assert not r.granted
        assert "the copy on node1 is outdated" in r.reason

    scenario(etcd, body)


async def until_forced(
    w: EtcdWitness, module: str
) -> tuple[WitnessReply, float, list[WitnessReply]]:
    refused: list[WitnessReply] = []
    end = time.monotonic() + TTL + GRACE + 10
    while time.monotonic() < end:
        r = await ask(w, "acquire", module, alone=True, force=True)
        if r.granted:
            return r, time.monotonic(), refused
        refused.append(r)
        await asyncio.sleep(STEP)
    raise AssertionError(f"not granted when forced: {refused[-1:]}")


async def answered(w: EtcdWitness, op: str, module: str) -> WitnessReply:
    """The first answer, asking again while etcd elects a leader (bounded)."""
    end = time.monotonic() + 15
    while time.monotonic() < end:
        r = await w.request(op, module, TTL, GRACE, TIMEOUT)
        if r is not None:
            return r
    raise AssertionError(f"{op}: etcd did not answer within 15 s")


# --- what only etcd has: TLS, endpoints, members ----------------------------------------------


def test_an_unreachable_etcd_answers_none(etcd: EtcdCluster, module: str) -> None:
    async def body(n: Nodes) -> None:
        w = n("node1", endpoints=(f"https://127.0.0.1:{free_tcp_port()}",))
        assert await w.request("acquire", module, TTL, GRACE, 0.3) is None

    scenario(etcd, body)


def test_a_client_certificate_etcd_does_not_trust_is_refused(
    etcd: EtcdCluster, module: str
) -> None:
    async def body(n: Nodes) -> None:
        crt, key = etcd.cert("intruder")
        assert (
            await n("node1", cert=crt, key=key).request("acquire", module, TTL, GRACE, TIMEOUT)
            is None
        )
        q = await ask(n("node2"), "query", module)
        assert q.reason == "free: never held"

    scenario(etcd, body)


def test_an_etcd_whose_certificate_the_node_does_not_trust_is_refused(
    etcd: EtcdCluster, module: str
) -> None:
    async def body(n: Nodes) -> None:
        w = n("node1", ca=etcd.cert("intruder")[0])  # another CA: not etcd's issuer
        assert await w.request("acquire", module, TTL, GRACE, TIMEOUT) is None
        assert (await ask(n("node2"), "query", module)).reason == "free: never held"

    scenario(etcd, body)


def test_the_first_endpoint_that_answers_wins(etcd: EtcdCluster, module: str) -> None:
    async def body(n: Nodes) -> None:
        dead = f"https://127.0.0.1:{free_tcp_port()}"
        w = n("node1", endpoints=(dead, *etcd.endpoints))
        assert (await ask(w, "acquire", module)).granted

    scenario(etcd, body)


def test_the_loss_of_one_member_changes_nothing(etcd: EtcdCluster, module: str) -> None:
    async def body(n: Nodes) -> None:
        n1, n2 = n("node1"), n("node2")
        assert (await ask(n1, "acquire", module)).granted
        etcd.kill(etcd.members[0])  # perhaps the leader: the others elect another one
        r = await answered(n1, "renew", module)
        assert (r.granted, r.holder) == (True, "node1")
        d1 = r.deadline
        assert not (await answered(n2, "acquire", module)).granted
        _, learnt, _ = await until_granted(n2, module, TTL + GRACE + 10)
        assert learnt >= d1 + GRACE

    try:
        scenario(etcd, body)
    finally:
        etcd.start(etcd.members[0])
        etcd.wait_healthy()


def test_without_its_majority_etcd_grants_nothing_and_the_holder_steps_down_first(
    etcd: EtcdCluster, module: str
) -> None:
    """Two members of three die: the one left (a minority) answers nothing. The holder cannot
    renew: its deadline passes. Once etcd has its majority again, the other node is granted —
    only after the holder's deadline and grace."""

    async def body(n: Nodes) -> None:
        n1, n2 = n("node1"), n("node2")
        d1 = (await ask(n1, "acquire", module)).deadline
        etcd.kill(etcd.members[0])
        etcd.kill(etcd.members[1])
        assert await n1.request("renew", module, TTL, GRACE, TIMEOUT) is None
        assert await n2.request("acquire", module, TTL, GRACE, TIMEOUT) is None
        await asyncio.sleep(max(0.0, d1 - time.monotonic()))  # the holder's deadline passes
        assert await n1.request("renew", module, TTL, GRACE, TIMEOUT) is None  # it steps down
        etcd.start(etcd.members[0])
        etcd.start(etcd.members[1])
        etcd.wait_healthy()
        _, learnt, _ = await until_granted(n2, module, TTL + GRACE + 30)
        assert learnt >= d1 + GRACE
        r = await ask(n1, "renew", module)  # sent as acquire: its deadline has passed
        assert (r.granted, r.holder) == (False, "node2")

    try:
        scenario(etcd, body)
    finally:
        for m in etcd.members:
            if m.proc is None:
                etcd.start(m)
        etcd.wait_healthy()


# --- behind the arbiter: the same port as the hakit witness -----------------------------------


class Cuttable:
    """A TCP relay to one etcd member that the test can cut: the network between one node and
    etcd (the other node still reaches etcd directly: an asymmetric partition)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return f"https://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _relay(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            w.close()
            return
        self.writers += [w, uw]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(r, uw), pipe(ur, w))

    async def cut(self) -> None:
        if self.server is not None:
            self.server.close()
        for w in self.writers:
            w.close()
        self.writers.clear()


def test_a_primary_cut_from_etcd_steps_down_before_the_other_is_granted(
    etcd: EtcdCluster, module: str
) -> None:
    """Two arbiters (the daemon's, unchanged) on the etcd witness. node1 is primary; node2,
    which lost node1, asks. node1 is cut from etcd (node2 is not): node1 tells its machine the
    lease ended, and only `grace` later at the earliest is node2 granted. Never both."""
    sb = SplitBrain.model_validate({"etcd": {"ttl": TTL, "grace": GRACE}})
    said: dict[str, list[tuple[float, bool]]] = {"node1": [], "node2": []}

    def arbiter(node: str, w: EtcdWitness, machine: mm.Mirror) -> Arbitration:
        def post(ev: mm.Arbiter) -> None:
            said[node].append((time.monotonic(), ev.granted))

        return Arbitration(module, sb, w, ping, None, lambda: machine, post)

    async def ping(address: str, limit: float) -> tuple[bool, str]:
        raise AssertionError("no ping witness here")

    async def body(n: Nodes) -> None:
        relays = [Cuttable(m.client_port) for m in etcd.members]
        n1 = n("node1", endpoints=tuple([await r.start() for r in relays]))
        # primary with a ready secondary when the cut comes (no copy is outdated)
        primary = replace(mm.Mirror(module, "node1", "node2", arbitrated=True), phase=mm.Phase.PRIM)
        a1 = arbiter("node1", n1, primary)
        t1 = asyncio.create_task(a1.run())
        t2: asyncio.Task[None] | None = None
        try:
            await wait_for(lambda: bool(said["node1"]) and said["node1"][-1][1])
            asking = replace(
                mm.Mirror(module, "node2", "node1", arbitrated=True),
                phase=mm.Phase.WAITING,
                asking=True,
            )
            t2 = asyncio.create_task(arbiter("node2", n("node2"), asking).run())
            await wait_for(lambda: bool(said["node2"]))  # refused: node1 holds it
            assert said["node2"][-1][1] is False
            for r in relays:
                await r.cut()
            await wait_for(lambda: bool(said["node2"]) and said["node2"][-1][1], TTL + GRACE + 10)
        finally:
            for t in (t1, t2):
                if t is not None:
                    t.cancel()
            await asyncio.gather(t1, *([t2] if t2 else []), return_exceptions=True)
            for r in relays:
                await r.cut()
        down = next(t for t, granted in said["node1"][1:] if not granted)
        up = next(t for t, granted in said["node2"] if granted)
        assert down + GRACE <= up
        assert all(granted for _, granted in said["node1"][:1])

    scenario(etcd, body)


async def wait_for(cond: Callable[[], bool], limit: float = 10.0) -> None:
    end = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < end, "condition not reached in time"
        await asyncio.sleep(0.01)
