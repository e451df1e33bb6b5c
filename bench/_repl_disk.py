"""Parts 1 and 2 of bench/replication.py, the workloads on a file: sequential write, and
4 KiB write + fsync latency; replicated vs the same disk directly.

Not a benchmark itself; `python bench/replication.py` finds it next to the script."""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

from _common import stats
from _repl_base import TARGETS, MiB, percentile, rotated, say, verify_replica
from _repl_replica import Bench, Replica

LAT_WARMUP = 50  # write+fsync operations before the measured ones


# -- 1. sequential write ---------------------------------------------------------------------------


def write_sequential(path: Path, size: int, buf: bytes) -> float:
    """Write `size` bytes in len(buf) writes, fsync, close: seconds taken."""
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(buf)
        for _ in range(size // len(buf)):
            done = 0
            while done < len(buf):
                done += os.write(fd, view[done:])
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - t0


def part_throughput(bench: Bench, args: argparse.Namespace, result: dict[str, Any]) -> None:
    size = args.size_mib * MiB
    plain = bench.root / "plain-seq"
    plain.mkdir()
    rep = Replica(bench, "seq", "sync")
    buf = os.urandom(MiB)
    samples: list[dict[str, Any]] = []
    result["samples"]["throughput"] = samples
    say(f"\n1. sequential write: {args.size_mib} MiB in 1 MiB writes + fsync, {args.rounds} rounds")
    for r in range(args.rounds):
        for config in rotated(["direct", "sync"], r):
            sample: dict[str, Any] = {"round": r + 1, "config": config}
            if config == "direct":
                os.sync()
                secs = write_sequential(plain / "big", size, buf)
                (plain / "big").unlink()
            else:
                rep.up()
                mark = rep.marks()
                os.sync()
                cpu0 = rep.cpu()
                secs = write_sequential(rep.a / "big", size, buf)
                cpu1 = rep.cpu()
                sample["cpu_primary_ms_per_mib"] = (cpu1[0] - cpu0[0]) * 1000 / args.size_mib
                sample["cpu_secondary_ms_per_mib"] = (cpu1[1] - cpu0[1]) * 1000 / args.size_mib
                rep.reconnect_after_drop(sample, mark)
                rep.stop()
                sample["verified"] = verify_replica(rep.a, rep.b, "sequential write")
                rep.wipe()
            sample["seconds"] = secs
            sample["mb_per_s"] = size / secs / 1e6
            samples.append(sample)
            dropped = " (secondary dropped: not counted)" if "replica_dropped" in sample else ""
            say(f"  round {r + 1}, {config:6}: {sample['mb_per_s']:8.1f} MB/s{dropped}")
    valid = [s for s in samples if "replica_dropped" not in s]
    direct = [s["mb_per_s"] for s in valid if s["config"] == "direct"]
    sync = [s["mb_per_s"] for s in valid if s["config"] == "sync"]
    per_round = [
        s["mb_per_s"] / d["mb_per_s"] * 100
        for s in valid
        if s["config"] == "sync"
        for d in valid
        if d["config"] == "direct" and d["round"] == s["round"]
    ]
    result["summary"]["throughput"] = {
        "direct_mb_per_s": stats(direct),
        "sync_mb_per_s": stats(sync),
        "pct_of_direct": statistics.median(sync) / statistics.median(direct) * 100
        if sync and direct
        else None,
        "pct_of_direct_per_round": per_round,
        "cpu_primary_ms_per_mib": stats(
            [s["cpu_primary_ms_per_mib"] for s in valid if "cpu_primary_ms_per_mib" in s]
        ),
        "cpu_secondary_ms_per_mib": stats(
            [s["cpu_secondary_ms_per_mib"] for s in valid if "cpu_secondary_ms_per_mib" in s]
        ),
        "dropped": len(samples) - len(valid),
        "dropped_sync_mb_per_s": stats(
            [s["mb_per_s"] for s in samples if "replica_dropped" in s and s["config"] == "sync"]
        ),
        "dropped_reasons": sorted(
            {s["replica_dropped"] for s in samples if "replica_dropped" in s}
        ),
        "target_pct": TARGETS["throughput_pct_of_direct"],
    }


# -- 2. write + fsync latency ----------------------------------------------------------------------


def write_fsync_latencies(path: Path, n: int) -> list[float]:
    """`n` times pwrite(4 KiB at the next offset) + fsync, after LAT_WARMUP unmeasured ones:
    each one's duration in microseconds."""
    buf = os.urandom(4096)
    out: list[float] = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        for i in range(LAT_WARMUP + n):
            t0 = time.perf_counter_ns()
            os.pwrite(fd, buf, i * 4096)
            os.fsync(fd)
            if i >= LAT_WARMUP:
                out.append((time.perf_counter_ns() - t0) / 1000)
    finally:
        os.close(fd)
    return out


def part_latency(bench: Bench, args: argparse.Namespace, result: dict[str, Any]) -> None:
    plain = bench.root / "plain-lat"
    plain.mkdir()
    reps = {m: Replica(bench, f"lat-{m}", m) for m in ("sync", "semi")}
    samples: list[dict[str, Any]] = []
    result["samples"]["latency"] = samples
    say(f"\n2. 4 KiB pwrite + fsync: {args.lat_ops} operations x {args.rounds} rounds")
    for r in range(args.rounds):
        for config in rotated(["direct", "sync", "semi"], r):
            sample: dict[str, Any] = {"round": r + 1, "config": config}
            if config == "direct":
                os.sync()
                lat = write_fsync_latencies(plain / "wal", args.lat_ops)
                (plain / "wal").unlink()
            else:
                rep = reps[config]
                rep.up()
                mark = rep.marks()
                os.sync()
                cpu0 = rep.cpu()
                lat = write_fsync_latencies(rep.a / "wal", args.lat_ops)
                cpu1 = rep.cpu()
                sample["cpu_primary_us_per_op"] = (cpu1[0] - cpu0[0]) * 1e6 / args.lat_ops
                sample["cpu_secondary_us_per_op"] = (cpu1[1] - cpu0[1]) * 1e6 / args.lat_ops
                rep.reconnect_after_drop(sample, mark)
                rep.stop()
                sample["verified"] = verify_replica(rep.a, rep.b, f"latency ({config})")
                rep.wipe()
            s = sorted(lat)
            sample |= {
                "p50_us": percentile(s, 50),
                "p99_us": percentile(s, 99),
                "mean_us": statistics.fmean(s),
                "max_us": s[-1],
                "latencies_us": [round(x, 1) for x in lat],
            }
            samples.append(sample)
            dropped = " (secondary dropped: not counted)" if "replica_dropped" in sample else ""
            say(
                f"  round {r + 1}, {config:6}: p50 {sample['p50_us']:7.0f} us, "
                f"p99 {sample['p99_us']:7.0f} us{dropped}"
            )
    valid = [s for s in samples if "replica_dropped" not in s]
    summary: dict[str, Any] = {"target_p50_ratio": TARGETS["latency_p50_ratio"]}
    for config in ("direct", "sync", "semi"):
        mine = [s for s in valid if s["config"] == config]
        summary[config] = {
            "p50_us": stats([s["p50_us"] for s in mine]),
            "p99_us": stats([s["p99_us"] for s in mine]),
        }
        if config != "direct":
            summary[config]["cpu_primary_us_per_op"] = stats(
                [s["cpu_primary_us_per_op"] for s in mine]
            )
            summary[config]["cpu_secondary_us_per_op"] = stats(
                [s["cpu_secondary_us_per_op"] for s in mine]
            )
    for config in ("sync", "semi"):
        d, c = summary["direct"], summary[config]
        for p in ("p50", "p99"):
            c[f"{p}_ratio"] = (
                c[f"{p}_us"]["median"] / d[f"{p}_us"]["median"]
                if c[f"{p}_us"]["n"] and d[f"{p}_us"]["n"]
                else None
            )
        c["p50_ratio_per_round"] = [
            s["p50_us"] / dd["p50_us"]
            for s in valid
            if s["config"] == config
            for dd in valid
            if dd["config"] == "direct" and dd["round"] == s["round"]
        ]
    summary["dropped"] = len(samples) - len(valid)
    summary["dropped_reasons"] = sorted(
        {s["replica_dropped"] for s in samples if "replica_dropped" in s}
    )
    result["summary"]["latency"] = summary
