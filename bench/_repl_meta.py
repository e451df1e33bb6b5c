"""Part 6 of bench/replication.py, metadata and small files: what the attribute cache of the
mount is worth (docs/replication.md, "Attributes of every name"); replicated vs the same disk
directly.

Three workloads on a tree of DIRS x FILES small files (1 KiB each), created fresh every round:

- **stat walk**: `lstat` of every file, PASSES passes one after the other (what `make`, `git
  status`, `rsync` and backup tools do); microseconds per `lstat`;
- **small files**: create + write 4 KiB + close of FILES new files in one directory, then
  open + read + close of each, then unlink of each; microseconds per file for each phase;
- **hard-linked stat**: `lstat` of both names of FILES hard-linked pairs after a `chmod`
  through the other name (the case that needs invalidation); microseconds per `lstat`.

Not a benchmark itself; `python bench/replication.py` finds it next to the script."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from _common import stats
from _repl_base import empty_dir, rotated, say, verify_replica
from _repl_replica import Bench, Replica

DIRS = 20
FILES = 100  # per directory in the stat walk; files of the small-file workload
PASSES = 5
SMALL = 4096


def _tree(root: Path) -> list[str]:
    names = []
    blob = b"x" * 1024
    root.mkdir()
    for d in range(DIRS):
        sub = root / f"d{d:02}"
        sub.mkdir()
        for f in range(FILES):
            p = sub / f"f{f:03}"
            p.write_bytes(blob)
            names.append(str(p))
    return names


def _per_op_us(t0: float, n: int) -> float:
    return (time.perf_counter() - t0) * 1e6 / n


def workloads(root: Path) -> dict[str, float]:
    """The three workloads in `root` (empty); microseconds per operation of each phase."""
    out: dict[str, float] = {}
    names = _tree(root / "walk")
    t0 = time.perf_counter()
    for _ in range(PASSES):
        for p in names:
            os.lstat(p)
    out["stat_walk_us"] = _per_op_us(t0, PASSES * len(names))

    small = root / "small"
    small.mkdir()
    files = [str(small / f"s{i:04}") for i in range(FILES * 10)]
    data = b"y" * SMALL
    t0 = time.perf_counter()
    for p in files:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, data)
        os.close(fd)
    out["create_us"] = _per_op_us(t0, len(files))
    t0 = time.perf_counter()
    for p in files:
        fd = os.open(p, os.O_RDONLY)
        os.read(fd, SMALL)
        os.close(fd)
    out["read_us"] = _per_op_us(t0, len(files))
    t0 = time.perf_counter()
    for p in files:
        os.unlink(p)
    out["unlink_us"] = _per_op_us(t0, len(files))

    links = root / "links"
    links.mkdir()
    pairs = []
    for i in range(FILES):
        a, b = links / f"a{i:03}", links / f"b{i:03}"
        a.write_bytes(b"z")
        os.link(a, b)
        pairs.append((str(a), str(b)))
    t0 = time.perf_counter()
    for first, second in pairs:
        os.chmod(second, 0o600)
        os.lstat(first)
        os.lstat(second)
    out["linked_chmod_stat_us"] = _per_op_us(t0, len(pairs))
    return out


def part_metadata(bench: Bench, args: argparse.Namespace, result: dict[str, Any]) -> None:
    plain = bench.root / "plain-meta"
    plain.mkdir()
    rep = Replica(bench, "meta", "sync")
    samples: list[dict[str, Any]] = []
    result["samples"]["metadata"] = samples
    say(
        f"\n6. metadata: lstat walk of {DIRS * FILES} files x {PASSES}, {FILES * 10} small files "
        f"created/read/unlinked, {FILES} hard-linked pairs chmod+lstat; {args.rounds} rounds"
    )
    for r in range(args.rounds):
        for config in rotated(["direct", "sync"], r):
            sample: dict[str, Any] = {"round": r + 1, "config": config}
            if config == "direct":
                sample |= workloads(plain)
                empty_dir(plain)
            else:
                rep.up()
                mark = rep.marks()
                sample |= workloads(rep.a)
                rep.reconnect_after_drop(sample, mark)
                rep.stop()
                sample["verified"] = verify_replica(rep.a, rep.b, "metadata")
                rep.wipe()
            samples.append(sample)
            say(
                f"  round {r + 1}, {config:6}: "
                + ", ".join(f"{k} {sample[k]:.1f}" for k in METRICS)
            )
    valid = [s for s in samples if "replica_dropped" not in s]
    summary: dict[str, Any] = {}
    for config in ("direct", "sync"):
        summary[config] = {
            k: stats([s[k] for s in valid if s["config"] == config]) for k in METRICS
        }
    summary["ratio"] = {
        k: summary["sync"][k]["median"] / summary["direct"][k]["median"]
        for k in METRICS
        if summary["sync"][k]["n"] and summary["direct"][k]["n"]
    }
    result["summary"]["metadata"] = summary


METRICS = ("stat_walk_us", "create_us", "read_us", "unlink_us", "linked_chmod_stat_us")
