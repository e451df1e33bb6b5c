"""The cost of replication for a virtual machine: writes inside a qemu guest whose disk image is
on a plain directory vs a replicated one, side by side in one run.

    python bench/kvm_io.py [--quick] [--rounds N] [--ops N] [--size-mib N] [--accel tcg|kvm]

What the kvm template (docs/modules/kvm.md) gives a guest: its disk image (raw, virtio,
cache=writeback, as the template's default) is a file in a directory hakit replicates, so
every flush the guest sends becomes an fdatasync of the image on the replicated mount.
Replication is driven as in bench/replication.py, without the daemon: a secondary replication
process on 127.0.0.1 keeps directory B, a primary mounts its FUSE layer over A (`sync` mode).
The guest is the tests' tiny Debian guest (hakit.lab.kvmguest: Debian's kernel, a busybox
initramfs, an ext4 disk image); its workload, timed from this side by the moment each marker
line arrives on its serial console:

1. **4 KiB write + fsync**, `--ops` times (`dd bs=4k count=1 seek=i conv=notrunc,fsync`): the
   time per operation; the same loop without fsync gives the cost of the loop itself (a busybox
   dd started per write), so `fsync` below is the difference: what a guest's commit pays;
2. **sequential write** of `--size-mib` MiB in 1 MiB blocks, then fsync (`conv=fsync`): MB/s.

The configurations alternate (the order rotates every round); each figure is the median of
the rounds; replicated as % of plain. After the last run A and B are compared (every file,
SHA-256): a difference fails the run. Needs root, qemu-system-x86, busybox-static, a Debian
kernel package and /dev/kvm. `--accel tcg` (default) emulates the guest's CPU, as the lab
tests do (this machine's nested KVM does not boot Debian's kernel): the guest's own work is
slower than on real hardware, the disk path is the same. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import MeasureError, print_side_by_side, result_header, run_and_record, side_by_side
from _repl_base import filesystem_of, free_port, loadavg, rotated, say, verify_replica
from _repl_replica import Bench, Replica

from hakit.lab import kvmguest

ACK_TIMEOUT = 0.8
CONFIGS = ("plain", "replicated")
MARK = "hakit-bench"
WORKLOAD = """echo "{mark} loop-start"
i=0; while [ $i -lt {ops} ]; do
  dd if=/dev/zero of=/mnt/f bs=4096 count=1 seek=$i conv=notrunc 2>/dev/null; i=$((i+1)); done
echo "{mark} loop-end"
sync
echo "{mark} fsync-start"
i=0; while [ $i -lt {ops} ]; do
  dd if=/dev/zero of=/mnt/f bs=4096 count=1 seek=$i conv=notrunc,fsync 2>/dev/null; i=$((i+1)); done
echo "{mark} fsync-end"
echo "{mark} seq-start"
dd if=/dev/zero of=/mnt/big bs=1048576 count={mib} conv=fsync 2>/dev/null
echo "{mark} seq-end"
rm -f /mnt/big /mnt/f; sync
echo "{mark} done"
poweroff -f
"""


def boot(vm: Path, disk: Path, accel: str, timeout: float) -> dict[str, float]:
    """Boot the guest on `disk`; the arrival time of each marker line on its console."""
    argv = [
        "qemu-system-x86_64", "-accel", accel, "-nodefaults", "-no-user-config",
        "-display", "none", "-no-reboot", "-m", "256",
        "-kernel", str(vm / "vmlinuz"), "-initrd", str(vm / "initrd"),
        "-append", "console=ttyS0 quiet panic=-1",
        "-drive", f"file={disk},format=raw,if=virtio,cache=writeback",
        "-serial", "stdio", "-monitor", "none",
    ]  # fmt: skip
    p = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    lines: queue.Queue[tuple[float, str]] = queue.Queue()

    def read() -> None:
        assert p.stdout is not None
        for raw in p.stdout:
            lines.put((time.monotonic(), raw.decode("latin-1").strip()))

    threading.Thread(target=read, daemon=True).start()
    marks: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    try:
        while "done" not in marks:
            left = deadline - time.monotonic()
            if left <= 0:
                raise MeasureError(f"the guest did not finish in {timeout:g} s: {marks}")
            try:
                at, line = lines.get(timeout=min(left, 1.0))
            except queue.Empty:
                if p.poll() is not None:
                    raise MeasureError(f"qemu exited {p.returncode} early: {marks}") from None
                continue
            if line.startswith("hakit-error"):
                raise MeasureError(f"the guest says: {line}")
            if line.startswith(MARK + " "):
                marks[line.split()[1]] = at
    finally:
        if p.poll() is None:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
    return marks


def measure(args: argparse.Namespace, result: dict[str, Any]) -> None:
    root = Path(f"/tmp/hkbench-kvm-{os.getpid()}")
    root.mkdir(mode=0o755)
    bench = Bench(root, ACK_TIMEOUT)
    result["settings"]["directory"] = str(root)
    result["settings"]["filesystem"] = filesystem_of(root)
    try:
        vm = root / "guest"
        kvmguest.build(vm, workload=WORKLOAD.format(mark=MARK, ops=args.ops, mib=args.size_mib))
        bench.port = bench.connect_port = free_port(bench.ports)
        rep = Replica(bench, "vm", "sync")
        rep.up()
        plain = root / "plain"
        plain.mkdir()
        dirs = {"plain": plain, "replicated": rep.a}
        samples: list[dict[str, Any]] = result["samples"]
        for r in range(args.rounds):
            for config in rotated(CONFIGS, r):
                disk = dirs[config] / f"disk-{r}.img"
                kvmguest.make_disk(disk, mib=args.size_mib + 32)
                mark = rep.marks()
                m = boot(vm, disk, args.accel, timeout=120 + args.ops + args.size_mib)
                loop = (m["loop-end"] - m["loop-start"]) / args.ops * 1e6
                each = (m["fsync-end"] - m["fsync-start"]) / args.ops * 1e6
                sample: dict[str, Any] = {
                    "round": r + 1,
                    "config": config,
                    "op_us": each,
                    "loop_us": loop,
                    "fsync_us": each - loop,
                    "mb_s": args.size_mib * 1.048576 / (m["seq-end"] - m["seq-start"]),
                }
                if config == "replicated":
                    rep.reconnect_after_drop(sample, mark)
                dropped = " (secondary dropped: not counted)" if "replica_dropped" in sample else ""
                say(
                    f"  round {r + 1}, {config:10}: write+fsync {each:7.0f} us "
                    f"(loop alone {loop:6.0f} us), sequential {sample['mb_s']:6.1f} MB/s{dropped}"
                )
                samples.append(sample)
        rep.stop()
        result["verified"] = verify_replica(rep.a, rep.b, "guest disks")
        summarize(samples, result)
    finally:
        result["settings"]["loadavg_at_end"] = loadavg()
        warnings = bench.cleanup()
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr)
        result["settings"]["cleanup_warnings"] = warnings


def summarize(samples: list[dict[str, Any]], result: dict[str, Any]) -> None:
    valid = [s for s in samples if "replica_dropped" not in s]
    summary: dict[str, Any] = {}
    for key in ("op_us", "fsync_us", "mb_s"):
        p = [s[key] for s in valid if s["config"] == "plain"]
        q = [s[key] for s in valid if s["config"] == "replicated"]
        summary[key] = side_by_side(p, q)
    summary["dropped"] = len(samples) - len(valid)
    result["summary"] = summary


def report(result: dict[str, Any]) -> None:
    s = result["summary"]
    accel = result["settings"]["accel"]
    rows = (
        ("4 KiB write+fsync, us per op", "op_us", "{:10.0f}"),
        ("  of which the fsync, us", "fsync_us", "{:10.0f}"),
        ("sequential write, MB/s", "mb_s", "{:10.1f}"),
    )
    print_side_by_side(
        f"writes inside a qemu guest ({accel}), its disk image on a plain vs a replicated dir",
        rows,
        s,
        32,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round, 50 ops, 32 MiB")
    parser.add_argument("--rounds", type=int, help="rounds (3; quick 1)")
    parser.add_argument("--ops", type=int, help="4 KiB write+fsync operations (200; quick 50)")
    parser.add_argument("--size-mib", type=int, help="sequential write (128; quick 32)")
    parser.add_argument("--accel", choices=("tcg", "kvm"), default="tcg")
    args = parser.parse_args(argv)
    for name, full, quick in (("rounds", 3, 1), ("ops", 200, 50), ("size_mib", 128, 32)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if os.geteuid() != 0:
        print("bench/kvm_io.py needs root (FUSE mounts)", file=sys.stderr)
        return 1
    if why := kvmguest.missing():
        print(f"bench/kvm_io.py cannot build its guest: {why}", file=sys.stderr)
        return 1
    started = datetime.datetime.now(datetime.UTC)
    result: dict[str, Any] = {
        **result_header("kvm_io", started),
        "settings": {
            "rounds": args.rounds,
            "ops": args.ops,
            "size_mib": args.size_mib,
            "accel": args.accel,
            "disk": "raw, virtio, cache=writeback",
            "mode": "sync",
            "ack_timeout_s": ACK_TIMEOUT,
            "transport": "TCP loopback (127.0.0.1), TLS",
        },
        "samples": [],
        "summary": {},
        "error": None,
    }
    return run_and_record("kvm_io", started, result, lambda: measure(args, result), report)


if __name__ == "__main__":
    sys.exit(main())
