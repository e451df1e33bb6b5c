"""The witness port: the same contract for the real server (a `hakit witness run` subprocess on
127.0.0.1, reached by `WitnessClient` over UDP) and for the in-memory fake (`FakeWitness`).

Real-only tests then check what only the real one has: the status file and `hakit witness
state`, the log, replayed and forged datagrams dropped and counted, a second witness refused.

Every server process is started by a fixture and killed by its PID in a `finally`, even when the
test fails. Waits are conditions with deadlines; time only "passes" (sleep, or the fake clock's
advance) where the passing of time is what is tested: leases that expire, graces that run out.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest

from hakit.adapters.witness import WitnessClient, WitnessPort, WitnessReply
from hakit.config.starter import new_secret
from hakit.testing.witness import FakeWitness
from hakit.waiting import wait_until
from hakit.wire.heartbeat import make_boot_id
from hakit.wire.witness import Op, Request, decode_reply, derive_key, encode_request
from tests.daemon.conftest import free_udp_port

TTL = 0.6
GRACE = 0.3
TIMEOUT = 0.5
QUARANTINE = 4.0  # ≥ TTL + GRACE, and room for a lease that outlives a CLI call
SLACK = 2.0  # real time: how late a grant may come on a loaded machine (never how early)
STEP = 0.05  # polling period (real seconds or fake seconds)
NODES = ("node1", "node2")

T = TypeVar("T")
_modules = itertools.count(1)


# --- the real witness -----------------------------------------------------------------------


@dataclass
class RealWitness:
    """A `hakit witness run` subprocess with its own HAKIT_ETC/VAR/LOG under `root`."""

    root: Path
    quarantine: float
    port: int = field(default_factory=free_udp_port)
    secret: bytes = b""
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        etc = self.root / "etc"
        etc.mkdir(parents=True, exist_ok=True)
        key = etc / "shop.key"
        key.write_text(new_secret())
        key.chmod(0o600)
        self.secret = key.read_bytes().strip()
        (etc / "witness.yaml").write_text(
            f"listen: [127.0.0.1]\nport: {self.port}\nquarantine: {self.quarantine}\n"
            "clusters:\n  shop:\n    secret_file: shop.key\n"
        )

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "HAKIT_ETC": str(self.root / "etc"),
            "HAKIT_VAR": str(self.root / "var"),
            "HAKIT_LOG": str(self.root / "log"),
        }

    @property
    def state_file(self) -> Path:
        return self.root / "var" / "witness" / "state.json"

    def start(self) -> None:
        with (self.root / "witness.out").open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hakit", "witness", "run"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = self.proc
        wait_until(
            lambda: proc.poll() is not None or self.status().get("pid") == proc.pid,
            30,
            "the witness's status file",
        )
        assert proc.poll() is None, (self.root / "witness.out").read_text()

    def status(self) -> dict[str, Any]:
        try:
            return json.loads(self.state_file.read_text())  # type: ignore[no-any-return]
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def kill(self, sig: int = signal.SIGTERM) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def hakit(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "hakit", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def log(self) -> list[dict[str, Any]]:
        path = self.root / "log" / "witness.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def latest(self) -> list[list[str]]:
        path = self.root / "var" / "witness" / "latest.json"
        return json.loads(path.read_text())["latest"]  # type: ignore[no-any-return]

    def wait_quarantine_over(self) -> None:
        wait_until(lambda: self.status().get("quarantine_left") == 0, 30, "end of quarantine")


@pytest.fixture
def real_witness(tmp_path: Path) -> Iterator[Callable[[float], RealWitness]]:
    """Start real witnesses for one test; all are killed by PID afterwards, whatever happens."""
    started: list[RealWitness] = []

    def make(quarantine: float) -> RealWitness:
        w = RealWitness(tmp_path / f"w{len(started)}", quarantine)
        started.append(w)
        w.start()
        return w

    try:
        yield make
    finally:
        for w in started:
            w.kill(signal.SIGKILL)


@pytest.fixture(scope="module")
def shared_witness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealWitness]:
    """One real witness for the contract tests (each test uses its own module names)."""
    w = RealWitness(tmp_path_factory.mktemp("witness"), QUARANTINE)
    try:
        w.start()
        w.wait_quarantine_over()
        yield w
    finally:
        w.kill(signal.SIGKILL)


# --- the two harnesses ------------------------------------------------------------------------


class Harness(Protocol):
    def client(self, node: str) -> WitnessPort: ...

    def unreachable(self, node: str) -> WitnessPort: ...

    def now(self) -> float: ...

    async def pass_time(self, seconds: float) -> None: ...

    def restart(self) -> None: ...


@dataclass
class RealHarness:
    witness: RealWitness
    clients: list[WitnessClient] = field(default_factory=list)

    def client(self, node: str) -> WitnessPort:
        c = WitnessClient("shop", node, self.witness.secret, [("127.0.0.1", self.witness.port)])
        self.clients.append(c)
        return c

    def unreachable(self, node: str) -> WitnessPort:
        # a port nobody listens on: the datagrams are lost
        return WitnessClient("shop", node, self.witness.secret, [("127.0.0.1", free_udp_port())])

    def now(self) -> float:
        return time.monotonic()

    async def pass_time(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def restart(self) -> None:
        self.witness.kill(signal.SIGKILL)
        self.witness.start()


@dataclass
class FakeHarness:
    witness: FakeWitness

    def client(self, node: str) -> WitnessPort:
        return self.witness.client(node)

    def unreachable(self, node: str) -> WitnessPort:
        self.witness.unreachable(node)
        return self.witness.client(node)

    def now(self) -> float:
        return self.witness.now()

    async def pass_time(self, seconds: float) -> None:
        self.witness.advance(seconds)
        await asyncio.sleep(0)

    def restart(self) -> None:
        self.witness.restart()


def fake_harness(quarantine: float) -> FakeHarness:
    fw = FakeWitness(quarantine=quarantine)
    return FakeHarness(fw)


def quarantined(
    kind: str, real_witness: Callable[[float], RealWitness], quarantine: float
) -> Harness:
    """A fresh witness (real or fake) with this quarantine, once it is over."""
    if kind == "real":
        w = real_witness(quarantine)
        w.wait_quarantine_over()
        return RealHarness(w)
    h = fake_harness(quarantine)
    h.witness.advance(quarantine)
    return h


@pytest.fixture(params=["real", "fake"])
def harness(request: pytest.FixtureRequest) -> Harness:
    """A witness whose quarantine is over."""
    if request.param == "real":
        return RealHarness(request.getfixturevalue("shared_witness"))
    h = fake_harness(QUARANTINE)
    h.witness.advance(QUARANTINE)
    return h


@pytest.fixture
def module() -> str:
    return f"m{next(_modules)}"


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


async def ask(
    c: WitnessPort,
    op: str,
    module: str,
    ttl: float = TTL,
    grace: float = GRACE,
    *,
    alone: bool = False,
    force: bool = False,
) -> WitnessReply:
    r = await c.request(op, module, ttl, grace, TIMEOUT, alone=alone, force=force)
    assert r is not None, f"{op}: no answer from the witness"
    return r


async def until_granted(
    h: Harness, c: WitnessPort, module: str, within: float
) -> tuple[WitnessReply, float, list[WitnessReply]]:
    """Ask again every STEP until granted; returns the grant, when it was learnt, refusals."""
    refusals: list[WitnessReply] = []
    end = h.now() + within
    for _ in range(100_000):  # bounded: the deadline ends it long before
        r = await ask(c, "acquire", module)
        learnt = h.now()
        if r.granted:
            return r, learnt, refusals
        refusals.append(r)
        assert learnt <= end, f"not granted within {within} s; last answer: {r}"
        await h.pass_time(STEP)
    raise AssertionError("unreachable")


async def pass_until(h: Harness, t: float) -> None:
    """Let time pass until `t` on the harness's clock (leases expiring is the point)."""
    if h.now() < t:
        await h.pass_time(t - h.now())


# --- the contract -----------------------------------------------------------------------------


def test_first_acquire_is_granted_with_a_conservative_deadline(h: Harness, module: str) -> None:
    async def scenario() -> None:
        c = h.client("node1")
        before = h.now()
        r = await ask(c, "acquire", module)
        after = h.now()
        assert (r.granted, r.holder) == (True, "node1")
        assert r.remaining == pytest.approx(TTL)
        assert before + TTL <= r.deadline <= after + TTL
        assert "granted" in r.reason

    run(scenario())


def test_another_node_is_refused_while_it_is_held(h: Harness, module: str) -> None:
    async def scenario() -> None:
        assert (await ask(h.client("node1"), "acquire", module)).granted
        for op in ("acquire", "renew"):
            r = await ask(h.client("node2"), op, module)
            assert (r.granted, r.holder, r.deadline) == (False, "node1", 0.0)
            assert 0 < r.remaining <= TTL + 1e-9
            assert r.reason.startswith("held by node1 for ")

    run(scenario())


def test_the_holder_renews(h: Harness, module: str) -> None:
    async def scenario() -> None:
        c = h.client("node1")
        first = await ask(c, "acquire", module)
        await h.pass_time(TTL / 3)
        r = await ask(c, "renew", module)
        assert (r.granted, r.holder) == (True, "node1")
        assert r.deadline > first.deadline
        assert r.reason.startswith("renewed")

    run(scenario())


def test_a_release_frees_the_lease_at_once(h: Harness, module: str) -> None:
    async def scenario() -> None:
        n1, n2 = h.client("node1"), h.client("node2")
        assert (await ask(n1, "acquire", module)).granted
        assert not (await ask(n2, "acquire", module)).granted
        r = await ask(n1, "release", module)
        assert (r.granted, r.holder, r.deadline) == (True, "", 0.0)
        r = await ask(n2, "acquire", module)
        assert (r.granted, r.holder) == (True, "node2")
        assert "node1 released it" in r.reason

    run(scenario())


def test_a_release_by_another_node_changes_nothing(h: Harness, module: str) -> None:
    async def scenario() -> None:
        n1 = h.client("node1")
        assert (await ask(n1, "acquire", module)).granted
        r = await ask(h.client("node2"), "release", module)
        assert (r.granted, r.holder) == (False, "node1")
        assert r.reason == "not released: held by node1"
        q = await ask(n1, "query", module)
        assert (q.granted, q.holder) == (True, "node1")

    run(scenario())


def test_an_expired_lease_goes_to_another_node_only_after_the_holders_grace(
    h: Harness, module: str
) -> None:
    async def scenario() -> None:
        d1 = (await ask(h.client("node1"), "acquire", module)).deadline
        r, learnt, refusals = await until_granted(h, h.client("node2"), module, TTL + 5.0)
        assert learnt >= d1 + GRACE  # safety: never before node1's deadline + grace
        slack = SLACK if isinstance(h, RealHarness) else 2 * STEP
        assert learnt <= d1 + GRACE + slack  # and not much later
        assert refusals[0].reason.startswith("held by node1")
        if isinstance(h, FakeHarness):  # the fake clock makes the polls fall in the grace
            assert any("waiting for its grace of 0.3 s" in x.reason for x in refusals)
        assert "node1's lease expired" in r.reason

    run(scenario())


def test_the_earliest_contender_wins(h: Harness, module: str) -> None:
    async def scenario() -> None:
        d1 = (await ask(h.client("node1"), "acquire", module)).deadline
        n2, n3 = h.client("node2"), h.client("node3")
        assert not (await ask(n2, "acquire", module)).granted
        assert not (await ask(n3, "acquire", module)).granted
        await pass_until(h, d1 + GRACE + 0.1)
        r3 = await ask(n3, "acquire", module)
        assert not r3.granted
        assert r3.reason.startswith("node2 asked first")
        r2 = await ask(n2, "acquire", module)
        assert (r2.granted, r2.holder) == (True, "node2")

    run(scenario())


def test_a_query_reports_and_changes_nothing(h: Harness, module: str) -> None:
    async def scenario() -> None:
        n1, n2 = h.client("node1"), h.client("node2")
        q = await ask(n2, "query", module)
        assert (q.granted, q.holder, q.remaining, q.deadline) == (False, "", 0.0, 0.0)
        assert q.reason.startswith("free: never held")
        assert (await ask(n1, "acquire", module)).granted
        q = await ask(n2, "query", module)
        assert (q.granted, q.holder, q.deadline) == (False, "node1", 0.0)
        assert 0 < q.remaining <= TTL + 1e-9
        now = h.now()
        q = await ask(n1, "query", module)
        assert (q.granted, q.holder) == (True, "node1")
        assert now < q.deadline <= h.now() + TTL + 1e-9
        assert not (await ask(n2, "acquire", module)).granted  # the queries changed nothing

    run(scenario())


@pytest.mark.parametrize(
    ("ttl", "grace", "expected"),
    [
        (0.0, GRACE, "ttl 0 s is out of range"),
        (61.0, 0.0, "ttl 61 s is out of range"),
        (TTL, -1.0, "grace -1 s is out of range"),
        (3.0, 1.5, f"exceeds the witness quarantine of {QUARANTINE:g} s"),
    ],
)
def test_impossible_leases_are_refused(
    h: Harness, module: str, ttl: float, grace: float, expected: str
) -> None:
    async def scenario() -> None:
        r = await ask(h.client("node1"), "acquire", module, ttl, grace)
        assert (r.granted, r.deadline) == (False, 0.0)
        assert expected in r.reason

    run(scenario())


def test_an_unreachable_witness_answers_none_within_the_timeout(h: Harness, module: str) -> None:
    async def scenario() -> None:
        c = h.unreachable("node3")
        t0 = time.monotonic()
        assert await c.request("acquire", module, TTL, GRACE, 0.3) is None
        assert time.monotonic() - t0 < 0.3 + SLACK

    run(scenario())


@pytest.mark.parametrize("kind", ["real", "fake"])
def test_a_restarted_witness_grants_no_new_lease_during_its_quarantine(
    kind: str, real_witness: Callable[[float], RealWitness], module: str
) -> None:
    """The holder keeps its lease across a witness restart; nobody else gets it meanwhile."""
    quarantine, ttl, grace = 6.0, 4.0, 0.5  # the lease outlives the restart of the process
    h = quarantined(kind, real_witness, quarantine)

    async def scenario() -> None:
        n1, n2 = h.client("node1"), h.client("node2")
        first = await ask(n1, "acquire", module, ttl, grace)
        assert first.granted
        h.restart()
        r = await ask(n2, "acquire", module, ttl, grace)
        assert (r.granted, r.holder) == (False, "")
        assert r.reason.startswith("witness restarted ")
        assert r.reason.endswith(f": no new lease before {quarantine:g} s")
        assert h.now() < first.deadline, "the restart took longer than the lease"
        # node3 never held it: its client sends its renew as an acquisition, refused
        r = await ask(h.client("node3"), "renew", module, ttl, grace)
        assert (r.granted, r.holder) == (False, "")
        assert r.reason.startswith("witness restarted ")
        # node1's lease still runs: its renewal is granted
        r = await ask(n1, "renew", module, ttl, grace)
        assert (r.granted, r.holder) == (True, "node1")
        assert "renewal after the witness restarted" in r.reason
        r = await ask(n2, "acquire", module, ttl, grace)
        assert (r.granted, r.holder) == (False, "node1")

    run(scenario())


@pytest.mark.parametrize("kind", ["real", "fake"])
def test_a_copy_outdated_by_a_node_serving_alone_is_refused_even_after_a_restart(
    kind: str, real_witness: Callable[[float], RealWitness], module: str
) -> None:
    """node1 is granted while it serves alone, then dies: node2's copy lacks what node1 wrote,
    so node2 is refused after node1's lease and grace, and after a witness restart, until its
    operator forces it."""
    quarantine = 2.0
    h = quarantined(kind, real_witness, quarantine)

    async def scenario() -> None:
        n1, n2 = h.client("node1"), h.client("node2")
        assert (await ask(n1, "acquire", module, alone=True)).granted
        await h.pass_time(TTL + GRACE + 0.2)
        r = await ask(n2, "acquire", module, alone=True)
        assert not r.granted
        assert "the copy on node2 is outdated" in r.reason
        h.restart()
        await h.pass_time(quarantine + 0.1)
        if isinstance(h, RealHarness):
            h.witness.wait_quarantine_over()
        r = await ask(n2, "acquire", module, alone=True)
        assert not r.granted
        assert "outdated" in r.reason
        await h.pass_time(GRACE + 0.1)  # node2's own grace since its first request
        r = await ask(n2, "acquire", module, alone=True, force=True)
        assert r.granted, r.reason

    run(scenario())
    if isinstance(h, RealHarness):
        assert h.witness.latest() == [["shop", module, "node2"]]


# --- real only: datagrams, status file, state command, log ------------------------------------


def _exchange(sock: socket.socket, port: int, data: bytes, wait: float) -> bytes | None:
    sock.sendto(data, ("127.0.0.1", port))
    sock.settimeout(wait)
    try:
        return sock.recv(2048)
    except TimeoutError:
        return None


def test_replayed_forged_and_foreign_datagrams_are_dropped_and_counted(
    shared_witness: RealWitness,
) -> None:
    w = shared_witness
    key = derive_key(w.secret, "shop")
    boot = make_boot_id(time.time_ns(), os.urandom(8))

    def query(seq: int, k: bytes = key, cluster: str = "shop") -> bytes:
        r = Request(cluster, "replayer", "mr", Op.QUERY, TTL, GRACE, boot, seq, time.time())
        return encode_request(r, k)

    before = w.status()["counters"]["rejected"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        first = query(100)
        answer = _exchange(sock, w.port, first, 5.0)
        assert answer is not None
        assert decode_reply(answer, "shop", key).seq == 100
        assert _exchange(sock, w.port, first, 0.3) is None  # the same datagram again
        assert _exchange(sock, w.port, query(200), 5.0) is not None
        assert _exchange(sock, w.port, first, 0.3) is None  # older than the window now
        assert _exchange(sock, w.port, query(300, derive_key(b"x" * 32, "shop")), 0.3) is None
        other = derive_key(w.secret, "farm")
        assert _exchange(sock, w.port, query(301, other, "farm"), 0.3) is None
        assert _exchange(sock, w.port, b"garbage", 0.3) is None

    def counted() -> bool:
        now = w.status().get("counters", {}).get("rejected", {})
        return all(
            now.get(reason, 0) >= before[reason] + 1
            for reason in ("duplicate", "replayed", "forged", "unknown-cluster", "malformed")
        )

    wait_until(counted, 10, "the rejected-datagram counters")


def test_witness_state_shows_leases_holders_and_counters(shared_witness: RealWitness) -> None:
    w = shared_witness
    module = f"m{next(_modules)}"

    async def scenario() -> None:
        n1, n2 = (WitnessClient("shop", n, w.secret, [("127.0.0.1", w.port)]) for n in NODES)
        assert (await ask(n1, "acquire", module, 3.0, 0.5)).granted
        assert not (await ask(n2, "acquire", module, 3.0, 0.5)).granted

    run(scenario())
    r = w.hakit("witness", "state", "--json")
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["pid"] == w.proc.pid if w.proc else False
    lease = st["clusters"]["shop"]["leases"][module]
    assert (lease["state"], lease["holder"]) == ("held", "node1")
    assert 0 < lease["remaining"] <= 3.0
    assert "node2" in lease["contenders"]
    assert st["quarantine_left"] == 0
    assert set(st["counters"]["rejected"]) >= {"malformed", "forged", "replayed", "skew"}
    text = w.hakit("witness", "state")
    assert text.returncode == 0, text.stderr
    assert module in text.stdout
    assert "node1" in text.stdout
    granted = [
        e
        for e in w.log()
        if e.get("module") == module and e["kind"] == "granted" and e["node"] == "node1"
    ]
    assert granted, w.log()[-5:]
    assert granted[0]["op"] == "acquire"
    assert granted[0]["granted"] is True
    assert granted[0]["message"].startswith(f"shop/{module}: lease granted to node1 (")


def test_witness_state_when_no_witness_runs(
    tmp_path: Path, real_witness: Callable[[float], RealWitness]
) -> None:
    env = {**os.environ, "HAKIT_VAR": str(tmp_path / "nothing")}
    r = subprocess.run(
        [sys.executable, "-m", "hakit", "witness", "state"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 3
    assert "no witness runs here" in r.stderr
    w = real_witness(QUARANTINE)
    second = w.hakit("witness", "run")  # the same HAKIT_VAR: refused at once
    assert second.returncode == 1
    assert "a witness is already running here" in second.stderr
    w.kill(signal.SIGKILL)  # the status file stays behind, its writer is gone
    r = w.hakit("witness", "state", "--json")
    assert r.returncode == 3
    assert "which is gone" in r.stderr


def test_a_stopped_witness_removes_its_status_file(
    real_witness: Callable[[float], RealWitness],
) -> None:
    w = real_witness(QUARANTINE)
    w.kill(signal.SIGTERM)
    assert w.proc is not None
    assert w.proc.returncode == 0
    assert not w.state_file.exists()
    assert w.log()[-1]["kind"] == "stopped"


# The contract tests take the harness under the short name `h`.
@pytest.fixture
def h(harness: Harness) -> Harness:
    return harness
