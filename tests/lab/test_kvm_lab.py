"""The kvm template with a real virtual machine: every write the guest acknowledged survives
a power cut of the primary.

The guest (tests/lab/kvmguest.py, built from Debian packages at test time) appends numbered
lines to an ext4 file system on its virtio disk, `sync`s, and only then prints "acked N" on its
serial console. The disk image is in the module's replicated directory; the console log is in
a private path of the node, a file of this machine that outlives the node's power cut. node1 is
powered off while the guest writes; node2 boots the same image, and every acknowledged number
must be in the guest's /log.

HAKIT_KVM_ACCEL (default tcg: this machine's nested /dev/kvm never boots Debian's kernel) and
HAKIT_KVM_CACHE (default writeback) choose the accelerator and the qemu cache mode under test.
A swap and several guests cross-replicated: the `vm` scene (tests/lab/test_scenes_lab.py).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from hakit.daemon.packages import package
from hakit.lab import kvmguest
from hakit.lab.lab import Lab
from hakit.templates import render
from hakit.waiting import wait_until
from tests.lab.modules import LabModule, lab_up

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
    pytest.mark.skipif(not shutil.which("nft"), reason="the lab needs nftables (nft)"),
    pytest.mark.skipif(kvmguest.missing() is not None, reason=str(kvmguest.missing())),
    pytest.mark.skipif(not shutil.which("socat"), reason="socat missing"),
]

LAB = "tkvm"
NAME = "vm1"
VM_DIR = f"/srv/{NAME}/vm"
SERIAL = f"/var/log/hakit-kvm/{NAME}/serial.log"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with lab_up(LAB, 2, 1, 1, private=["/run/hakit-kvm", "/var/log/hakit-kvm"]) as lab:
        yield lab


def test_every_acknowledged_guest_write_survives_a_power_cut(lab: Lab, tmp_path: Path) -> None:
    folder = render("kvm", NAME, tmp_path, kvmguest.settings())
    pkg = package(folder, tmp_path / f"{NAME}.hakit")
    vm1 = lab.host_path("node1", VM_DIR)
    kvmguest.build(vm1)
    kvmguest.make_disk(vm1 / "disk.img")
    lab.exec("node2", ["mkdir", "-p", VM_DIR])
    lab.exec("node1", ["hakit", "module", "install", str(pkg), "--all"], capture=True)
    m = LabModule(lab, NAME)
    m.loaded()
    log1, log2 = lab.host_path("node1", SERIAL), lab.host_path("node2", SERIAL)
    try:
        m.cmd("node1", "prim")
        m.wait("node1", "ALONE ready", 60)
        m.cmd("node2", "second")
        m.wait("node2", "SECOND ready", 120)
        wait_until(
            lambda: log1.exists() and len(kvmguest.acked(log1.read_text("latin-1"))) >= 20,
            90,
            "guest writes acknowledged",
        )
        lab.poweroff("node1")
        before = kvmguest.acked(
            log1.read_text("latin-1")
        )  # what node1's guest acknowledged, all of it
        m.wait("node2", "ALONE ready", 90)
        wait_until(
            lambda: log2.exists() and len(kvmguest.acked(log2.read_text("latin-1"))) >= 5,
            90,
            "the guest writes again on node2",
        )
        boot = kvmguest.boots(log2.read_text("latin-1"))
        m.cmd("node2", "stop")
        m.wait("node2", "STOP not-ready", 60)
        on_disk = set(kvmguest.log_of(lab.host_path("node2", f"{VM_DIR}/disk.img")))
        missing = [n for n in before if n not in on_disk]
        assert not missing, f"{len(missing)} acknowledged writes lost: {missing[:20]}"
        assert boot, "no hakit-boot line on node2's console"
        assert boot[0] >= max(before), (boot, max(before))
        assert set(kvmguest.acked(log2.read_text("latin-1"))) <= on_disk
        print(f"acked on node1 {len(before)}, node2 booted at {boot[0]}, on disk {len(on_disk)}")
    finally:
        lab.poweron("node1")
        for node in ("node2", "node1"):
            m.cmd(node, "stop", check=False)
        lab.exec(
            "node2", ["hakit", "module", "uninstall", NAME, "--all"], capture=True, check=False
        )
