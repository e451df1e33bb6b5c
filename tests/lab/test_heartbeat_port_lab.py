"""A local non-root user against the heartbeat port (issue 12, finding 1), in a real lab.

While the daemon runs, a uid 65534 process in node1's namespace cannot bind the heartbeat port
in any way (it used to receive node1's heartbeats, and node1 lost every peer in ≈1 s). Holding
the port before the daemon starts: node1 reports the network failed, naming the process, does
not declare its peer lost (nothing fails over), and binds the port once the process is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from hakit.lab.lab import Lab, alive_pid
from hakit.waiting import wait_until
from tests.lab.modules import lab_up

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
    pytest.mark.skipif(not shutil.which("nft"), reason="the lab needs nftables (nft)"),
]

PORT = 7350
PYTHON = shutil.which("python3", path="/usr/bin:/bin") or "python3"
ATTACK = """
import os, socket, sys, time
os.setgid(65534); os.setuid(65534)
port, held = int(sys.argv[1]), []
for addr in sys.argv[2:]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        s.bind((addr, port))
        held.append(s)
        print("BOUND", addr, flush=True)
    except OSError as e:
        print("refused", addr, e.strerror, flush=True)
if held:
    time.sleep(120)  # hold the port (bounded); the test kills it by PID
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with lab_up("tcport", 2, 2, 0) as lab:
        yield lab


def state(lab: Lab, node: str) -> dict[str, Any] | None:
    r = lab.exec(node, ["hakit", "state", "--json"], capture=True, check=False)
    return json.loads(r.stdout) if r.returncode == 0 else None


def both_alive(lab: Lab) -> bool:
    for n, peer in (("node1", "node2"), ("node2", "node1")):
        st = state(lab, n)
        if st is None or not all(st["nodes"][peer]["networks"].values()):
            return False
    return True


def events(lab: Lab, node: str) -> list[dict[str, Any]]:
    path = lab.host_path(node, "/var/log/hakit/events.jsonl")
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@contextlib.contextmanager
def attacker(lab: Lab, *addresses: str) -> Iterator[tuple[int, Any]]:
    log = lab.host_path("node1", "/tmp/attacker.out")
    log.unlink(missing_ok=True)
    pid = lab.spawn("node1", [PYTHON, "-c", ATTACK, str(PORT), *addresses], log)
    try:
        yield pid, log
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not alive_pid(pid), 10, "the attacker gone")


def reporting_both(lab: Lab) -> dict[str, Any] | None:
    st = state(lab, "node1")
    return st if st is not None and len(st["heartbeat"]["network_problems"]) == 2 else None


def deaf_for(lab: Lab, seconds: float) -> bool:
    st = state(lab, "node1")
    return st is not None and st["at"] - st["daemon"]["started_at"] > seconds


def attack_lines(log: Any, n: int) -> list[str] | None:
    lines = [ln for ln in log.read_text().splitlines() if ln.startswith(("BOUND", "refused"))]
    return lines if len(lines) >= n else None


def test_a_non_root_user_cannot_take_the_heartbeat_port_of_a_running_daemon(lab: Lab) -> None:
    wait_until(lambda: both_alive(lab), 15, "node1 and node2 alive on both networks")
    addrs = (lab.address("node1", 1), lab.address("node1", 2), "0.0.0.0")
    with attacker(lab, *addrs) as (_, log):
        lines = wait_until(lambda: attack_lines(log, 3), 10, "the attacker's three binds")
    assert lines == [f"refused {a} Address already in use" for a in addrs]
    st = state(lab, "node1")
    assert st is not None
    assert st["nodes"]["node2"]["alive"] is True
    assert st["daemon"]["heartbeat_restarts"] == 0


def test_a_port_taken_before_the_daemon_starts_is_reported_and_nothing_fails_over(
    lab: Lab,
) -> None:
    wait_until(lambda: both_alive(lab), 15, "both alive")
    daemon = lab.daemon_pid("node1")
    assert daemon is not None
    os.kill(daemon, signal.SIGTERM)
    wait_until(lambda: not alive_pid(daemon), 30, "node1's daemon stopped")
    with attacker(lab, "0.0.0.0") as (pid, log):
        assert wait_until(lambda: attack_lines(log, 1), 10, "the attacker bound") == [
            "BOUND 0.0.0.0"
        ]
        out = lab.host_path("node1", "/var/log/hakit/daemon-again.out")
        lab.spawn("node1", ["hakit", "daemon"], out)
        st = wait_until(lambda: reporting_both(lab), 30, "node1 up, both networks failed")
        assert st is not None
        problems = st["heartbeat"]["network_problems"]
        for net, n in (("net1", 1), ("net2", 2)):
            assert (
                f"cannot bind {lab.address('node1', n)}:{PORT}/udp: address already in use"
                in (problems[net])
            )
            assert f"held by pid {pid} (python3, uid 65534) on 0.0.0.0" in problems[net]
        assert st["nodes"]["node1"]["networks"] == {"net1": False, "net2": False}
        errors = [e["message"] for e in events(lab, "node1") if e["kind"] == "network-error"]
        assert any("modules are not started until one is" in m for m in errors), errors
        # node1 cannot hear node2: it must not conclude that node2 is dead
        wait_until(lambda: deaf_for(lab, 3.5), 30, "three heartbeat timeouts, node1 deaf")
        st = state(lab, "node1")
        assert st is not None
        assert st["nodes"]["node2"]["state"] == "unknown"
        assert not [
            e
            for e in events(lab, "node1")
            if e["kind"] == "peer-lost" and e["at"] > st["daemon"]["started_at"]
        ]
    # the holder is gone: the ports are bound at the next attempt, heartbeats flow again
    wait_until(lambda: both_alive(lab), 20, "node1 hears node2 again on both networks")
    st = state(lab, "node1")
    assert st is not None
    assert st["heartbeat"]["network_problems"] == {}
    bound = [e for e in events(lab, "node1") if e["kind"] == "network-bound"]
    assert {e["network"] for e in bound} >= {"net1", "net2"}
