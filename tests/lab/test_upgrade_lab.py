"""A rolling upgrade (issue 13 §1, docs/compatibility.md): a mirror module with replication and
its VIP runs on two nodes of hakit 0.1.0 (heartbeat protocol 1). One node at a time: the
secondary is upgraded to this release (protocol 2) and replicates from the 0.1 primary; the
primary role moves to it (from 0.1 by a takeover: 0.1's planned handover with replication is
broken, fixed in this release), the other node is upgraded and comes back as secondary; a swap
between the two upgraded nodes. The application answers clients throughout, but for the
takeover and the swap."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from importlib import resources
from pathlib import Path

import pytest

from hakit import __version__
from hakit.lab.lab import Lab, alive_pid
from hakit.waiting import wait_until
from tests.lab.modules import LabModule, lab_up

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
    pytest.mark.skipif(not shutil.which("nft"), reason="the lab needs nftables (nft)"),
]

LAB = "tupg"
OLD = Path(__file__).parent.parent / "releases" / "hakit-0.1.0.tar.gz"
VIP = "10.100.1.100"
NEW_DAEMON = (sys.executable, "-m", "hakit", "daemon")


def old_release(tmp_path: Path) -> tuple[str, ...]:
    with tarfile.open(OLD) as t:
        t.extractall(tmp_path, filter="data")
    src = tmp_path / "hakit-0.1.0" / "src"
    return ("env", f"PYTHONPATH={src}", sys.executable, "-m", "hakit", "daemon")


class Client:
    """GETs the VIP in a loop from client1; records each answer's time and outcome."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.results: list[tuple[float, bool]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        script = (
            "import sys, time, urllib.request as u\n"
            "end = time.monotonic() + 600\n"
            "while time.monotonic() < end:\n"
            "    try:\n"
            f"        u.urlopen('http://{VIP}:8080/', timeout=0.5).read()\n"
            "        print('ok', flush=True)\n"
            "    except Exception: print('fail', flush=True)\n"
            "    line = sys.stdin.readline()\n"
            "    if not line: break\n"
        )
        with subprocess.Popen(
            self.lab.exec_argv("client1", ["python3", "-c", script]),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        ) as proc:
            assert proc.stdin is not None
            assert proc.stdout is not None
            try:
                while not self.stop.is_set():
                    line = proc.stdout.readline()
                    if not line:
                        break
                    self.results.append((time.monotonic(), line.strip() == "ok"))
                    time.sleep(0.05)
                    proc.stdin.write("\n")
                    proc.stdin.flush()
            finally:
                proc.kill()

    def failures(self, start: float, end: float) -> int:
        return sum(1 for t, ok in self.results if start <= t <= end and not ok)

    def answered(self, start: float, end: float) -> int:
        return sum(1 for t, ok in self.results if start <= t <= end and ok)


def restart_daemon(
    lab: Lab, node: str, argv: tuple[str, ...], sig: int = signal.SIGTERM, pid: int | None = None
) -> int:
    """What a package upgrade does: stop the daemon (SIGTERM), start the new one (its PID)."""
    pid = pid or lab.daemon_pid(node)
    assert pid is not None
    os.kill(pid, sig)
    wait_until(lambda: not alive_pid(pid), 60, f"{node}'s old daemon stopped")
    new = lab.spawn(node, argv, lab.host_path(node, "/var/log/hakit/daemon.out"))
    wait_until(
        lambda: lab.exec(node, ["hakit", "state"], check=False, capture=True).returncode == 0,
        30,
        f"{node}'s new daemon answers",
    )
    return new


def test_rolling_upgrade_from_the_previous_release_keeps_the_application_up(
    tmp_path: Path,
) -> None:
    old = old_release(tmp_path)
    with lab_up(LAB, nodes=2, networks=1, clients=1, daemon_command=old) as lab:
        m = LabModule(lab, "mirror-web")
        example = resources.files("hakit") / "examples" / "mirror-web"
        lab.exec("node1", ["hakit", "module", "install", str(example), "--all"], capture=True)
        m.cmd("node1", "prim")
        m.wait("node1", "ALONE ready", timeout=30)
        m.cmd("node2", "second")
        m.wait("node2", "SECOND ready", timeout=60)
        node = m.state("node2")["nodes"]["node1"]
        assert node["state"] == "alive"
        client = Client(lab)
        client.thread.start()
        wait_until(lambda: client.answered(0, 1e12) >= 5, 30, "the client served")
        try:
            # 1. the secondary first: the primary keeps serving alone, then resyncs it
            t1 = time.monotonic()
            restart_daemon(lab, "node2", NEW_DAEMON)
            m.wait("node2", "SECOND ready", timeout=60)
            st = m.state("node2")
            assert st["nodes"]["node2"]["release"] == __version__
            assert st["nodes"]["node1"]["release"] == "0.1"
            assert st["nodes"]["node1"]["protocol"] == 1  # heartbeats of two versions side by side
            assert st["nodes"]["node1"]["alive"] is True
            lab.exec(
                "node1", ["sh", "-c", "echo mixed > /srv/mirror-web/www/mixed.html"], capture=True
            )
            wait_until(
                lambda: lab.host_path("node2", "/srv/mirror-web/www/mixed.html").exists(),
                10,
                "a write on the 0.1 primary replicated to the upgraded secondary",
            )
            t2 = time.monotonic()
            # 2. the primary role to the upgraded node: from 0.1 by a takeover (SIGKILL of its
            # daemon: its heartbeat process drops the VIP, node2 takes over in about a second)
            restart_daemon(lab, "node1", NEW_DAEMON, signal.SIGKILL)
            m.wait("node2", "PRIM ready", timeout=60)
            m.wait("node1", "SECOND ready", timeout=60)
            t3 = time.monotonic()
            assert lab.host_path("node2", "/srv/mirror-web/www/mixed.html").read_text() == (
                "mixed\n"
            )
            wait_until(
                lambda: m.state("node1")["nodes"]["node2"].get("protocol") == 2,
                10,
                "both nodes on heartbeat protocol 2",
            )
            # 3. a planned switch between two nodes of this release
            t4 = time.monotonic()
            m.cmd("node2", "swap")
            m.wait("node1", "PRIM ready", timeout=60)
            m.wait("node2", "SECOND ready", timeout=60)
            t5 = time.monotonic()
            time.sleep(3)
            t6 = time.monotonic()
        finally:
            client.stop.set()
            client.thread.join(15)
        assert client.failures(t1, t2) == 0, "the service stopped while the secondary upgraded"
        assert client.failures(t3 + 2.0, t4) == 0, "the service stopped while node1 upgraded"
        assert client.failures(t5 + 2.0, t6) == 0, "the service did not come back after the swap"
        for start, end in ((t1, t2), (t2, t3), (t3, t4), (t4, t6)):
            assert client.answered(start, end) > 0, (start, end)
        r = lab.exec("node2", ["hakit", "verify", "mirror-web"], capture=True, check=False)
        assert r.returncode == 0, r.stdout + r.stderr
