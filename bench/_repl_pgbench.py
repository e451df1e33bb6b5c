"""Part 3 of bench/replication.py: pgbench on PostgreSQL 15 with its data directory in the
replicated directory vs a plain one.

Not a benchmark itself; `python bench/replication.py` finds it next to the script."""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import re
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from _common import MeasureError, stats
from _repl_base import TARGETS, free_port, rotated, say, verify_replica
from _repl_replica import Bench, Replica

PG_BIN = "/usr/lib/postgresql/15/bin"
PG_USER = "postgres"


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
