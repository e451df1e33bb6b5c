"""Synchronous file replication vs the same disk directly, side by side in one run.

    python bench/replication.py [--quick] [--size-mib N] [--rounds N] [--pgbench-seconds S]
                                [--rtt-ms MS]

Replication is driven without the daemon, with `hakit.testing.replication.ReplicatorProcess`:
a secondary replication process listens on 127.0.0.1 and keeps directory B read-only; a
primary mounts its FUSE layer over directory A (A is then "a directory replicated to B"), both
in `sync` mode (or `semi` where said), acknowledgement timeout 0.8 s as the daemon sets it with
the default heartbeat timeout. A, B and the plain directory the replicated figures are compared
with are all under /tmp/hkbench-repl-PID/, on the same disk. Four measurements:

1. **sequential write**: SIZE MiB (default 1024) written in 1 MiB `write()`s, then `fsync`, in
   the replicated directory (sync) and in the plain directory; MB/s and replicated as % of
   direct (the issue's target: >= 50 %);
2. **4 KiB write + fsync latency**: `pwrite` of 4 KiB at increasing offsets then `fsync`, one
   at a time; p50 and p99, replicated (sync and semi) vs direct; ratio of p50s (target: <= 3x);
3. **pgbench**: PostgreSQL 15 with its data directory created by `initdb` inside the
   replicated directory vs a plain one; `pgbench -i -s 10`, then `pgbench -c 4 -j 2 -T S`;
   TPS, replicated as % of plain (target: >= 40 %); skipped with a message without pgbench;
4. **resynchronisation**: a data set (default 256 files of 4 MiB = 1 GiB) copied to an empty
   secondary (the *full copy*); then the secondary leaves, 1 % of the data is rewritten in
   place through the mount, in pieces spread over many files, the secondary comes back and is
   resynchronised from the primary's tracking; also with database-like 8 KiB pieces, without
   usable tracking (full checksum compare), and after the primary's replication process was
   killed (SIGKILL) while alone and restarted. Bytes sent as % of the data set (target: <= 3 %)
   and time as % of the full copy (target: <= 10 %);
5. **channel, TLS vs plain**: the cost of the channel's mutual TLS 1.3 on the same frames, side
   by side: the product's channel (the secondary's listener, TLS, a real replica directory)
   and, as a baseline kept only here, the same Sender/Receiver over plain TCP (what the
   channel was before issue 12). Both ends run in this process (threads): 64 KiB writes
   pipelined (MB/s), 4 KiB writes one at a time (round trip, p50 us); CPU seconds of both ends
   per GB and RSS growth; ratios TLS / plain.

The replicated figures of 1.-4. go over TLS (the product has no plain channel). With
`--rtt-ms MS`, the primary reaches the secondary through `hakit.lab.delay.DelayProxy` (in a
thread of this process, on 127.0.0.1) holding every chunk MS/2 ms each way: a second site MS ms
of round trip away (5. is left as it is: it measures the channel's cost, not the link's).

Configurations alternate (the order rotates every round) and every figure is the median of
several rounds: this machine is shared and has 2 cores. After every replicated run, both
replication processes are stopped (or at least the secondary) and every file of A and B is
compared (type, mode, owner, size, SHA-256, link target): a difference fails the run loudly.
If the primary drops its secondary during a measurement (no acknowledgement within the
timeout), the sample is marked, left out of the medians, and the secondary is reconnected and
resynchronised before the comparison.

Results: tables with medians and ratios (targets are printed, never asserted) and a JSON file
bench/results/replication-TIMESTAMP.json with every sample. The exit status is non-zero only
when something could not be measured (or the replica differed). Every wait is bounded; the
processes started here (replication processes, PostgreSQL) are stopped, then killed by PID;
mounts are removed and the directory is deleted in any case. Needs root. See
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import os
import pwd
import random
import re
import shutil
import socket
import stat
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from _common import MeasureError, result_header, run_and_record, stats

from hakit.lab.delay import DelayProxy
from hakit.replication.apply import Applier
from hakit.replication.channel import Mode, Receiver, Sender, hello, read_hello
from hakit.replication.listener import Listener
from hakit.replication.stream import TlsStream
from hakit.testing.replication import ReplicatorProcess
from hakit.tls import client_context, identity, server_context
from hakit.wire.replication import Kind, Op

MiB = 1024 * 1024
GEN = "g1"  # the data generation the primary gives its secondary after every synchronisation
HOST = "127.0.0.1"
PORTS = range(17400, 17500)
ACK_TIMEOUT = 0.8  # s: what the daemon uses with the default heartbeat timeout (0.8 x 1.0 s)
EVENT_TIMEOUT = 30.0  # s, for a replication process to start, stop, connect
SYNC_TIMEOUT = 900.0  # s, for one resynchronisation
LAT_WARMUP = 50  # write+fsync operations before the measured ones
SUM_BLOCK = 64 * 1024  # the resynchronisation compares and sends blocks of this size
PG_BIN = "/usr/lib/postgresql/15/bin"
PG_USER = "postgres"
PARTS = ("throughput", "latency", "pgbench", "resync", "channel")
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


# -- replication processes -------------------------------------------------------------------------


def wait_event(
    p: ReplicatorProcess,
    name: str,
    after: int,
    timeout: float = EVENT_TIMEOUT,
    fail_on: tuple[str, ...] = ("error",),
) -> dict[str, Any]:
    """The first event `name` at index >= `after`; MeasureError on an event of `fail_on`, on
    the process's exit or after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    seen = after
    while True:
        events = p.events[seen:]
        for ev in events:
            if ev.get("event") == name:
                return ev
            if ev.get("event") in fail_on:
                raise MeasureError(
                    f"{p.role} replication process: {ev} while waiting for {name!r}{stderr_tail(p)}"
                )
        seen += len(events)
        if p.proc.poll() is not None:
            time.sleep(0.1)  # let the reader thread collect the last events
            if not any(ev.get("event") == name for ev in p.events[seen:]):
                raise MeasureError(
                    f"{p.role} replication process exited ({p.proc.returncode}) while waiting "
                    f"for {name!r}; last events {p.events[-5:]}{stderr_tail(p)}"
                )
        if time.monotonic() > deadline:
            raise MeasureError(
                f"{p.role} replication process: no {name!r} within {timeout:g} s; last events "
                f"{p.events[-5:]}{stderr_tail(p)}"
            )
        time.sleep(0.01)


def stderr_tail(p: ReplicatorProcess, lines: int = 8) -> str:
    tail = [line for line in p.stderr if "Ignoring invalid max threads" not in line][-lines:]
    return ("\n--- stderr ---\n" + "\n".join(tail)) if tail else ""


class Bench:
    """Where everything lives (/tmp/hkbench-repl-PID), and what was started (for cleaning up)."""

    def __init__(self, root: Path, ack_timeout: float) -> None:
        self.root = root
        self.ack_timeout = ack_timeout
        self.procs: list[ReplicatorProcess] = []
        self.clusters: list[Postgres] = []
        self.ports: set[int] = set()
        self.port = 0  # the secondary's listener
        self.connect_port = 0  # where the primary connects: the listener or the delay proxy
        self.proxy_stop: Callable[[], None] | None = None

    def start_delay(self, rtt: float) -> None:
        """A DelayProxy (rtt/2 each way) from `connect_port` to the listener, in a thread."""
        import asyncio

        self.connect_port = free_port(self.ports)
        proxy = DelayProxy((HOST, self.connect_port), (HOST, self.port), rtt / 2)
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def serve() -> None:
            loop.run_until_complete(proxy.start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(proxy.close())
            loop.close()

        thread = threading.Thread(target=serve, name="delay-proxy", daemon=True)
        thread.start()
        if not ready.wait(EVENT_TIMEOUT):
            raise MeasureError("the delay proxy did not start")

        def stop() -> None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(EVENT_TIMEOUT)

        self.proxy_stop = stop

    def spawn(self, role: str, path: Path, state: Path, mode: str, **kw: Any) -> ReplicatorProcess:
        p = ReplicatorProcess(
            role,
            [{"path": str(path)}],
            state_dir=str(state),
            mode=mode,
            ack_timeout=self.ack_timeout,
            module="bench",
            **kw,
        )
        self.procs.append(p)
        return p

    def cleanup(self) -> list[str]:
        """Stop PostgreSQL and the replication processes started here, remove the mounts left
        under the root, delete it. Returns warnings (what could not be cleaned)."""
        warnings: list[str] = []
        for c in self.clusters:
            with contextlib.suppress(Exception):
                c.kill()
        for p in self.procs:
            if p.proc.poll() is None:
                with contextlib.suppress(Exception):
                    p.stop(timeout=20)
            if p.proc.poll() is None:
                with contextlib.suppress(Exception):
                    p.kill()
            if p.proc.poll() is None:
                warnings.append(f"replication process {p.proc.pid} did not exit")
        for _ in range(5):
            left = mounts_under(self.root)
            if not left:
                break
            for point in reversed(left):
                subprocess.run(["umount", "-l", point], capture_output=True, check=False)
        left = mounts_under(self.root)
        if left:
            warnings.append(f"mounts left under {self.root}: {left}; not deleting it")
        else:
            shutil.rmtree(self.root, ignore_errors=True)
            if self.root.exists():
                warnings.append(f"could not delete {self.root}")
        return warnings


class Replica:
    """Directory A replicated to B: the secondary process (listening, B read-only) and the
    primary process (FUSE mounted over A)."""

    def __init__(self, bench: Bench, name: str, mode: str) -> None:
        self.bench = bench
        self.mode = mode
        self.a = bench.root / f"{name}-a"
        self.b = bench.root / f"{name}-b"
        self.sa = bench.root / "state" / f"{name}-a"
        self.sb = bench.root / "state" / f"{name}-b"
        for d in (self.a, self.b, self.sa, self.sb):
            d.mkdir(parents=True, exist_ok=True)
        self.primary: ReplicatorProcess | None = None
        self.secondary: ReplicatorProcess | None = None

    def start_secondary(self) -> None:
        assert self.secondary is None
        p = self.bench.spawn(
            "secondary", self.b, self.sb, self.mode, listen=(HOST, self.bench.port)
        )
        self.secondary = p
        wait_event(p, "listening", 0)

    def start_primary(self) -> None:
        assert self.primary is None
        p = self.bench.spawn("primary", self.a, self.sa, self.mode, base=GEN)
        self.primary = p
        wait_event(p, "mounted", 0)

    def up(self) -> dict[str, Any]:
        """Both processes started and the secondary synchronised."""
        self.start_secondary()
        self.start_primary()
        return self.connect("")

    def connect(self, peer_gen: str) -> dict[str, Any]:
        """Connect the primary to the secondary, whose data is generation `peer_gen` ("" =
        unknown); returns once both report `synced`, with what the resynchronisation did."""
        pri, sec = self.primary, self.secondary
        assert pri is not None
        assert sec is not None
        mp, ms = pri.mark(), sec.mark()
        t0 = time.time()
        pri.connect(self.bench.connect_port, peer_gen=peer_gen, my_gen=GEN)
        conn = wait_event(pri, "connected", mp, fail_on=("error", "resync-failed"))
        done = wait_event(
            pri, "synced", mp, timeout=SYNC_TIMEOUT, fail_on=("error", "resync-failed", "alone")
        )
        wait_event(sec, "synced", ms, fail_on=("error", "lost"))
        return {
            "peer_gen": peer_gen,
            "trust": conn.get("trust"),
            "why": conn.get("why"),
            "seconds": done["at"] - t0,  # command -> the primary's `synced` (its own clock)
            "resync_elapsed_s": done.get("elapsed"),
            "bytes_sent": done.get("bytes_sent"),
            "bytes_compared": done.get("bytes_total"),
            "files_compared": done.get("files_total"),
            "entries_fixed": done.get("entries_fixed"),
            "passes": done.get("pass"),
            "full_compare": done.get("full_compare"),
        }

    def marks(self) -> tuple[int, int]:
        """Where the event lists of (primary, secondary) are now (see `dropped_since`)."""
        assert self.primary is not None
        assert self.secondary is not None
        return self.primary.mark(), self.secondary.mark()

    def dropped_since(self, marks: tuple[int, int]) -> str | None:
        """The reason the primary gave for going alone since `marks`, if it did."""
        assert self.primary is not None
        for ev in self.primary.events[marks[0] :]:
            if ev.get("event") == "alone":
                return str(ev.get("reason"))
        return None

    def cpu(self) -> tuple[float, float]:
        assert self.primary is not None
        assert self.secondary is not None
        return cpu_seconds(self.primary.proc.pid), cpu_seconds(self.secondary.proc.pid)

    def stop_secondary(self) -> None:
        sec = self.secondary
        assert sec is not None
        mp = self.primary.mark() if self.primary is not None else 0
        ms = sec.mark()
        sec.stop(timeout=EVENT_TIMEOUT)
        self.secondary = None
        wait_event(sec, "stopped", ms)
        if self.primary is not None and self.primary.proc.poll() is None:
            wait_event(self.primary, "alone", mp)
        if str(self.b) in mounts_under(self.b):
            raise MeasureError(f"{self.b} is still mounted after the secondary stopped")

    def stop_primary(self) -> None:
        pri = self.primary
        assert pri is not None
        m = pri.mark()
        pri.stop(timeout=EVENT_TIMEOUT)
        self.primary = None
        wait_event(pri, "stopped", m)
        if str(self.a) in mounts_under(self.a):
            raise MeasureError(f"{self.a} is still mounted after the primary stopped")

    def stop(self) -> None:
        if self.primary is not None:
            self.stop_primary()
        if self.secondary is not None:
            self.stop_secondary()

    def crash_primary(self) -> None:
        """SIGKILL the primary's replication process (its FUSE mount is left dead), then
        `umount -l` the dead mount, as a restart after a crash would."""
        pri = self.primary
        assert pri is not None
        pri.kill()
        self.primary = None
        r = subprocess.run(
            ["umount", "-l", str(self.a)], capture_output=True, text=True, check=False
        )
        if r.returncode != 0 or str(self.a) in mounts_under(self.a):
            raise MeasureError(f"umount -l {self.a} after the crash: {r.stderr.strip()}")

    def wipe(self) -> None:
        """Both stopped: empty A, B and both state directories."""
        assert self.primary is None
        assert self.secondary is None
        for d in (self.a, self.b, self.sa, self.sb):
            empty_dir(d)

    def reconnect_after_drop(self, sample: dict[str, Any], marks: tuple[int, int]) -> None:
        """If the primary dropped its secondary since `marks`, mark the sample invalid and
        resynchronise (so that the comparison of A and B still means something)."""
        reason = self.dropped_since(marks)
        if reason is None:
            return
        sample["replica_dropped"] = reason
        say(f"    the primary dropped its secondary during the measurement: {reason}")
        assert self.secondary is not None
        # the secondary may still be busy with the dropped stream (in its fsync): it serves
        # one primary at a time, so wait until it has seen that stream end
        wait_event(self.secondary, "lost", marks[1], timeout=SYNC_TIMEOUT)
        sample["resync_after_drop"] = self.connect(GEN)


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


# -- 3. pgbench ------------------------------------------------------------------------------------


class Postgres:
    """A PostgreSQL cluster run as the `postgres` user, with its socket in our directory."""

    def __init__(self, bench: Bench, data: Path, name: str, port: int) -> None:
        self.bench = bench
        self.data = data
        self.name = name
        self.port = port
        self.run_dir = bench.root / "pg-run"  # sockets and logs, owned by postgres
        self.log = self.run_dir / f"{name}.log"
        bench.clusters.append(self)

    def cmd(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            ["runuser", "-u", PG_USER, "--", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd="/",
            check=False,
        )
        if r.returncode != 0:
            raise MeasureError(
                f"{self.name}: `{' '.join(argv)}` exited {r.returncode}: "
                f"{(r.stderr or r.stdout).strip()[-2000:]}{self.log_tail()}"
            )
        return r

    def log_tail(self) -> str:
        try:
            tail = self.log.read_text(errors="replace").splitlines()[-10:]
        except OSError:
            return ""
        return f"\n--- {self.log} ---\n" + "\n".join(tail)

    def initdb(self) -> float:
        t0 = time.monotonic()
        self.cmd(
            [
                f"{PG_BIN}/initdb",
                "-D",
                str(self.data),
                "-U",
                PG_USER,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
            ],
            timeout=600,
        )
        return time.monotonic() - t0

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.run_dir} -c listen_addresses=''"
        self.cmd(
            [
                f"{PG_BIN}/pg_ctl",
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-w",
                "-t",
                "120",
                "-o",
                opts,
                "start",
            ],
            timeout=180,
        )

    def stop(self) -> None:
        self.cmd(
            [f"{PG_BIN}/pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "120", "stop"],
            timeout=180,
        )

    def pgbench(self, extra: list[str], timeout: float) -> str:
        r = self.cmd(
            [f"{PG_BIN}/pgbench", "-h", str(self.run_dir), "-p", str(self.port), *extra, PG_USER],
            timeout=timeout,
        )
        return r.stdout + r.stderr

    def kill(self) -> None:
        """Cleaning up: stop it if it runs (immediate), else SIGKILL the postmaster by PID."""
        pidfile = self.data / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        with contextlib.suppress(Exception):
            subprocess.run(
                [
                    "runuser",
                    "-u",
                    PG_USER,
                    "--",
                    f"{PG_BIN}/pg_ctl",
                    "-D",
                    str(self.data),
                    "-m",
                    "immediate",
                    "-w",
                    "-t",
                    "30",
                    "stop",
                ],
                capture_output=True,
                timeout=60,
                check=False,
            )
        with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"postgres" in f.read():
                os.kill(pid, 9)


def pgbench_missing() -> str | None:
    for tool in ("initdb", "pg_ctl", "pgbench", "postgres"):
        if not os.access(f"{PG_BIN}/{tool}", os.X_OK):
            return f"{PG_BIN}/{tool} is missing (PostgreSQL 15 is not installed)"
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        return f"there is no user {PG_USER!r}"
    if not shutil.which("runuser"):
        return "runuser is missing"
    return None


def part_pgbench(bench: Bench, args: argparse.Namespace, result: dict[str, Any]) -> None:
    missing = pgbench_missing()
    title = (
        f"\n3. pgbench: -i -s {args.pgbench_scale}, then -c 4 -j 2 -T {args.pgbench_seconds}, "
        f"{args.pgbench_runs} runs each"
    )
    if missing:
        say(f"{title}\n  skipped: {missing}")
        result["summary"]["pgbench"] = {"skipped": missing}
        return
    say(title)
    pg = pwd.getpwnam(PG_USER)
    run_dir = bench.root / "pg-run"
    plain = bench.root / "pg-plain"
    rep = Replica(bench, "pg", "sync")
    for d in (run_dir, plain, rep.a):
        d.mkdir(exist_ok=True)
        os.chown(d, pg.pw_uid, pg.pw_gid)
    rep.up()
    port = free_port(bench.ports)
    clusters = {
        "plain": Postgres(bench, plain / "data", "plain", port),
        "sync": Postgres(bench, rep.a / "data", "replicated", port),
    }
    setup: dict[str, dict[str, float]] = {}
    samples: list[dict[str, Any]] = []
    result["samples"]["pgbench"] = {"setup": setup, "runs": samples}
    mark = rep.marks()
    for config, c in clusters.items():
        os.sync()
        initdb = c.initdb()
        c.start()
        t0 = time.monotonic()
        c.pgbench(["-i", "-q", "-s", str(args.pgbench_scale)], timeout=1800)
        init = time.monotonic() - t0
        c.stop()
        setup[config] = {"initdb_s": initdb, "pgbench_init_s": init}
        say(f"  {config:6}: initdb {initdb:5.1f} s, pgbench -i {init:5.1f} s")
    if (reason := rep.dropped_since(mark)) is not None:
        raise MeasureError(f"the primary dropped its secondary during the setup: {reason}")
    tps_re = re.compile(r"tps = ([0-9.]+) \(without initial connection time\)")
    for r in range(args.pgbench_runs):
        for config in rotated(["plain", "sync"], r):
            c = clusters[config]
            c.start()
            os.sync()
            mark = rep.marks()
            out = c.pgbench(
                ["-c", "4", "-j", "2", "-T", str(args.pgbench_seconds)],
                timeout=args.pgbench_seconds + 600,
            )
            c.stop()
            m = tps_re.search(out)
            if m is None:
                raise MeasureError(f"{config}: no TPS in pgbench's output: {out[-1000:]}")
            sample: dict[str, Any] = {"round": r + 1, "config": config, "tps": float(m.group(1))}
            if config == "sync":
                rep.reconnect_after_drop(sample, mark)
            samples.append(sample)
            dropped = " (secondary dropped: not counted)" if "replica_dropped" in sample else ""
            say(f"  run {r + 1}, {config:6}: {sample['tps']:8.1f} TPS{dropped}")
    rep.stop()
    result["samples"]["pgbench"]["verified"] = verify_replica(rep.a, rep.b, "pgbench")
    valid = [s for s in samples if "replica_dropped" not in s]
    plain_tps = [s["tps"] for s in valid if s["config"] == "plain"]
    sync_tps = [s["tps"] for s in valid if s["config"] == "sync"]
    result["summary"]["pgbench"] = {
        "plain_tps": stats(plain_tps),
        "sync_tps": stats(sync_tps),
        "pct_of_plain": statistics.median(sync_tps) / statistics.median(plain_tps) * 100
        if sync_tps and plain_tps
        else None,
        "setup": setup,
        "dropped": len(samples) - len(valid),
        "dropped_reasons": sorted(
            {s["replica_dropped"] for s in samples if "replica_dropped" in s}
        ),
        "target_pct": TARGETS["pgbench_pct_of_plain"],
    }


# -- 4. resynchronisation --------------------------------------------------------------------------


def make_data_set(root: Path, files: int, file_mib: int) -> list[str]:
    """`files` files of random data, 16 per subdirectory; their relative paths."""
    names = []
    for i in range(files):
        rel = f"d{i // 16:03d}/f{i:04d}"
        p = root / rel
        p.parent.mkdir(exist_ok=True)
        with open(p, "wb") as f:
            for _ in range(file_mib):
                f.write(os.urandom(MiB))
        names.append(rel)
    os.sync()
    return names


def change_data(
    root: Path, names: list[str], file_size: int, fraction: float, piece: int, rng: random.Random
) -> dict[str, Any]:
    """Rewrite `fraction` of the data set in place: pieces of `piece` bytes at random 4 KiB
    aligned offsets of randomly chosen files, then fsync every file touched."""
    total = len(names) * file_size
    n = max(1, round(total * fraction / piece))
    where: dict[str, list[int]] = {}
    for _ in range(n):
        rel = rng.choice(names)
        where.setdefault(rel, []).append(rng.randrange(0, (file_size - piece) // 4096 + 1) * 4096)
    blocks: set[tuple[str, int]] = set()
    t0 = time.monotonic()
    for rel, offsets in where.items():
        fd = os.open(root / rel, os.O_WRONLY | os.O_CLOEXEC)
        try:
            for off in offsets:
                os.pwrite(fd, rng.randbytes(piece), off)
                blocks.update(
                    (rel, b) for b in range(off // SUM_BLOCK, (off + piece - 1) // SUM_BLOCK + 1)
                )
            os.fsync(fd)
        finally:
            os.close(fd)
    return {
        "pieces": n,
        "piece_bytes": piece,
        "bytes_written": n * piece,
        "files_touched": len(where),
        "blocks_64k_touched": len(blocks),  # the least a 64 KiB-block resync must send
        "seconds": time.monotonic() - t0,
    }


RESYNC_CASES = (
    ("full", "full copy to an empty secondary"),
    ("tracked", "secondary away, tracked (64 KiB pieces)"),
    ("tracked_8k", "secondary away, tracked (8 KiB pieces)"),
    ("untracked", "secondary away, no usable tracking"),
    ("crash", "primary killed while alone, tracked"),
)


def part_resync(bench: Bench, args: argparse.Namespace, result: dict[str, Any]) -> None:
    rep = Replica(bench, "rs", "sync")
    file_size = args.resync_file_mib * MiB
    total = args.resync_files * file_size
    rng = random.Random(args.seed)
    samples: list[dict[str, Any]] = []
    result["samples"]["resync"] = samples
    say(
        f"\n4. resynchronisation: {args.resync_files} files x {args.resync_file_mib} MiB "
        f"= {total / MiB:.0f} MiB, 1 % rewritten while the secondary is away, "
        f"{args.resync_rounds} rounds"
    )
    t0 = time.monotonic()
    names = make_data_set(rep.a, args.resync_files, args.resync_file_mib)
    say(f"  data set written in {time.monotonic() - t0:.1f} s")

    def record(r: int, case: str, label: str, sync: dict[str, Any], **more: Any) -> None:
        sample = {"round": r + 1, "case": case, **sync, **more}
        samples.append(sample)
        say(
            f"  round {r + 1}, {label:42}: sent {sync['bytes_sent'] / MiB:8.1f} MiB "
            f"({sync['bytes_sent'] / total * 100:6.2f} %) in {sync['seconds']:6.2f} s"
            f"{'' if sync['trust'] else ' [full compare]'}"
        )

    def away(
        piece: int, crash: bool = False
    ) -> tuple[dict[str, Any], dict[str, Any]]:  # -> (verification, change)
        rep.stop_secondary()
        verified = verify_replica(rep.a, rep.b, "resynchronisation")
        change = change_data(rep.a, names, file_size, 0.01, piece, rng)
        if crash:
            rep.crash_primary()
            rep.start_primary()
        rep.start_secondary()
        return verified, change

    labels = dict(RESYNC_CASES)
    for r in range(args.resync_rounds):
        if r:
            rep.stop()
            verify_replica(rep.a, rep.b, "resynchronisation")
            empty_dir(rep.b)
            empty_dir(rep.sb)
        os.sync()
        rep.start_secondary()
        if rep.primary is None:
            rep.start_primary()
        record(r, "full", labels["full"], rep.connect(""))
        for case, piece, gen, crash in (
            ("tracked", 64 * 1024, GEN, False),
            ("tracked_8k", 8 * 1024, GEN, False),
            ("untracked", 64 * 1024, "", False),
            ("crash", 64 * 1024, GEN, True),
        ):
            verified, change = away(piece, crash)
            samples[-1]["verified_after"] = verified
            os.sync()
            record(r, case, labels[case], rep.connect(gen), change=change)
    rep.stop()
    samples[-1]["verified_after"] = verify_replica(rep.a, rep.b, "resynchronisation")

    summary: dict[str, Any] = {
        "data_set_bytes": total,
        "files": args.resync_files,
        "targets": {
            "sent_pct_of_data": TARGETS["resync_sent_pct_of_data"],
            "time_pct_of_full_copy": TARGETS["resync_time_pct_of_full_copy"],
        },
    }
    full_by_round = {s["round"]: s["seconds"] for s in samples if s["case"] == "full"}
    for case, _ in RESYNC_CASES:
        mine = [s for s in samples if s["case"] == case]
        summary[case] = {
            "seconds": stats([s["seconds"] for s in mine]),
            "bytes_sent": stats([s["bytes_sent"] for s in mine]),
            "sent_pct_of_data": statistics.median(s["bytes_sent"] / total * 100 for s in mine),
            "time_pct_of_full_copy": statistics.median(
                s["seconds"] / full_by_round[s["round"]] * 100 for s in mine
            ),
            "trusted": [s["trust"] for s in mine],
        }
        if mine and "change" in mine[0]:
            summary[case]["change"] = {
                k: statistics.median(s["change"][k] for s in mine)
                for k in ("pieces", "bytes_written", "files_touched", "blocks_64k_touched")
            }
    result["summary"]["resync"] = summary


# -- report ----------------------------------------------------------------------------------------


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else "met" if ok else "NOT met"


def print_report(result: dict[str, Any]) -> None:
    s = result["summary"]
    st = result["settings"]
    src = result["hakit_source"]
    dirty = " with uncommitted changes" if src.get("uncommitted_changes") else ""
    start, end = result["machine"]["loadavg_at_start"], st.get("loadavg_at_end", [])
    say(
        f"\nReplication benchmark: hakit {(src.get('commit') or '?')[:10]}{dirty} "
        f"({src.get('path')}), load average at start {' '.join(start)}, at end {' '.join(end)}"
    )
    if st.get("added_rtt_ms"):
        say(f"  primary -> secondary through a delay proxy: +{st['added_rtt_ms']:g} ms round trip")
    if float(start[0]) > 1.0:  # at the end, the load is also the benchmark's own
        say("  the machine was busy at the start (load average > 1): expect noisy figures")
    if "throughput" in s:
        report_throughput(s["throughput"], st)
    if "latency" in s:
        report_latency(s["latency"], st)
    if "pgbench" in s:
        report_pgbench(s["pgbench"], st)
    if "resync" in s:
        report_resync(s["resync"], st)
    if "channel" in s:
        report_channel(s["channel"], st)


def report_throughput(t: dict[str, Any], st: dict[str, Any]) -> None:
    say(f"\n1. Sequential write, {st['size_mib']} MiB in 1 MiB writes + fsync (MB/s)")
    say(f"  {'configuration':28} {'runs':>4} {'median':>8} {'min':>8} {'max':>8}")
    for key, label in (
        ("direct_mb_per_s", "direct (same disk)"),
        ("sync_mb_per_s", "replicated, sync"),
    ):
        v = t[key]
        if v["n"]:
            say(f"  {label:28} {v['n']:4} {v['median']:8.1f} {v['min']:8.1f} {v['max']:8.1f}")
    pct = t["pct_of_direct"]
    if pct is not None:
        rounds = ", ".join(f"{x:.0f}" for x in t["pct_of_direct_per_round"])
        say(
            f"  replicated / direct: {pct:.1f} % (medians; per round: {rounds} %); "
            f"target >= {t['target_pct']:.0f} %: {verdict(pct >= t['target_pct'])}"
        )
    prim, sec = t["cpu_primary_ms_per_mib"], t["cpu_secondary_ms_per_mib"]
    if prim["n"]:
        say(
            f"  CPU per MiB written: primary's replication process {prim['median']:.2f} ms, "
            f"secondary's {sec['median']:.2f} ms"
        )
    if t["dropped"]:
        d = t["dropped_sync_mb_per_s"]
        say(
            f"  {t['dropped']} of {t['dropped'] + t['sync_mb_per_s']['n']} replicated runs lost "
            f"the secondary ({'; '.join(t['dropped_reasons'])}): not counted; they wrote at "
            f"{d['median']:.1f} MB/s (median), the end of it unreplicated until the resync"
        )


def report_latency(lt: dict[str, Any], st: dict[str, Any]) -> None:
    say(
        f"\n2. 4 KiB pwrite + fsync latency, {st['lat_ops']} ops x {st['rounds']} rounds "
        "(microseconds, medians of the rounds)"
    )
    say(
        f"  {'configuration':28} {'p50':>8} {'p99':>8} {'p50 x':>7} {'p99 x':>7}"
        f" {'CPU/op: primary':>16} {'secondary':>10}"
    )
    for config, label in (
        ("direct", "direct (same disk)"),
        ("sync", "replicated, sync"),
        ("semi", "replicated, semi"),
    ):
        c = lt[config]
        if not c["p50_us"]["n"]:
            continue
        line = f"  {label:28} {c['p50_us']['median']:8.0f} {c['p99_us']['median']:8.0f}"
        if c.get("p50_ratio") is not None:
            line += f" {c['p50_ratio']:6.2f}x {c['p99_ratio']:6.2f}x"
            prim, sec = c["cpu_primary_us_per_op"], c["cpu_secondary_us_per_op"]
            line += f" {prim['median']:13.0f} us {sec['median']:7.0f} us"
        say(line)
    for config in ("sync", "semi"):
        ratio = lt[config].get("p50_ratio")
        if ratio is not None:
            rounds = ", ".join(f"{x:.2f}" for x in lt[config]["p50_ratio_per_round"])
            target = lt["target_p50_ratio"]
            say(
                f"  {config} / direct, p50: {ratio:.2f}x (per round: {rounds}); "
                f"target <= {target:g}x: {verdict(ratio <= target)}"
            )
    say_dropped(lt)


def say_dropped(part: dict[str, Any]) -> None:
    if part["dropped"]:
        why = "; ".join(part["dropped_reasons"])
        say(f"  {part['dropped']} run(s) lost the secondary ({why}): not counted")


def report_pgbench(pg: dict[str, Any], st: dict[str, Any]) -> None:
    say(f"\n3. pgbench, scale {st['pgbench_scale']}, -c 4 -j 2 -T {st['pgbench_seconds']} (TPS)")
    if "skipped" in pg:
        say(f"  skipped: {pg['skipped']}")
        return
    say(
        f"  {'configuration':28} {'runs':>4} {'median':>8} {'min':>8} {'max':>8} "
        f"{'initdb s':>9} {'-i s':>6}"
    )
    for key, config, label in (
        ("plain_tps", "plain", "plain data directory"),
        ("sync_tps", "sync", "replicated, sync"),
    ):
        v, su = pg[key], pg["setup"][config]
        if v["n"]:
            say(
                f"  {label:28} {v['n']:4} {v['median']:8.1f} {v['min']:8.1f} "
                f"{v['max']:8.1f} {su['initdb_s']:9.1f} {su['pgbench_init_s']:6.1f}"
            )
    pct = pg["pct_of_plain"]
    if pct is not None:
        say(
            f"  replicated / plain: {pct:.1f} % (medians); target >= "
            f"{pg['target_pct']:.0f} %: {verdict(pct >= pg['target_pct'])}"
        )
    say_dropped(pg)


def report_resync(rs: dict[str, Any], st: dict[str, Any]) -> None:
    tg = rs["targets"]
    total = rs["data_set_bytes"]
    say(
        f"\n4. Resynchronisation, data set {total / MiB:.0f} MiB in {rs['files']} files, "
        f"{st['resync_rounds']} round(s) (medians)"
    )
    say(f"  {'case':42} {'sent MiB':>9} {'% data':>7} {'time s':>7} {'% full':>7}  compared")
    for case, label in RESYNC_CASES:
        c = rs[case]
        compared = "tracked regions" if all(c["trusted"]) else "everything, by checksums"
        if case == "full":
            compared = "nothing (empty secondary)"
        say(
            f"  {label:42} {c['bytes_sent']['median'] / MiB:9.1f} "
            f"{c['sent_pct_of_data']:7.2f} {c['seconds']['median']:7.2f} "
            f"{c['time_pct_of_full_copy']:7.1f}  {compared}"
        )
    for case in ("tracked", "tracked_8k"):
        ch = rs[case].get("change")
        if ch:
            least = ch["blocks_64k_touched"] * SUM_BLOCK / total * 100
            say(
                f"  {case}: 1 % rewritten = {ch['pieces']:.0f} pieces in "
                f"{ch['files_touched']:.0f} files, touching {ch['blocks_64k_touched']:.0f} "
                f"blocks of 64 KiB = {least:.2f} % of the data (the least a resync by "
                "64 KiB blocks can send)"
            )
    for case in ("tracked", "crash"):
        c = rs[case]
        sent, spent = c["sent_pct_of_data"], c["time_pct_of_full_copy"]
        say(
            f"  {dict(RESYNC_CASES)[case]}: sent {sent:.2f} % of the data (target <= "
            f"{tg['sent_pct_of_data']:g} %: {verdict(sent <= tg['sent_pct_of_data'])}), "
            f"time {spent:.1f} % of the full copy (target <= "
            f"{tg['time_pct_of_full_copy']:g} %: {verdict(spent <= tg['time_pct_of_full_copy'])})"
        )


# -- 5. the channel: TLS vs plain TCP on the same frames -------------------------------------------

CHANNEL_SECRET = b"bench" * 8
CHANNEL_WINDOW = 32  # 64 KiB writes in flight


class Channel:
    """A Sender and a Receiver applying to a real directory, over TLS (the product) or plain
    TCP (the baseline, only here)."""

    def __init__(self, root: Path, tls: bool) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        self.receiver = Receiver("bench", Applier([self.fd]), Mode.SYNC)
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        primary = identity(CHANNEL_SECRET, "bench", "node1")
        if tls:
            self.listener: Listener | None = Listener(
                (HOST, 0),
                server_context(identity(CHANNEL_SECRET, "bench", "node2")),
                "bench",
                "node1",
                [HOST],
                self._session,
                lambda peer, why, n: say(f"  channel: refused {peer}: {why}"),
            )
            self._start(self.listener.serve, self.stop)
            ctx = client_context(primary)
            name = primary.server_name("node2")
            self.sender = Sender.connect(HOST, self.listener.port, "bench", ctx, name, 10.0)
            return
        self.listener = None
        self.server = socket.create_server((HOST, 0))
        self._start(self._plain)
        sock = socket.create_connection(self.server.getsockname()[:2], timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(hello("bench"))
        if sock.recv(2) != b"Y\x00":
            raise MeasureError("plain channel: no welcome")
        self.sender = Sender(sock, 10.0)
        self._start(self.sender._read)

    def _start(self, target: Callable[..., None], *args: Any) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        t.start()
        self.threads.append(t)

    def _session(self, conn: TlsStream, peer: str, module: str) -> None:
        if self.receiver.welcome(conn, module):
            self.receiver.serve(conn, self.stop)

    def _plain(self) -> None:
        conn, _ = self.server.accept()
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            module = read_hello(conn, time.monotonic() + 10)
            if self.receiver.welcome(conn, module):
                self.receiver.serve(conn, self.stop)

    def close(self) -> None:
        self.sender.close("benchmark over")
        self.stop.set()
        if self.listener is not None:
            self.listener.close()
        else:
            self.server.close()
        for t in self.threads:
            t.join(15)
        self.receiver.applier.forget()
        os.close(self.fd)


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def channel_run(root: Path, tls: bool, mib: int, small_ops: int) -> dict[str, Any]:
    rss0 = _rss_kib()
    ch = Channel(root, tls)
    try:
        s = ch.sender
        if s.send(Op(Kind.CREATE, 0, (0o644, -1, -1), (b"0/big",))) != 0:
            raise MeasureError("channel: CREATE failed on the replica")
        block = os.urandom(64 * 1024)
        n = mib * 16
        cpu0, t0 = time.process_time(), time.perf_counter()
        window: list[int] = []
        for i in range(n):
            window.append(s.submit(Op(Kind.WRITE, 0, (i * len(block),), (b"0/big", block))))
            if len(window) >= CHANNEL_WINDOW and s.wait(window.pop(0)).ints[0]:
                raise MeasureError("channel: a write failed on the replica")
        for q in window:
            s.wait(q)
        secs, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        small = os.urandom(4096)
        lat: list[float] = []
        for i in range(small_ops):
            t = time.perf_counter()
            s.send(Op(Kind.WRITE, 0, (i * 4096,), (b"0/big", small)))
            lat.append((time.perf_counter() - t) * 1e6)
        lat.sort()
        return {
            "tls": tls,
            "stream_mb_per_s": n * len(block) / secs / 1e6,
            "cpu_s_per_gb": cpu / (n * len(block) / 1e9),
            "small_p50_us": percentile(lat, 50),
            "small_p99_us": percentile(lat, 99),
            "rss_growth_mib": (_rss_kib() - rss0) / 1024,
        }
    finally:
        ch.close()
        shutil.rmtree(root, ignore_errors=True)


def part_channel(bench: Bench, args: argparse.Namespace, result: dict[str, Any]) -> None:
    mib = max(16, args.size_mib // 4)
    small_ops = args.lat_ops * 2
    say(f"5. channel: TLS vs plain TCP, {mib} MiB in 64 KiB writes, {small_ops} 4 KiB writes")
    samples: list[dict[str, Any]] = []
    for r in range(args.rounds):
        for config in rotated(["tls", "plain"], r):
            sample = channel_run(bench.root / f"channel-{config}", config == "tls", mib, small_ops)
            sample["round"] = r
            samples.append(sample)
            say(
                f"  round {r + 1} {config:5}: {sample['stream_mb_per_s']:7.0f} MB/s, "
                f"{sample['cpu_s_per_gb']:5.2f} CPU s/GB, "
                f"4 KiB p50 {sample['small_p50_us']:5.0f} us"
            )
    result["samples"]["channel"] = samples
    summary: dict[str, Any] = {"mib": mib, "small_ops": small_ops}
    keys = ("stream_mb_per_s", "cpu_s_per_gb", "small_p50_us", "small_p99_us", "rss_growth_mib")
    for config in ("tls", "plain"):
        mine = [x for x in samples if x["tls"] == (config == "tls")]
        summary[config] = {k: stats([x[k] for x in mine]) for k in keys}
    for k in keys:
        plain = summary["plain"][k]["median"]
        summary[f"{k}_ratio"] = summary["tls"][k]["median"] / plain if plain else None
    result["summary"]["channel"] = summary


def report_channel(c: dict[str, Any], st: dict[str, Any]) -> None:
    say(
        f"\n5. Channel: mutual TLS 1.3 vs plain TCP (baseline, bench only), same frames; "
        f"{c['mib']} MiB in 64 KiB writes ({CHANNEL_WINDOW} in flight), {c['small_ops']} "
        "4 KiB writes one at a time; both ends in this process"
    )
    say(f"  {'':28} {'TLS':>9} {'plain':>9} {'TLS/plain':>10}")
    for key, label, fmt in (
        ("stream_mb_per_s", "64 KiB stream, MB/s", "{:9.0f}"),
        ("cpu_s_per_gb", "CPU s per GB (both ends)", "{:9.2f}"),
        ("small_p50_us", "4 KiB round trip p50, us", "{:9.0f}"),
        ("small_p99_us", "4 KiB round trip p99, us", "{:9.0f}"),
        ("rss_growth_mib", "RSS growth, MiB", "{:9.1f}"),
    ):
        tls, plain, ratio = c["tls"][key]["median"], c["plain"][key]["median"], c[f"{key}_ratio"]
        ratio_text = f"{ratio:9.2f}x" if ratio is not None else "        -"
        say(f"  {label:28} {fmt.format(tls)} {fmt.format(plain)} {ratio_text}")


# -- main ------------------------------------------------------------------------------------------


def run(args: argparse.Namespace, result: dict[str, Any]) -> None:
    root = Path(f"/tmp/hkbench-repl-{os.getpid()}")
    root.mkdir(mode=0o755)
    bench = Bench(root, args.ack_timeout)
    result["settings"]["directory"] = str(root)
    result["settings"]["filesystem"] = filesystem_of(root)
    parts: dict[str, Callable[[Bench, argparse.Namespace, dict[str, Any]], None]] = {
        "throughput": part_throughput,
        "latency": part_latency,
        "pgbench": part_pgbench,
        "resync": part_resync,
        "channel": part_channel,
    }
    try:
        bench.port = bench.connect_port = free_port(bench.ports)
        result["settings"]["replication_port"] = bench.port
        if args.rtt_ms > 0:
            bench.start_delay(args.rtt_ms / 1000)
        for name, part in parts.items():
            if name in args.skip:
                continue
            part(bench, args, result)
    finally:
        result["settings"]["loadavg_at_end"] = loadavg()
        warnings = bench.cleanup()
        if bench.proxy_stop is not None:
            bench.proxy_stop()
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr)
        result["settings"]["cleanup_warnings"] = warnings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Synchronous file replication vs the same disk directly (side by side)."
    )
    parser.add_argument(
        "--quick", action="store_true", help="a 1-2 minute smoke run (smaller sizes, 1-2 rounds)"
    )
    parser.add_argument("--size-mib", type=int, help="sequential write size (1024; quick 128)")
    parser.add_argument("--rounds", type=int, help="rounds of 1. and 2. (3; quick 2)")
    parser.add_argument(
        "--lat-ops", type=int, help="measured write+fsync per run (1000; quick 200)"
    )
    parser.add_argument("--pgbench-seconds", type=int, help="-T of each pgbench run (20; quick 5)")
    parser.add_argument(
        "--pgbench-runs", type=int, help="pgbench runs per configuration (2; quick 1)"
    )
    parser.add_argument("--pgbench-scale", type=int, default=10, help="pgbench -i -s (10)")
    parser.add_argument("--resync-files", type=int, help="files in the data set (256; quick 32)")
    parser.add_argument("--resync-file-mib", type=int, default=4, help="size of each file (4)")
    parser.add_argument("--resync-rounds", type=int, help="resynchronisation rounds (2; quick 1)")
    parser.add_argument(
        "--ack-timeout",
        type=float,
        default=ACK_TIMEOUT,
        help=f"replication acknowledgement timeout in s ({ACK_TIMEOUT}, as the daemon's default)",
    )
    parser.add_argument(
        "--skip", action="append", default=[], choices=PARTS, help="leave a part out (repeatable)"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of the data changes")
    parser.add_argument(
        "--rtt-ms",
        type=float,
        default=0.0,
        help="round-trip time added between primary and secondary (a delay proxy; 0: none)",
    )
    args = parser.parse_args(argv)
    defaults = {
        "size_mib": (1024, 128),
        "rounds": (3, 2),
        "lat_ops": (1000, 200),
        "pgbench_seconds": (20, 5),
        "pgbench_runs": (2, 1),
        "resync_files": (256, 32),
        "resync_rounds": (2, 1),
    }
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(2**32)
    if os.geteuid() != 0:
        print("bench/replication.py needs root (FUSE mounts, bind mounts)", file=sys.stderr)
        return 1

    started = datetime.datetime.now(datetime.UTC)
    result: dict[str, Any] = {
        **result_header("replication", started),
        "settings": {
            "quick": args.quick,
            "size_mib": args.size_mib,
            "rounds": args.rounds,
            "lat_ops": args.lat_ops,
            "lat_warmup": LAT_WARMUP,
            "pgbench_scale": args.pgbench_scale,
            "pgbench_seconds": args.pgbench_seconds,
            "pgbench_runs": args.pgbench_runs,
            "pgbench_clients": "-c 4 -j 2",
            "postgresql_bin": PG_BIN,
            "resync_files": args.resync_files,
            "resync_file_mib": args.resync_file_mib,
            "resync_rounds": args.resync_rounds,
            "resync_change": "1 % of the data set, in pieces at random 4 KiB-aligned offsets "
            "of random files, through the mount while the secondary is away",
            "ack_timeout_s": args.ack_timeout,
            "transport": f"TCP loopback ({HOST})",
            "added_rtt_ms": args.rtt_ms,
            "skipped_parts": args.skip,
            "seed": args.seed,
            "targets": TARGETS,
        },
        "samples": {},
        "summary": {},
        "error": None,
    }
    return run_and_record("replication", started, result, lambda: run(args, result), print_report)


if __name__ == "__main__":
    sys.exit(main())
