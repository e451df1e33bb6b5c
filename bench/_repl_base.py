"""What the parts of bench/replication.py share: the constants, small helpers (percentiles,
the rotation of configurations, free ports, CPU time, mounts) and the comparison of a replica
with its primary.

Not a benchmark itself; `python bench/replication.py` finds it next to the script."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import stat
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import MeasureError

MiB = 1024 * 1024
GEN = "g1"  # the data generation the primary gives its secondary after every synchronisation
HOST = "127.0.0.1"
PORTS = range(17400, 17500)
EVENT_TIMEOUT = 30.0  # s, for a replication process to start, stop, connect
SYNC_TIMEOUT = 900.0  # s, for one resynchronisation
TARGETS = {
    "throughput_pct_of_direct": 50.0,
    "latency_p50_ratio": 3.0,
    "pgbench_pct_of_plain": 40.0,
    "resync_sent_pct_of_data": 3.0,
    "resync_time_pct_of_full_copy": 10.0,
}


def say(text: str) -> None:
    print(text, flush=True)


# -- small helpers --------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted sequence."""
    k = max(0, min(len(sorted_values) - 1, round(p / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


def rotated(configs: Sequence[str], r: int) -> list[str]:
    """The order of the configurations in round `r`, rotated every round so that each takes
    every position in turn (two configurations: A B, B A, A B, ...)."""
    k = r % len(configs)
    return list(configs[k:]) + list(configs[:k])


def free_port(taken: set[int]) -> int:
    """A port of PORTS nobody listens on (starting at a place derived from our PID)."""
    start = os.getpid() % len(PORTS)
    for i in range(len(PORTS)):
        port = PORTS[(start + i) % len(PORTS)]
        if port in taken:
            continue
        with socket.socket() as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
        taken.add(port)
        return port
    raise MeasureError(f"no free port in {PORTS.start}-{PORTS.stop - 1}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loadavg() -> list[str]:
    return Path("/proc/loadavg").read_text().split()[:3]


def mounts_under(root: Path) -> list[str]:
    """Mount points at or under `root` (in the order of /proc/self/mountinfo)."""
    prefix = str(root)
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                out.append(point)
    return out


def filesystem_of(path: Path) -> dict[str, str]:
    """Mount point, type and source of the file system holding `path`."""
    best: dict[str, str] = {}
    real = str(path.resolve())
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            point = parts[4]
            sep = parts.index("-")
            if (real == point or real.startswith(point.rstrip("/") + "/")) and len(point) >= len(
                best.get("mount_point", "")
            ):
                best = {"mount_point": point, "type": parts[sep + 1], "source": parts[sep + 2]}
    return best


def empty_dir(d: Path) -> None:
    """Remove everything inside `d` (not `d` itself)."""
    for child in d.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


# -- comparing the replica -------------------------------------------------------------------------


def tree_of(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry under `root` (not `root` itself): type, mode, owner, size, SHA-256 of a
    regular file's content or a symbolic link's target. Times are not compared."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            kind = stat.S_IFMT(st.st_mode)
            what: str | int = ""
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    what = hashlib.file_digest(f, "sha256").hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                what = os.readlink(p)
            out[rel] = (
                kind,
                stat.S_IMODE(st.st_mode),
                st.st_uid,
                st.st_gid,
                st.st_size if kind != stat.S_IFDIR else 0,
                what,
            )
    return out


def verify_replica(a: Path, b: Path, what: str) -> dict[str, Any]:
    """Compare A (the primary's directory, mounted or not) with B; MeasureError if they differ."""
    t0 = time.monotonic()
    ta, tb = tree_of(a), tree_of(b)
    diffs = [
        f"{rel}: primary {ta.get(rel)!r} / secondary {tb.get(rel)!r}"
        for rel in sorted(set(ta) | set(tb))
        if ta.get(rel) != tb.get(rel)
    ]
    if diffs:
        raise MeasureError(
            f"{what}: the secondary's copy differs from the primary's in {len(diffs)} entries "
            f"(of {len(ta)}): " + "; ".join(diffs[:8])
        )
    return {
        "entries": len(ta),
        "bytes": sum(v[4] for v in ta.values() if v[0] == stat.S_IFREG),
        "identical": True,
        "seconds": round(time.monotonic() - t0, 2),
    }
