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
   per GB and RSS growth; ratios TLS / plain;
6. **metadata**: an `lstat` walk of a tree of small files, small files created / read /
   unlinked, and `chmod` + `lstat` of hard-linked pairs (bench/_repl_meta.py); microseconds
   per operation, replicated / direct: what the mount's attribute cache is worth.

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

The parts live next to this script: bench/_repl_base.py (constants, helpers, the comparison of
the replica), _repl_replica.py (the replication processes, the delay proxy), _repl_disk.py (1.
and 2.), _repl_pgbench.py, _repl_resync.py, _repl_channel.py and _repl_report.py (the tables).
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from _common import result_header, run_and_record
from _repl_base import HOST, TARGETS, filesystem_of, free_port, loadavg
from _repl_channel import part_channel
from _repl_disk import LAT_WARMUP, part_latency, part_throughput
from _repl_meta import part_metadata
from _repl_pgbench import PG_BIN, part_pgbench
from _repl_replica import Bench
from _repl_report import print_report
from _repl_resync import part_resync

ACK_TIMEOUT = 0.8  # s: what the daemon uses with the default heartbeat timeout (0.8 x 1.0 s)
PARTS = ("throughput", "latency", "pgbench", "resync", "channel", "metadata")


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
        "metadata": part_metadata,
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
