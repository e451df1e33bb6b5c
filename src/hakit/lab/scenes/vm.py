"""A virtual machine cluster: two KVM guests cross-replicated on two hosts, each guest's disk
image in its own mirror module; one moved with `hakit swap`, then a power cut of the host that
runs both. The guests are built from this machine's Debian packages (hakit.lab.kvmguest)."""

from __future__ import annotations

import time

from hakit.lab import kvmguest
from hakit.lab.narrator import DemoFailed
from hakit.lab.scenes.base import Scene, need
from hakit.templates import render
from hakit.waiting import WaitTimeout, wait_until

VMS = {"vm1": ("node1", "node2", 7366), "vm2": ("node2", "node1", 7367)}  # home, backup, port


def serial(vm: str) -> str:
    return f"/var/log/hakit-kvm/{vm}/serial.log"


class VirtualMachines(Scene):
    name = "vm"
    summary = "two KVM guests cross-replicated on two hosts; a swap, then a power cut"
    nodes = 2
    private = ("/run/hakit-kvm", "/var/log/hakit-kvm")
    needs = (kvmguest.missing, need("socat", "socat"))

    def console(self, host: str, vm: str) -> str:
        path = self.lab.host_path(host, serial(vm))
        return path.read_text("latin-1") if path.exists() else ""

    def acks(self, host: str, vm: str, at_least: int, timeout: float = 90) -> list[int]:
        """The guest `vm` on `host` has acknowledged at least `at_least` writes: all of them."""
        try:
            wait_until(lambda: len(kvmguest.acked(self.console(host, vm))) >= at_least, timeout, "")
        except WaitTimeout:
            raise DemoFailed(
                f"demo: the guest {vm} on {host} acknowledged "
                f"{len(kvmguest.acked(self.console(host, vm)))} writes in {timeout:g} s "
                f"(its console: {self.lab.host_path(host, serial(vm))})"
            ) from None
        return kvmguest.acked(self.console(host, vm))

    def boots(self, host: str, vm: str) -> int:
        return len(kvmguest.boots(self.console(host, vm)))

    def booted_with(
        self, host: str, vm: str, acked_before: list[int], boots_before: int, what: str
    ) -> None:
        """The guest booted again on `host` from a disk holding every write acknowledged
        before."""
        try:
            wait_until(lambda: self.boots(host, vm) > boots_before, 90, "")
        except WaitTimeout:
            raise DemoFailed(
                f"demo: {vm} did not boot on {host} in 90 s "
                f"(its console: {self.lab.host_path(host, serial(vm))})"
            ) from None
        last = kvmguest.boots(self.console(host, vm))[-1]
        if last < max(acked_before):
            raise DemoFailed(
                f"demo: {vm} booted on {host} with write {last} on its disk, but the guest had "
                f"acknowledged up to {max(acked_before)} ({what})"
            )
        self.say(
            f"  {vm} on {host}: its disk held write {last}, the guest had acknowledged up to "
            f"{max(acked_before)} ({what}): nothing lost"
        )

    def run(self) -> None:
        lab = self.lab
        values = kvmguest.settings()
        self.step("1. Two hosts, two virtual machines, each host the other's backup")
        self.say(
            "Each guest (a Debian kernel and a busybox initramfs, built from this machine's "
            "packages) appends numbered lines to the ext4 file system of its virtio disk, "
            "`sync`s, and only then prints “acked N” on its serial console. Each disk image is "
            "in a directory replicated synchronously by its own mirror module, made with "
            f"`hakit module new VM --template kvm` (qemu accelerator: {values['ACCEL']})."
        )
        for vm, (home, backup, port) in VMS.items():
            vm_dir = f"/srv/{vm}/vm"
            guest = lab.host_path(home, vm_dir)
            kvmguest.build(guest)
            kvmguest.make_disk(guest / "disk.img")
            lab.exec(backup, ["mkdir", "-p", vm_dir])
            for host in (home, backup):
                lab.host_path(host, serial(vm)).unlink(missing_ok=True)
            folder = render("kvm", vm, self.work, {**values, "REPL_PORT": str(port)})
            self.install(folder)
        for vm, (home, backup, _) in VMS.items():
            self.start_mirror(vm, home, backup)
        for vm, (home, _, _) in VMS.items():
            self.acks(home, vm, 5)
            self.say(f"  {vm} runs on {home} and writes")
        self.show_state("node1")

        self.step("2. Maintenance of node1: `hakit swap vm1` moves its guest to node2")
        self.acks("node1", "vm1", 5)
        vm2_before = len(kvmguest.acked(self.console("node2", "vm2")))
        start, seen = time.time(), self.boots("node2", "vm1")
        self.hakit("node1", "swap", "vm1")
        self.wait_module("node2", "vm1", "PRIM ready", 120)
        self.say(
            "vm1 got an ACPI power-off on node1 (a clean guest shutdown), then booted on node2 "
            f"from the replicated image, {time.time() - start:.1f} s in all:"
        )
        before = kvmguest.acked(self.console("node1", "vm1"))  # all of it: vm1 is off there
        self.booted_with("node2", "vm1", before, seen, "on node1 before the swap")
        self.wait_module("node1", "vm1", "SECOND ready", 120)
        vm2_now = len(self.acks("node2", "vm2", vm2_before + 1))
        self.say(f"  vm2 on node2 went on writing meanwhile ({vm2_before} → {vm2_now} acks)")
        self.show_state("node2")

        self.step("3. Power cut on node2, which runs both guests")
        for vm in VMS:
            self.acks("node2", vm, 1)
        off, seen1 = time.time(), {vm: self.boots("node1", vm) for vm in VMS}
        lab.poweroff("node2")
        acked = {vm: kvmguest.acked(self.console("node2", vm)) for vm in VMS}  # all of it
        for vm in VMS:
            self.wait_module("node1", vm, "ALONE ready", 90)
        self.say(f"node1 took both guests over ({time.time() - off:.1f} s after the cut):")
        for vm in VMS:
            self.booted_with("node1", vm, acked[vm], seen1[vm], "on node2 before its power cut")
        self.timeline("node1", "vm2", off, limit=5)

        self.step("4. node2 is back")
        self.power_on("node2")
        for vm in VMS:
            self.wait_module("node2", vm, "SECOND ready", 180)
        self.say(
            "node2 is the secondary of both guests again, resynchronised with only the changes."
        )
        self.show_state("node2")
