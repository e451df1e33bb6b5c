"""A bounded flood of every port from a host on the cluster networks (issue 12, "done when").

client1, which holds no key, sends garbage and forged heartbeats (the cluster's format and name,
a wrong key) to both nodes on both networks, holds idle TCP connections open on the node API and
on the secondary's replication port, and sends garbage into more of them, for a few seconds.
Failure detection must stay correct: no peer lost, no failover, the module stays PRIM/SECOND
and keeps replicating, a secondary restarted during the flood resynchronises before it ends,
both daemons survive, and no traceback reaches a log.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hakit.lab.lab import Lab
from hakit.waiting import wait_until
from tests.lab.modules import lab_up, removed_after
from tests.lab.test_mirror_lab import Module

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
    pytest.mark.skipif(not shutil.which("nft"), reason="the lab needs nftables (nft)"),
]

LAB = "tflood"
API_PORT = 7351
HB_PORT = 7350
SECONDS = 12.0
UDP_PER_SECOND = 20_000  # bounded: a flood, not a saturation of the machine's two cores
IDLE_PER_TARGET = 60

FLOOD = """
import json, os, random, socket, sys, threading, time
from hakit.wire.heartbeat import Codec, Heartbeat
cluster, seconds, rate, idle = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
udp = [t.split("/") for t in sys.argv[5].split(",")]  # addr/network/as-sender/receiver
tcp = [t.rsplit(":", 1) for t in sys.argv[6].split(",")]
rnd = random.Random(12)
forgers = {s: Codec(cluster, os.urandom(32), s) for _, _, s, _ in udp}
out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
held, counts = [], {"udp": 0, "udp_errors": 0, "idle": 0, "garbage": 0, "tcp_errors": 0}
for addr, port in tcp:
    for _ in range(idle):
        s = socket.socket()
        s.setblocking(False)  # a SYN each, never waited for: the listener's backlog decides
        s.connect_ex((addr, int(port)))
        held.append(s)
        counts["idle"] += 1
print("FLOOD-STARTED", flush=True)
end = time.monotonic() + seconds


def garbage():  # into fresh connections, 10 per second per target
    while (now := time.monotonic()) < end:
        for addr, port in tcp:
            s = socket.socket()
            s.settimeout(0.2)
            try:
                s.connect((addr, int(port)))
                s.sendall(rnd.randbytes(4096))
                counts["garbage"] += 1
            except OSError:
                counts["tcp_errors"] += 1
            finally:
                s.close()
        time.sleep(max(0.0, 0.1 - (time.monotonic() - now)))


tcp_thread = threading.Thread(target=garbage)
tcp_thread.start()
seq = 1 << 40
while (now := time.monotonic()) < end:
    for _ in range(rate // 100):
        addr, net, sender, receiver = udp[rnd.randrange(len(udp))]
        if rnd.random() < 0.5:
            data = rnd.randbytes(rnd.randrange(0, 1400))
        else:
            seq += 1
            hb = Heartbeat(sender, receiver, net, rnd.randbytes(16), seq, time.time(), bytes(16),
                           rnd.randbytes(rnd.randrange(0, 200)))
            data = forgers[sender].encode(hb)
        try:
            out.sendto(data, (addr, HB_PORT))
            counts["udp"] += 1
        except OSError:
            counts["udp_errors"] += 1
    time.sleep(max(0.0, 0.01 - (time.monotonic() - now)))
tcp_thread.join()
for s in held:
    s.close()
print("FLOOD " + json.dumps(counts), flush=True)
""".replace("HB_PORT", str(HB_PORT))


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with lab_up(LAB, 2, 2, 1) as lab:
        yield lab


@pytest.fixture
def module(lab: Lab, tmp_path: Path) -> Iterator[Module]:
    with removed_after(lambda **o: Module(lab, tmp_path, **o)) as make:
        yield make(
            extra="replication:\n  port: {m.port_repl}\n  dirs:\n    - path: {m.root}/data",
            mkdirs=["data"],
        )


def events(lab: Lab, node: str) -> list[dict[str, Any]]:
    path = lab.host_path(node, "/var/log/hakit/events.jsonl")
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_a_flood_of_every_port_changes_nothing(lab: Lab, module: Module) -> None:
    module.first_start()
    pids = {n: lab.daemon_pid(n) for n in ("node1", "node2")}
    seen = {n: len(events(lab, n)) for n in pids}
    udp = [
        f"{lab.address(n, k)}/net{k}/{sender}/{n}"
        for n, sender in (("node1", "node2"), ("node2", "node1"))
        for k in (1, 2)
    ]
    tcp = [f"{lab.address(n, 1)}:{API_PORT}" for n in pids]
    tcp.append(f"{lab.address('node2', 1)}:{module.port_repl}")
    out = lab.host_path("client1", "/tmp/flood.out")
    out.unlink(missing_ok=True)
    argv = [sys.executable, "-c", FLOOD, LAB, str(SECONDS), str(UDP_PER_SECOND)]
    pid = lab.spawn("client1", [*argv, str(IDLE_PER_TARGET), ",".join(udp), ",".join(tcp)], out)
    data = lab.host_path("node2", f"{module.root}/data")

    def report() -> dict[str, int] | None:
        lines = [x for x in out.read_text().splitlines() if x.startswith("FLOOD ")]
        return json.loads(lines[0].removeprefix("FLOOD ")) if lines else None

    # During the flood the secondary restarts and must resynchronise (its replication port
    # is held by idle and garbage connections): it misses a file, then has it again.
    wait_until(lambda: "FLOOD-STARTED" in out.read_text(), 10, "the flood started")
    lab.exec("node2", ["hakit", "stop", module.name])
    lab.exec("node1", ["sh", "-c", f"echo missed > {module.root}/data/missed && sync"])
    lab.exec("node2", ["hakit", "start", module.name])
    module.wait("node2", "SECOND ready", SECONDS)
    assert report() is None, "the resynchronisation ended after the flood: nothing was tested"
    assert (data / "missed").read_text() == "missed\n"
    for i in range(4):  # during the flood: the pair holds, and writes still reach node2
        assert module.me("node1") == "PRIM ready"
        assert module.me("node2") == "SECOND ready"
        lab.exec("node1", ["sh", "-c", f"echo {i} > {module.root}/data/f{i} && sync"])
        wait_until(lambda i=i: (data / f"f{i}").exists(), 10, f"f{i} replicated to node2")  # type: ignore[misc]

    counts = wait_until(report, SECONDS + 30, "the flood over")
    assert counts is not None
    assert counts["udp"] > UDP_PER_SECOND * SECONDS / 4, counts
    assert counts["garbage"] > 0, counts
    assert pid > 0
    assert module.me("node1") == "PRIM ready"
    assert module.me("node2") == "SECOND ready"
    for n, before in seen.items():
        assert lab.daemon_pid(n) == pids[n], f"{n}'s daemon restarted"
        new = events(lab, n)[before:]
        bad = [
            e
            for e in new
            if e["kind"]
            in ("peer-lost", "link-down", "network-silent", "peer-restarted", "module-error")
        ]
        assert not bad, bad
        rejected = module.state(n)["heartbeat"].get("rejected") or {}
        assert sum(rejected.values()) > 0, f"{n} saw none of the flood"
        log = lab.host_path(n, "/var/log/hakit/hakit.log").read_text()
        assert "Traceback" not in log, log[-3000:]
