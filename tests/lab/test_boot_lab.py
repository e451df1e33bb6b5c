"""Start at boot (issue 13 §2): each module's `boot: on|off|auto` after a power cycle of the
whole cluster — every node off, then on again, with a new kernel boot id — and a daemon
restart on the same boot, which always resumes what was running (a rolling upgrade)."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

from hakit.lab.lab import BOOT_ID, Lab, alive_pid
from hakit.waiting import wait_until
from tests.lab.modules import LabModule, lab_up

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
    pytest.mark.skipif(not shutil.which("nft"), reason="the lab needs nftables (nft)"),
]

LAB = "tboot"
NODES = ("node1", "node2")


def module(tmp_path: Path, lab: Lab, name: str, boot: str) -> LabModule:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "module.yaml").write_text(
        f"kind: mirror\nnodes: [node1, node2]\nboot: {boot}\n"
        "scripts: {start_timeout: 10, stop_timeout: 10}\n"
    )
    r = lab.exec("node1", ["hakit", "module", "install", str(folder), "--all"], capture=True)
    assert "done on 2 node(s)" in r.stdout, r.stdout + r.stderr
    return LabModule(lab, name)


def started(m: LabModule) -> None:
    m.cmd("node1", "prim")
    m.wait("node1", "ALONE ready")
    m.cmd("node2", "second")
    m.wait("node1", "PRIM ready")
    m.wait("node2", "SECOND ready")


def test_boot_policies_after_a_power_cycle_of_the_whole_cluster(tmp_path: Path) -> None:
    with lab_up(LAB, nodes=2, networks=1, clients=0) as lab:
        boots = {n: lab.exec(n, ["cat", BOOT_ID], capture=True).stdout for n in NODES}
        assert len(set(boots.values())) == 2  # a boot id of each node's own
        auto = module(tmp_path, lab, "mauto", "auto")
        off = module(tmp_path, lab, "moff", "off")
        on = module(tmp_path, lab, "mon", "on")
        for m in (auto, off, on):
            started(m)
        on.cmd("node1", "stop", "--all")  # stopped before the power cut: `on` starts it anyway
        on.wait("node1", "STOP not-ready")

        # A daemon restart on the same boot (an upgrade): whatever ran runs again, boot: off too
        pid = lab.daemon_pid("node2")
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: lab.daemon_pid("node2") != pid or not alive_pid(pid), 10, "daemon gone")
        lab.poweron("node2")  # powered on already: only the daemon starts again
        assert lab.exec("node2", ["cat", BOOT_ID], capture=True).stdout == boots["node2"]
        off.wait("node2", "SECOND ready", timeout=30)
        assert "resuming: the module was started before the daemon stopped" in off.log("node2")

        for n in NODES:
            lab.poweroff(n)
        for n in NODES:
            lab.poweron(n)
        for n in NODES:
            assert lab.exec(n, ["cat", BOOT_ID], capture=True).stdout != boots[n]

        wait_until(
            lambda: {auto.me("node1"), auto.me("node2")} == {"PRIM ready", "SECOND ready"},
            60,
            "mauto (boot: auto, running before) primary and secondary again",
        )
        wait_until(
            lambda: {on.me("node1"), on.me("node2")} == {"PRIM ready", "SECOND ready"},
            60,
            "mon (boot: on, stopped before) started",
        )
        for n in NODES:
            assert off.me(n) == "STOP not-ready", n
            assert "boot: off: it stays stopped until an operator starts it" in off.log(n)
            assert "boot: on: starting it (it was stopped before)" in on.log(n)
            st = off.state(n)["modules"]["moff"]
            assert st["boot"] == "off"
