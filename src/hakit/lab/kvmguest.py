"""A tiny virtual machine for the kvm template's tests and the `vm` demo scene, built from the
machine's Debian packages only: the kernel of linux-image-amd64 (/boot/vmlinuz-*) and an
initramfs holding busybox-static, the kernel modules that read an ext4 virtio disk, and an /init
that writes numbered lines to that disk, each made durable (`sync`) before it is acknowledged on
the serial console."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from hakit.lab.errors import LabError

BUSYBOX = Path("/bin/busybox")

# what /dev/vda with ext4 needs, in load order (modules.dep of Debian's 6.1 kernel); the
# kernel asks for crc32c by name (metadata checksums), with no modprobe in the guest
MODULES = [
    "kernel/drivers/virtio/virtio_ring.ko",
    "kernel/drivers/virtio/virtio.ko",
    "kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
    "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
    "kernel/drivers/virtio/virtio_pci.ko",
    "kernel/drivers/block/virtio_blk.ko",
    "kernel/crypto/crc32c_generic.ko",
    "kernel/lib/crc16.ko",
    "kernel/fs/mbcache.ko",
    "kernel/fs/jbd2/jbd2.ko",
    "kernel/fs/ext4/ext4.ko",
]

# The guest: load the drivers, mount the data disk on /mnt, then run its workload.
BOOT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in {modules}; do insmod /lib/modules/$m.ko || echo "hakit-error insmod $m"; done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done
mkdir -p /mnt
if ! mount -t ext4 /dev/vda /mnt; then
    echo "hakit-error mount"; sleep 5; poweroff -f
fi
"""

# The tests' workload: say what the disk holds ("hakit-boot last=N", N the last number in
# /log), then append N+1, N+2, … to /log, each followed by `sync` (a journal commit and a disk
# flush) and only then "acked N" on the console; a heartbeat "hakit-alive K" every second in
# parallel (what the template's checker reads).
LEDGER = """n=$(tail -n 1 /mnt/log 2>/dev/null); n=${{n:-0}}
echo "hakit-boot last=$n"
(k=0; while :; do k=$((k+1)); echo "hakit-alive $k"; sleep 1; done) &
while :; do
    n=$((n+1))
    echo "$n" >> /mnt/log
    sync
    echo "acked $n"
    sleep {pause}
done
"""


def kernel() -> Path | None:
    """The newest Debian kernel with its modules, or None."""
    for k in sorted(Path("/boot").glob("vmlinuz-*"), reverse=True):
        if all((Path("/lib/modules") / k.name[len("vmlinuz-") :] / m).exists() for m in MODULES):
            return k
    return None


def missing() -> str | None:
    """Why the guest cannot be built here (None: it can)."""
    if not Path("/dev/kvm").exists():
        return "no /dev/kvm"
    if not shutil.which("qemu-system-x86_64"):
        return "qemu-system-x86 not installed"
    if not BUSYBOX.exists():
        return "busybox-static not installed (/bin/busybox)"
    if kernel() is None:
        return "no /boot/vmlinuz-* with virtio_blk and ext4 modules (linux-image-amd64)"
    for tool in ("mkfs.ext4", "debugfs"):
        if not shutil.which(tool):
            return f"{tool} missing (e2fsprogs)"
    return None


def _newc(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A cpio archive in the "newc" format the kernel unpacks: (path, mode, data) entries;
    a character device's data is its b"MAJOR:MINOR"."""
    out = bytearray()

    def pad(n: int) -> None:
        out.extend(b"\0" * (-n % 4))

    for ino, (name, mode, data) in enumerate([*entries, ("TRAILER!!!", 0, b"")], start=1):
        raw = name.encode() + b"\0"
        rdev = [0, 0]
        if mode & 0o170000 == 0o020000:
            rdev, data = [int(x) for x in data.split(b":")], b""
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, *rdev, len(raw), 0]
        out.extend(b"070701" + b"".join(b"%08X" % f for f in fields))
        out.extend(raw)
        pad(110 + len(raw))
        out.extend(data)
        pad(len(data))
    return bytes(out)


def build(dest: Path, pause: float = 0.2, workload: str | None = None) -> tuple[Path, Path]:
    """Write `dest`/vmlinuz and `dest`/initrd (uncompressed cpio); return both paths. The guest
    runs `workload` (shell, the disk on /mnt) or, by default, the acknowledged-writes ledger
    with `pause` seconds between writes."""
    k = kernel()
    if k is None:
        raise LabError(f"cannot build the test guest: {missing()}")
    moddir = Path("/lib/modules") / k.name[len("vmlinuz-") :]
    names = [Path(m).stem for m in MODULES]
    d, f = 0o040755, 0o100644
    entries: list[tuple[str, int, bytes]] = [
        (p, d, b"") for p in ("bin", "dev", "proc", "sys", "mnt", "lib", "lib/modules")
    ]
    entries.append(("dev/console", 0o020600, b"5:1"))  # init's stdout, before devtmpfs
    entries.append(("bin/busybox", 0o100755, BUSYBOX.read_bytes()))
    for m, n in zip(MODULES, names, strict=True):
        entries.append((f"lib/modules/{n}.ko", f, (moddir / m).read_bytes()))
    init = BOOT.format(modules=" ".join(names))
    init += LEDGER.format(pause=pause) if workload is None else workload
    entries.append(("init", 0o100755, init.encode()))
    dest.mkdir(parents=True, exist_ok=True)
    vmlinuz, initrd = dest / "vmlinuz", dest / "initrd"
    shutil.copyfile(k, vmlinuz)
    initrd.write_bytes(_newc(entries))
    return vmlinuz, initrd


def make_disk(path: Path, mib: int = 16) -> None:
    """An empty ext4 file system in the image file `path`."""
    with path.open("wb") as f:
        f.truncate(mib << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(path)], check=True, capture_output=True)


def log_of(disk: Path) -> list[int]:
    """The numbers in /log of the ext4 image `disk` (read with debugfs, the guest stopped)."""
    r = subprocess.run(
        ["debugfs", "-R", "cat /log", str(disk)], check=True, capture_output=True, text=True
    )
    return [int(x) for x in r.stdout.split() if x.isdigit()]


def settings() -> dict[str, str]:
    """The kvm template's variables for this guest: direct boot, 256 MiB; emulated (tcg) unless
    HAKIT_KVM_ACCEL says otherwise (this machine's nested /dev/kvm never boots Debian's kernel);
    HAKIT_KVM_CACHE (default writeback): the qemu cache mode."""
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


def acked(console: str) -> list[int]:
    """The numbers the guest acknowledged (durable on its disk), from its serial console."""
    return [int(x) for x in re.findall(r"acked (\d+)", console)]


def boots(console: str) -> list[int]:
    """At each boot of the guest, the last number its disk held."""
    return [int(x) for x in re.findall(r"hakit-boot last=(\d+)", console)]
