"""Split-brain protection in a real lab: a witness (`hakit witness`) on client1, two mirror nodes,
real daemons, real partitions (nftables cuts) and power cuts, and a fencing script.

An observer samples, every 100 ms, which nodes hold the module's VIP and which say they are
primary (their state file): no sample may show two.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hakit.lab.errors import LabError
from hakit.lab.lab import Lab
from hakit.waiting import wait_until
from tests.lab.modules import lab_up, removed_after
from tests.lab.test_mirror_lab import Module

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
    pytest.mark.skipif(not shutil.which("nft"), reason="the lab needs nftables (nft)"),
]

LAB = "twit"
WITNESS = "10.100.1.101"  # client1
# phases shown as ALONE or PRIM (the interface contract's primary states); a node leaving the
# role for lack of arbitration (demoting) has released its VIPs first and shows WAIT
PRIMARY_PHASES = {"promoting", "alone", "prim", "restarting"}


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with lab_up(LAB, 2, 2, 1) as lab:
        yield lab


class Witness:
    """`hakit witness run` in client1, killed by PID at the end."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.dir = lab.host_path("client1", "/srv/witness")
        self.dir.mkdir(parents=True, exist_ok=True)
        key = self.dir / "cluster.key"
        key.write_bytes(lab.host_path("node1", "/etc/hakit/cluster.key").read_bytes())
        key.chmod(0o600)
        (self.dir / "witness.yaml").write_text(
            f"listen: [{WITNESS}, 10.100.2.101]\nport: 7355\nquarantine: 3\n"
            f"clusters:\n  {LAB}:\n    secret_file: /srv/witness/cluster.key\n"
        )
        self.pid: int | None = None
        self.start()

    def start(self) -> None:
        argv = ["env", "HAKIT_VAR=/srv/witness/var", "HAKIT_LOG=/srv/witness/log"]
        argv += ["hakit", "witness", "run", "--config", "/srv/witness/witness.yaml"]
        self.pid = self.lab.spawn("client1", argv, log=self.dir / "witness.out")
        wait_until(lambda: (self.dir / "var" / "witness" / "state.json").exists(), 10, "witness")

    def kill(self) -> None:
        if self.pid is not None:
            pid, self.pid = self.pid, None
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            wait_until(lambda: _zombie(pid), 10, "the witness killed")


def _zombie(pid: int) -> bool:
    """Gone, or dead and waiting for its reaper."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


class Observer:
    """Samples VIP holders and primary roles every 100 ms in a thread (bounded by `limit`)."""

    def __init__(self, m: Module, limit: float = 180.0) -> None:
        self.m = m
        self.limit = limit
        self.samples = 0
        self.both: list[str] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _primary(self, node: str) -> bool:
        path = self.m.lab.host_path(node, f"/var/lib/hakit/modules/{self.m.name}/state.json")
        try:
            return json.loads(path.read_text()).get("phase") in PRIMARY_PHASES
        except (OSError, ValueError):
            return False

    def _vip(self, node: str) -> bool:
        try:
            return self.m.has_vip(node)
        except LabError:  # powered off: it holds nothing
            return False

    def _run(self) -> None:
        end = time.monotonic() + self.limit
        while not self._stop.is_set() and time.monotonic() < end:
            vip = [n for n in ("node1", "node2") if self._vip(n)]
            prim = [n for n in ("node1", "node2") if self._primary(n)]
            self.samples += 1
            if len(vip) == 2 or len(prim) == 2:
                self.both.append(f"{time.strftime('%H:%M:%S')} vip={vip} primary={prim}")
            self._stop.wait(0.1)

    def stop(self) -> None:
        self._stop.set()
        self._t.join(10)


@pytest.fixture
def witness(lab: Lab) -> Iterator[Witness]:
    w = Witness(lab)
    try:
        yield w
    finally:
        w.kill()


@pytest.fixture
def make(lab: Lab, tmp_path: Path) -> Iterator[Any]:
    with removed_after(lambda **options: Module(lab, tmp_path, **options)) as factory:
        yield factory


@pytest.fixture(autouse=True)
def healed(lab: Lab, make: Any) -> Iterator[None]:
    """Power and links back before the modules are removed (set up after `make`)."""
    yield
    for node in ("node1", "node2"):
        if lab.hosts()[node].power != "on":
            lab.poweron(node)
    for c in lab.cuts():
        lab.heal(c.a, c.b, c.network)


WITNESSED = f"""\
split_brain:
  witness: {{{{addresses: [{WITNESS}, 10.100.2.101], ttl: 1.0, grace: 0.5}}}}
"""


@pytest.fixture
def watched(make: Any, witness: Witness) -> Iterator[tuple[Module, Witness]]:
    m = make(extra=WITNESSED)
    m.first_start()
    obs = Observer(m)
    try:
        yield m, witness
    finally:
        obs.stop()
    assert obs.samples > 20
    assert obs.both == [], obs.both


def test_a_split_between_the_nodes_keeps_the_primary_holding_the_lease(watched: Any) -> None:
    m, _ = watched
    m.lab.cut("node1", "node2")
    m.wait("node1", "ALONE ready", 15)
    wait_until(
        lambda: "grants the role to node1" in str(m.state("node2")["modules"][m.name]),
        15,
        "node2 refused by the witness",
    )
    assert m.me("node2") == "SECOND transient"
    assert m.served_by() == "node1"
    m.lab.heal("node1", "node2")
    m.pair("PRIM ready", "SECOND ready", 60)


def test_an_isolated_primary_steps_down_and_the_other_takes_over(watched: Any) -> None:
    m, _ = watched
    m.lab.cut("node1", "node2")
    m.lab.cut("node1", "client1")  # node1 reaches neither its peer nor the witness
    m.pair("WAIT not-ready", "ALONE ready", 20)
    assert m.served_by() == "node2"
    assert "it may be primary on the other side" in m.log("node1")
    m.lab.heal("node1")
    m.pair("SECOND ready", "PRIM ready", 60)


def test_asymmetric_the_primary_loses_the_witness_first(watched: Any) -> None:
    m, _ = watched
    m.lab.cut("node1", "client1")  # the primary still sees node2: nothing happens
    wait_until(lambda: "still primary while node2 vouches" in m.log("node1"), 15, "warning")
    assert (m.me("node1"), m.me("node2")) == ("PRIM ready", "SECOND ready")
    m.lab.cut("node1", "node2")  # now node2 sees only the witness: it takes over, node1 stops
    m.pair("WAIT not-ready", "ALONE ready", 20)
    m.lab.heal("node1")
    m.pair("SECOND ready", "PRIM ready", 60)


def test_witness_down_then_peer_down_stops_rather_than_risk_two_primaries(watched: Any) -> None:
    m, w = watched
    w.kill()
    time.sleep(3)  # longer than a lease: with both nodes up nothing may happen meanwhile
    assert (m.me("node1"), m.me("node2")) == ("PRIM ready", "SECOND ready")
    m.lab.poweroff("node2")
    m.wait("node1", "WAIT not-ready", 15)
    assert not m.has_vip("node1")
    w.start()  # the witness is back (after its quarantine): node1 resumes by itself
    m.wait("node1", "ALONE ready", 30)
    assert m.served_by() == "node1"


FENCE = """\
#!/bin/sh
echo "fence $1 module=$HAKIT_MODULE" >> "$ROOT/fence.log"
[ -f "$ROOT/fence-fails" ] && { echo "IPMI: no answer"; exit 1; }
exit 0
"""


def test_fencing_runs_before_a_takeover_and_a_failure_holds_it(make: Any) -> None:
    m = make(more_scripts={"fence": FENCE})
    m.first_start()
    m.lab.exec("node2", ["touch", f"{m.root}/fence-fails"])
    m.lab.poweroff("node1")
    wait_until(lambda: "fencing node1: fence exited 1" in m.log("node2"), 20, "fence failed")
    assert m.me("node2") == "SECOND transient"
    assert not m.has_vip("node2")
    m.lab.exec("node2", ["rm", f"{m.root}/fence-fails"])
    m.wait("node2", "ALONE ready", 30)
    calls = m.lab.host_path("node2", f"{m.root}/fence.log").read_text().splitlines()
    assert calls[0] == f"fence node1 module={m.name}"
    assert len(calls) >= 2
    assert "fencing node1: fence exited 0" in m.log("node2")


PINGED = f"""\
split_brain:
  ping: [{WITNESS}]
  ping_timeout: 0.3
"""


def test_a_ping_witness_lets_only_the_side_that_reaches_it_be_primary(make: Any) -> None:
    m = make(extra=PINGED)
    m.first_start()
    obs = Observer(m)
    try:
        m.lab.cut("node1", "node2")
        m.lab.cut("node1", "client1")  # node1 cannot reach the "router" any more
        m.pair("WAIT not-ready", "ALONE ready", 20)
        assert m.served_by() == "node2"
        assert "no ping witness answers" in m.log("node1")
        m.lab.heal("node1")
        m.pair("SECOND ready", "PRIM ready", 60)
    finally:
        obs.stop()
    assert obs.samples > 20
    assert obs.both == [], obs.both


# --- issue 12: one-way cuts, and no acknowledged write lost -----------------------------------

REPLICATED = (
    WITNESSED
    + """\
replication:
  port: {m.port_repl}
  dirs:
    - path: {m.root}/data
"""
)

WRITER = """\
import os, sys, time
data, acked, stop = sys.argv[1:4]
fd = os.open(data, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
out = os.open(acked, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
end = time.monotonic() + 90
i = 0
while time.monotonic() < end and not os.path.exists(stop):
    i += 1
    try:
        os.write(fd, b"record %d\\n" % i)
        os.fsync(fd)
    except OSError as e:
        os.write(out, b"failed %d %s\\n" % (i, e.strerror.encode()))
        break
    os.write(out, b"%d\\n" % i)  # acknowledged to the application: fsync returned
    time.sleep(0.01)
"""


class Writer:
    """An application on node1 appending fsync'd records to the replicated directory; it
    notes each record whose fsync returned (its acknowledgement) in node1's own /srv (the
    lab's files of that node, not replicated; /root is the host's, shared by every lab)."""

    def __init__(self, m: Module, node: str = "node1") -> None:
        self.m, self.node = m, node
        self.acked = f"/srv/{m.name}-acked"
        self.stop = f"/srv/{m.name}-stop"
        for left in (self.acked, self.stop):  # from an earlier run of this lab
            m.lab.host_path(node, left).unlink(missing_ok=True)
        script = m.lab.host_path(node, f"/srv/{m.name}-writer.py")
        script.write_text(WRITER)
        argv = ["python3", f"/srv/{m.name}-writer.py", f"{m.root}/data/log", self.acked, self.stop]
        self.pid = m.lab.spawn(node, argv)
        wait_until(lambda: len(self.lines()) > 20, 20, "the writer writing")

    def lines(self) -> list[str]:
        p = self.m.lab.host_path(self.node, self.acked)
        return p.read_text().splitlines() if p.exists() else []

    def acknowledged(self) -> set[int]:
        return {int(x) for x in self.lines() if x.isdigit()}

    def finish(self) -> None:
        self.m.lab.host_path(self.node, self.stop).write_text("")
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)


def _records(m: Module, node: str) -> set[int]:
    p = m.lab.host_path(node, f"{m.root}/data/log")
    return {int(x.split()[1]) for x in p.read_text().splitlines() if x.startswith("record ")}


@pytest.fixture
def replicated(make: Any, witness: Witness) -> Iterator[Module]:
    m = make(extra=REPLICATED, mkdirs=["data"])
    m.first_start()
    m.pair("PRIM ready", "SECOND ready", 60)
    obs = Observer(m)
    try:
        yield m
    finally:
        obs.stop()
    assert obs.both == [], obs.both


def test_an_isolated_primary_loses_no_acknowledged_write(replicated: Module) -> None:
    """A: node1 isolated while it writes; node2 takes over with every record whose fsync
    returned on node1 (the writes after the break were held, then refused)."""
    m = replicated
    w = Writer(m)
    try:
        m.lab.isolate("node1")
        m.wait("node2", "ALONE ready", 30)
        wait_until(lambda: any(x.startswith("failed") for x in w.lines()), 30, "refused writes")
    finally:
        w.finish()
    acked = w.acknowledged()
    assert len(acked) > 20
    missing = acked - _records(m, "node2")
    assert not missing, f"{len(missing)} acknowledged records missing on node2: {sorted(missing)}"
    assert "held writes refused" in m.log("node1")


def test_writes_acknowledged_alone_survive_a_later_power_cut_of_that_primary(
    replicated: Module,
) -> None:
    """A, as a double failure: the link between the nodes breaks, the witness confirms node1,
    which acknowledges records alone; then node1 loses power. node2's copy lacks them: the
    witness refuses it the role (outdated copy) rather than letting it serve without them. Once
    node1 is back, node2 resynchronises from it and has every acknowledged record."""
    m = replicated
    w = Writer(m)
    try:
        m.lab.cut("node1", "node2")
        m.wait("node1", "ALONE ready", 15)
        alone = len(w.acknowledged())
        wait_until(lambda: len(w.acknowledged()) > alone + 20, 20, "records acknowledged alone")
        m.lab.poweroff("node1")
    finally:
        w.finish()
    acked = w.acknowledged()
    assert acked - _records(m, "node2"), "node2 already had every record: nothing was tested"
    wait_until(
        lambda: "the copy on node2 is outdated" in str(m.state("node2")["modules"][m.name]),
        30,
        "node2 refused by the witness: its copy is outdated",
    )
    assert m.me("node2") == "SECOND transient"
    m.lab.heal("node1", "node2")
    m.lab.poweron("node1")
    m.pair("PRIM ready", "SECOND ready", 60)
    missing = acked - _records(m, "node2")
    assert not missing, f"{len(missing)} acknowledged records missing on node2"


ONE_WAY = (
    "add table inet hakit_test_oneway; "
    "add chain inet hakit_test_oneway out {{ type filter hook output priority 0; }}; {rules}"
)


@contextlib.contextmanager
def one_way_drop(lab: Lab, sender: str, receiver: str) -> Iterator[None]:
    """`receiver` no longer hears `sender` (its packets to every address of `receiver` are
    dropped in its own namespace); removed at the end."""
    addrs = [lab.address(receiver, n) for n in (1, 2)]
    rules = "; ".join(f"add rule inet hakit_test_oneway out ip daddr {a} drop" for a in addrs)
    lab.exec(sender, ["nft", ONE_WAY.format(rules=rules)])
    try:
        yield
    finally:
        lab.exec(sender, ["nft", "delete table inet hakit_test_oneway"], check=False)


def test_a_one_way_cut_after_the_witness_never_gives_two_primaries(watched: Any) -> None:
    """B: node1 loses the witness, then only node1 -> node2 is dropped (node1 still hears
    node2). node2 stops vouching for node1, node1 steps down before node2 is granted the role;
    after the heal they converge without an operator."""
    m, _ = watched
    m.lab.cut("node1", "client1")
    wait_until(lambda: "still primary while node2 vouches" in m.log("node1"), 15, "warning")
    with one_way_drop(m.lab, "node1", "node2"):
        m.wait("node2", "ALONE ready", 20)
        wait_until(lambda: not m.has_vip("node1"), 10, "node1 without the VIP")
        assert "no longer vouches" in m.log("node1")
        assert m.served_by() == "node2"
    m.lab.heal("node1")
    m.pair("SECOND ready", "PRIM ready", 60)
