"""The kvm template with a real virtual machine: every write the guest acknowledged survives
a power cut of the primary.

The guest (tests/lab/kvm_guest.py, built from Debian packages at test time) appends numbered
lines to an ext4 file system on its virtio disk, `sync`s, and only then prints "acked N" on its
serial console. The disk image is in the module's replicated directory; the console log is in
a private path of the node, a file of this machine that outlives the node's power cut. node1 is
powered off while the guest writes; node2 boots the same image, and every acknowledged number
must be in the guest's /log.

HAKIT_KVM_ACCEL (default tcg): this machine's nested /dev/kvm never boots Debian's kernel.
HAKIT_KVM_CACHE (default writeback): the qemu cache mode under test.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from hakit.daemon.packages import package
from hakit.lab.lab import Lab
from hakit.templates import render
from hakit.waiting import wait_until
from tests.lab import kvm_guest
from tests.lab.modules import LabModule, lab_up

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
    pytest.mark.skipif(not shutil.which("nft"), reason="the lab needs nftables (nft)"),
    pytest.mark.skipif(kvm_guest.missing() is not None, reason=str(kvm_guest.missing())),
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


def settings() -> dict[str, str]:
    """The template's variables for the test guest (direct boot, small, emulated by default)."""
    return {
        "ACCEL": os.environ.get("HAKIT_KVM_ACCEL", "tcg"),
        "CACHE": os.environ.get("HAKIT_KVM_CACHE", "writeback"),
        "MEMORY": "256",
        "KERNEL": "vmlinuz",
        "INITRD": "initrd",
        "APPEND": "console=ttyS0 quiet panic=-1",
        "SHUTDOWN_TIMEOUT": "5",
        "HEARTBEAT_AGE": "15",
    }


def acked(text: str) -> list[int]:
    return [int(x) for x in re.findall(r"acked (\d+)", text)]


def test_every_acknowledged_guest_write_survives_a_power_cut(lab: Lab, tmp_path: Path) -> None:
    folder = render("kvm", NAME, tmp_path, settings())
    pkg = package(folder, tmp_path / f"{NAME}.hakit")
    vm1 = lab.host_path("node1", VM_DIR)
    kvm_guest.build(vm1)
    kvm_guest.make_disk(vm1 / "disk.img")
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
            lambda: log1.exists() and len(acked(log1.read_text("latin-1"))) >= 20,
            90,
            "guest writes acknowledged",
        )
        lab.poweroff("node1")
        before = acked(log1.read_text("latin-1"))  # what node1's guest acknowledged, all of it
        m.wait("node2", "ALONE ready", 90)
        wait_until(
            lambda: log2.exists() and len(acked(log2.read_text("latin-1"))) >= 5,
            90,
            "the guest writes again on node2",
        )
        boot = re.findall(r"hakit-boot last=(\d+)", log2.read_text("latin-1"))
        m.cmd("node2", "stop")
        m.wait("node2", "STOP not-ready", 60)
        on_disk = set(kvm_guest.log_of(lab.host_path("node2", f"{VM_DIR}/disk.img")))
        missing = [n for n in before if n not in on_disk]
        assert not missing, f"{len(missing)} acknowledged writes lost: {missing[:20]}"
        assert boot, "no hakit-boot line on node2's console"
        assert int(boot[0]) >= max(before), (boot, max(before))
        assert set(acked(log2.read_text("latin-1"))) <= on_disk
        print(f"acked on node1 {len(before)}, node2 booted at {boot[0]}, on disk {len(on_disk)}")
    finally:
        lab.poweron("node1")
        for node in ("node2", "node1"):
            m.cmd(node, "stop", check=False)
        lab.exec(
            "node2", ["hakit", "module", "uninstall", NAME, "--all"], capture=True, check=False
        )


def test_a_swap_shuts_the_guest_down_and_boots_it_on_the_other_node(
    lab: Lab, tmp_path: Path
) -> None:
    folder = render("kvm", NAME, tmp_path, settings())
    vm1 = lab.host_path("node1", VM_DIR)
    shutil.rmtree(vm1, ignore_errors=True)
    shutil.rmtree(lab.host_path("node2", VM_DIR), ignore_errors=True)
    kvm_guest.build(vm1)
    kvm_guest.make_disk(vm1 / "disk.img")
    lab.exec("node2", ["mkdir", "-p", VM_DIR])
    log1, log2 = lab.host_path("node1", SERIAL), lab.host_path("node2", SERIAL)
    for log in (log1, log2):
        log.unlink(missing_ok=True)
    lab.exec("node1", ["hakit", "module", "install", str(folder), "--all"], capture=True)
    m = LabModule(lab, NAME)
    m.loaded()
    try:
        m.cmd("node1", "prim")
        m.wait("node1", "ALONE ready", 60)
        m.cmd("node2", "second")
        m.wait("node2", "SECOND ready", 120)
        wait_until(
            lambda: log1.exists() and len(acked(log1.read_text("latin-1"))) >= 10, 90, "acks"
        )
        m.cmd("node1", "swap")
        m.wait("node2", "PRIM ready", 90)
        m.wait("node1", "SECOND ready", 120)
        before = acked(log1.read_text("latin-1"))
        wait_until(
            lambda: log2.exists() and len(acked(log2.read_text("latin-1"))) >= 5, 90, "node2 acks"
        )
        boot = re.findall(r"hakit-boot last=(\d+)", log2.read_text("latin-1"))
        assert boot, "no hakit-boot line on node2's console"
        assert int(boot[0]) >= max(before), (boot, max(before))
    finally:
        for node in ("node2", "node1"):
            m.cmd(node, "stop", check=False)
        lab.exec(
            "node1", ["hakit", "module", "uninstall", NAME, "--all"], capture=True, check=False
        )
