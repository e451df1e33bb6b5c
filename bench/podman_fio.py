"""The cost of replication for a container: fio in a podman container, its volume (a bind
mount) on a plain directory vs a replicated one, side by side in one run.

    python bench/podman_fio.py [--quick] [--rounds N] [--seconds S] [--size-mib N]

What the podman template (docs/modules/podman.md) gives a container: its volume is a bind
mount of a directory that hakit replicates. Replication is driven as in bench/replication.py,
without the daemon: a secondary replication process on 127.0.0.1 keeps directory B, a primary
mounts its FUSE layer over A (`sync` mode, acknowledgement timeout 0.8 s). The plain directory,
A and B are under /tmp/hkbench-podfio-PID/, on the same disk. The container is a busybox image
built here from Debian's busybox-static, with the machine's /usr bind-mounted read-only (fio
and its libraries come from there), in a private podman storage under the same directory
(nothing downloaded, the machine's podman storage untouched). Two fio jobs, each in a new
container (`podman run --rm --network none -v DIR:/data`):

1. **4 KiB random write + fsync** (`--rw=randwrite --bs=4k --fsync=1 --ioengine=psync`, one
   job, for S seconds): what a database's commit does; IOPS and the p50/p99 of the write +
   fsync (fio's clat of the write plus its sync latency);
2. **sequential write** (`--rw=write --bs=1m --size=N --end_fsync=1`): MB/s.

The configurations alternate (the order rotates every round); every figure is the median of
the rounds; replicated as % of plain. After the last run the replication processes are stopped
and A and B are compared (every file, SHA-256): a difference fails the run. A run in which the
primary dropped its secondary is marked, not counted, and the secondary reconnected.

Results: a table and bench/results/podman_fio-TIMESTAMP.json. Exit status non-zero only when
something could not be measured. Needs root, podman, crun, fio, busybox-static. This machine's
quirks are handled as the lab test does: each podman runs in a private mount namespace without
the cgroup v2 part of a hybrid hierarchy (crun refuses it), with file locks and low default
rlimits (no CAP_SYS_RESOURCE here). See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import MeasureError, print_side_by_side, result_header, run_and_record, side_by_side
from _repl_base import filesystem_of, free_port, loadavg, rotated, say, verify_replica
from _repl_replica import Bench, Replica

ACK_TIMEOUT = 0.8
IMAGE = "localhost/hakit-bench-busybox:latest"
BUSYBOX = Path("/bin/busybox")
CONF = """\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
lock_type = "file"
"""
# crun refuses a hybrid hierarchy whose cgroup v2 part has controllers: leave it out of this
# mount namespace (a no-op on pure v1 or pure v2 machines)
HYBRID_FIX = (
    "if mountpoint -q /sys/fs/cgroup/unified && "
    '[ -n "$(cat /sys/fs/cgroup/unified/cgroup.controllers)" ]; '
    "then umount /sys/fs/cgroup/unified; fi; "
)
CONFIGS = ("plain", "replicated")


class Podman:
    """podman with a private storage under `root`, each call in a private mount namespace."""

    def __init__(self, root: Path) -> None:
        self.root = root / "podman"
        self.root.mkdir()
        self.conf = self.root / "containers.conf"
        self.conf.write_text(CONF)

    def run(self, args: Sequence[str], timeout: float) -> str:
        r = self.root
        argv = [
            "podman",
            "--root",
            str(r / "storage"),
            "--runroot",
            str(r / "run"),
            "--tmpdir",
            str(r / "tmp"),
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
            *args,
        ]
        script = HYBRID_FIX + 'exec "$@"'
        p = subprocess.run(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "CONTAINERS_CONF": str(self.conf)},
            check=False,
        )
        if p.returncode != 0:
            raise MeasureError(
                f"`{' '.join(args[:6])} ...` exited {p.returncode}: {p.stderr[-2000:]}"
            )
        return p.stdout

    def build_image(self, work: Path) -> None:
        rootfs = work / "rootfs"
        (rootfs / "bin").mkdir(parents=True)
        (rootfs / "usr").mkdir()
        shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
        for applet in subprocess.run(
            [str(BUSYBOX), "--list"], capture_output=True, text=True, check=True
        ).stdout.split():
            if applet != "busybox":
                (rootfs / "bin" / applet).symlink_to("busybox")
        for link in ("lib", "lib64"):  # the machine's /usr is bind-mounted at run time
            (rootfs / link).symlink_to(f"usr/{link}")
        tar = work / "rootfs.tar"
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tar), "."], check=True)
        shutil.rmtree(rootfs)
        self.run(["import", "-q", str(tar), IMAGE], timeout=120)
        tar.unlink()

    def fio(self, volume: Path, job: list[str], timeout: float) -> dict[str, Any]:
        out = self.run(
            [
                "run",
                "--rm",
                "--network",
                "none",
                "-v",
                "/usr:/usr:ro",
                "-v",
                f"{volume}:/data",
                IMAGE,
                "/usr/bin/fio",
                "--directory=/data",
                "--output-format=json",
                *job,
            ],
            timeout=timeout,
        )
        try:
            data: dict[str, Any] = json.loads(out[out.index("{") :])
        except ValueError as e:
            raise MeasureError(f"fio's output is not JSON ({e}): {out[-1000:]}") from None
        return data["jobs"][0]  # type: ignore[no-any-return]


def percentile_us(lat: dict[str, Any], p: str) -> float:
    return float(lat.get("percentile", {}).get(p, 0.0)) / 1000


def fsync_job(args: argparse.Namespace) -> list[str]:
    return [
        "--name=randwrite-fsync",
        "--rw=randwrite",
        "--bs=4k",
        "--size=64m",
        "--fsync=1",
        "--ioengine=psync",
        "--time_based",
        f"--runtime={args.seconds}",
    ]


def seq_job(args: argparse.Namespace) -> list[str]:
    return ["--name=seqwrite", "--rw=write", "--bs=1m", f"--size={args.size_mib}m", "--end_fsync=1"]


def measure(args: argparse.Namespace, result: dict[str, Any]) -> None:
    root = Path(f"/tmp/hkbench-podfio-{os.getpid()}")
    root.mkdir(mode=0o755)
    bench = Bench(root, ACK_TIMEOUT)
    result["settings"]["directory"] = str(root)
    result["settings"]["filesystem"] = filesystem_of(root)
    try:
        pm = Podman(root)
        say("building the image (busybox-static, /usr bind-mounted at run time)")
        pm.build_image(root / "image")
        bench.port = bench.connect_port = free_port(bench.ports)
        rep = Replica(bench, "vol", "sync")
        rep.up()
        plain = root / "plain"
        plain.mkdir()
        dirs = {"plain": plain, "replicated": rep.a}
        samples: list[dict[str, Any]] = []
        result["samples"] = samples
        for r in range(args.rounds):
            for config in rotated(CONFIGS, r):
                for job, make in (("fsync", fsync_job), ("seq", seq_job)):
                    vol = dirs[config] / f"{job}-{r}"
                    vol.mkdir()
                    mark = rep.marks()
                    j = pm.fio(vol, make(args), timeout=args.seconds + 600)
                    w = j["write"]
                    sample: dict[str, Any] = {"round": r + 1, "config": config, "job": job}
                    if job == "fsync":
                        sync = j.get("sync", {}).get("lat_ns", {})
                        sample.update(
                            iops=w["iops"],
                            write_p50_us=percentile_us(w["clat_ns"], "50.000000"),
                            sync_p50_us=percentile_us(sync, "50.000000"),
                            sync_p99_us=percentile_us(sync, "99.000000"),
                        )
                        text = f"{w['iops']:8.0f} IOPS, fsync p50 {sample['sync_p50_us']:7.0f} us"
                    else:
                        sample["mb_s"] = w["bw_bytes"] / 1e6
                        text = f"{sample['mb_s']:8.1f} MB/s"
                    if config == "replicated":
                        rep.reconnect_after_drop(sample, mark)
                    dropped = (
                        " (secondary dropped: not counted)" if "replica_dropped" in sample else ""
                    )
                    say(f"  round {r + 1}, {config:10} {job:5}: {text}{dropped}")
                    samples.append(sample)
        rep.stop()
        result["verified"] = verify_replica(rep.a, rep.b, "fio")
        summarize(samples, result)
    finally:
        result["settings"]["loadavg_at_end"] = loadavg()
        warnings = bench.cleanup()
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr)
        result["settings"]["cleanup_warnings"] = warnings


def summarize(samples: list[dict[str, Any]], result: dict[str, Any]) -> None:
    valid = [s for s in samples if "replica_dropped" not in s]

    def of(config: str, job: str, key: str) -> list[float]:
        return [s[key] for s in valid if s["config"] == config and s["job"] == job]

    summary: dict[str, Any] = {}
    for job, key in (
        ("fsync", "iops"),
        ("fsync", "sync_p50_us"),
        ("fsync", "sync_p99_us"),
        ("seq", "mb_s"),
    ):
        p, q = of("plain", job, key), of("replicated", job, key)
        summary[key] = side_by_side(p, q)
    summary["dropped"] = len(samples) - len(valid)
    result["summary"] = summary


def report(result: dict[str, Any]) -> None:
    s = result["summary"]
    rows = (
        ("4 KiB write+fsync, IOPS", "iops", "{:10.0f}"),
        ("fsync latency p50, us", "sync_p50_us", "{:10.0f}"),
        ("fsync latency p99, us", "sync_p99_us", "{:10.0f}"),
        ("sequential write, MB/s", "mb_s", "{:10.1f}"),
    )
    print_side_by_side(
        "fio in a podman container, volume on a plain vs a replicated (sync) directory", rows, s, 28
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round, 5 s, 64 MiB")
    parser.add_argument("--rounds", type=int, help="rounds (3; quick 1)")
    parser.add_argument("--seconds", type=int, help="runtime of the fsync job (15; quick 5)")
    parser.add_argument("--size-mib", type=int, help="size of the sequential write (256; quick 64)")
    args = parser.parse_args(argv)
    for name, full, quick in (("rounds", 3, 1), ("seconds", 15, 5), ("size_mib", 256, 64)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if os.geteuid() != 0:
        print("bench/podman_fio.py needs root (FUSE mounts, podman)", file=sys.stderr)
        return 1
    missing = [c for c in ("podman", "crun", "fio", "unshare") if not shutil.which(c)]
    if missing or not BUSYBOX.exists():
        print(
            f"bench/podman_fio.py needs {', '.join(missing) or 'busybox-static'}", file=sys.stderr
        )
        return 1
    started = datetime.datetime.now(datetime.UTC)
    result: dict[str, Any] = {
        **result_header("podman_fio", started),
        "settings": {
            "rounds": args.rounds,
            "fsync_job": fsync_job(args),
            "seq_job": seq_job(args),
            "mode": "sync",
            "ack_timeout_s": ACK_TIMEOUT,
            "transport": "TCP loopback (127.0.0.1), TLS",
        },
        "samples": [],
        "summary": {},
        "error": None,
    }
    return run_and_record("podman_fio", started, result, lambda: measure(args, result), report)


if __name__ == "__main__":
    sys.exit(main())
