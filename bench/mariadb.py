"""MariaDB on a replicated data directory vs a plain one, side by side in one run (sysbench).

    python bench/mariadb.py [--quick] [--seconds S] [--runs N] [--threads N] [--tables N]
                            [--table-size N] [--workload oltp_write_only]

What the `mariadb` template costs: two MariaDB servers, each started and stopped by the
template's own scripts (`src/hakit/templates/mariadb/bin/start_prim`, `stop_prim`: the same
command line, with the durable InnoDB settings: `innodb_flush_log_at_trx_commit=1`,
`sync_binlog=1`, `innodb_doublewrite=1`, `innodb_flush_method=fsync`), Debian's
/etc/mysql/my.cnf, no TCP (`--skip-networking`: sysbench uses the socket):

- **plain**: its datadir in a plain directory;
- **replicated**: its datadir inside a directory replicated in `sync` mode
  (`hakit.testing.replication.ReplicatorProcess`, as bench/replication.py: a secondary on
  127.0.0.1, the primary's FUSE mount over the directory, acknowledgement timeout 0.8 s).

Both datadirs are made by `mariadb-install-db` (the replicated one through the mount) and get
the same sysbench tables (`prepare`); then runs of `sysbench WORKLOAD --threads N --time S`
alternate between the two (the order rotates every round), each server started before its run
and stopped after it. Printed: the median transactions/s and 95th percentile latency of each,
and replicated as % of plain. After the last run both replication processes stop and the
replica is compared file by file with the primary's directory (a difference fails the run).
A run during which the primary dropped its secondary is marked and left out of the medians.

Every sample goes to bench/results/mariadb-TIMESTAMP.json. Exit status non-zero only when it
could not measure. Everything lives in /tmp/hkbench-mariadb-PID/ (same disk for both), removed
at the end; the servers are stopped by the template's scripts, then killed by PID. Needs root,
mariadb-server and sysbench. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import pwd
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import MeasureError, result_header, run_and_record, stats
from _repl_base import filesystem_of, free_port, loadavg, rotated, say, verify_replica
from _repl_replica import Bench, Replica

TEMPLATE_BIN = Path(__file__).resolve().parents[1] / "src/hakit/templates/mariadb/bin"
ACK_TIMEOUT = 0.8
USER = "mysql"


class Server:
    """One mariadbd, run by the template's scripts with the module's variables."""

    def __init__(self, root: Path, name: str, datadir: Path) -> None:
        self.name = name
        self.datadir = datadir
        self.run_dir = root / f"run-{name}"
        self.env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HAKIT_MODULE_BIN": str(TEMPLATE_BIN),
            "DATADIR": str(datadir),
            "PORT": "3306",  # unused: --skip-networking
            "RUNDIR": str(self.run_dir),
            "DEFAULTS_FILE": "/etc/mysql/my.cnf",
            "LOG_ERROR": str(root / f"log-{name}" / "error.log"),
            "BIND_ADDRESS": "127.0.0.1",
            "MARIADB_USER": USER,
            "EXTRA_ARGS": "--skip-networking",
            "START_TIMEOUT": "300",
            "STOP_TIMEOUT": "120",
        }
        self.socket = self.run_dir / "mysqld.sock"

    def script(self, name: str, *args: str) -> str:
        r = subprocess.run(
            [str(TEMPLATE_BIN / name), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=400,
            check=False,
            cwd="/",
        )
        if r.returncode != 0:
            raise MeasureError(f"{self.name}: {name} exited {r.returncode}: {r.stdout[-2000:]}")
        return r.stdout

    def install(self) -> float:
        self.datadir.mkdir()
        shutil.chown(self.datadir, USER, USER)
        t0 = time.monotonic()
        r = subprocess.run(
            [
                "mariadb-install-db",
                "--defaults-file=/etc/mysql/my.cnf",
                f"--user={USER}",
                f"--datadir={self.datadir}",
                "--skip-test-db",
                # its default, O_DIRECT, does not work on the replicated directory
                "--innodb-flush-method=fsync",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            cwd="/",
        )
        if r.returncode != 0:
            raise MeasureError(f"{self.name}: mariadb-install-db: {(r.stderr or r.stdout)[-2000:]}")
        self.script("prestart", "STOP", "ALONE", "start")
        return time.monotonic() - t0

    def start(self) -> None:
        self.script("start_prim", "STOP", "ALONE", "start")

    def stop(self) -> None:
        self.script("stop_prim", "ALONE", "STOP", "stop")

    def sql(self, query: str) -> None:
        subprocess.run(
            ["mariadb", "--no-defaults", f"--socket={self.socket}", "-e", query],
            capture_output=True,
            check=True,
            timeout=60,
        )

    def sysbench(self, args: argparse.Namespace, command: str, timeout: float) -> str:
        r = subprocess.run(
            [
                "sysbench",
                args.workload,
                "--db-driver=mysql",
                f"--mysql-socket={self.socket}",
                "--mysql-user=root",
                "--mysql-db=sbtest",
                f"--tables={args.tables}",
                f"--table-size={args.table_size}",
                f"--threads={args.threads}",
                f"--time={args.seconds}",
                "--report-interval=0",
                command,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if r.returncode != 0:
            raise MeasureError(f"{self.name}: sysbench {command}: {(r.stderr + r.stdout)[-2000:]}")
        return r.stdout

    def kill(self) -> None:
        """Cleaning up: the template's forced stop (SIGKILL of the mariadbd on this datadir)."""
        with contextlib.suppress(Exception):
            self.script("stop_prim", "ALONE", "STOP", "force")


def missing() -> str | None:
    for tool in ("mariadbd", "mariadb-install-db", "mariadb", "sysbench", "my_print_defaults"):
        if not shutil.which(tool):
            return f"{tool} is missing (Debian packages mariadb-server, sysbench)"
    try:
        pwd.getpwnam(USER)
    except KeyError:
        return f"there is no user {USER!r}"
    return None


TPS_RE = re.compile(r"transactions:\s+\d+\s+\(([0-9.]+) per sec\.\)")
P95_RE = re.compile(r"95th percentile:\s+([0-9.]+)")


def run(args: argparse.Namespace, result: dict[str, Any]) -> None:
    root = Path(f"/tmp/hkbench-mariadb-{os.getpid()}")
    root.mkdir(mode=0o755)
    bench = Bench(root, ACK_TIMEOUT)
    servers: list[Server] = []
    result["settings"]["directory"] = str(root)
    result["settings"]["filesystem"] = filesystem_of(root)
    try:
        bench.port = bench.connect_port = free_port(bench.ports)
        plain_dir = root / "plain"
        plain_dir.mkdir()
        rep = Replica(bench, "mdb", "sync")
        rep.up()
        servers = [
            Server(root, "plain", plain_dir / "data"),
            Server(root, "replicated", rep.a / "data"),
        ]
        by_config = {"plain": servers[0], "replicated": servers[1]}
        setup: dict[str, dict[str, float]] = {}
        runs: list[dict[str, Any]] = []
        result["samples"] = {"setup": setup, "runs": runs}
        mark = rep.marks()
        for config, s in by_config.items():
            os.sync()
            install = s.install()
            s.start()
            s.sql("create database sbtest")
            t0 = time.monotonic()
            s.sysbench(args, "prepare", timeout=1800)
            prepare = time.monotonic() - t0
            s.stop()
            setup[config] = {"install_db_s": install, "prepare_s": prepare}
            say(f"  {config:10}: install-db {install:5.1f} s, prepare {prepare:5.1f} s")
        if (reason := rep.dropped_since(mark)) is not None:
            raise MeasureError(f"the primary dropped its secondary during the setup: {reason}")
        for r in range(args.runs):
            for config in rotated(["plain", "replicated"], r):
                s = by_config[config]
                s.start()
                os.sync()
                mark = rep.marks()
                out = s.sysbench(args, "run", timeout=args.seconds + 600)
                s.stop()
                tps, p95 = TPS_RE.search(out), P95_RE.search(out)
                if tps is None or p95 is None:
                    raise MeasureError(f"{config}: no figures in sysbench's output: {out[-1500:]}")
                sample: dict[str, Any] = {
                    "round": r + 1,
                    "config": config,
                    "tps": float(tps.group(1)),
                    "p95_ms": float(p95.group(1)),
                }
                if config == "replicated":
                    rep.reconnect_after_drop(sample, mark)
                runs.append(sample)
                dropped = " (secondary dropped: not counted)" if "replica_dropped" in sample else ""
                say(
                    f"  run {r + 1}, {config:10}: {sample['tps']:8.1f} transactions/s, "
                    f"p95 {sample['p95_ms']:7.2f} ms{dropped}"
                )
        rep.stop()
        result["samples"]["verified"] = verify_replica(rep.a, rep.b, "mariadb")
        valid = [s for s in runs if "replica_dropped" not in s]
        summary: dict[str, Any] = {"dropped": len(runs) - len(valid)}
        for config in ("plain", "replicated"):
            summary[config] = {
                "tps": stats([s["tps"] for s in valid if s["config"] == config]),
                "p95_ms": stats([s["p95_ms"] for s in valid if s["config"] == config]),
            }
        p, q = summary["plain"], summary["replicated"]
        if p["tps"]["n"] and q["tps"]["n"]:
            summary["tps_pct_of_plain"] = q["tps"]["median"] / p["tps"]["median"] * 100
            summary["p95_ratio"] = q["p95_ms"]["median"] / p["p95_ms"]["median"]
        result["summary"] = summary
    finally:
        for s in servers:
            s.kill()
        result["settings"]["loadavg_at_end"] = loadavg()
        warnings = bench.cleanup()
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr)
        result["settings"]["cleanup_warnings"] = warnings


def report(result: dict[str, Any]) -> None:
    s = result["summary"]
    st = result["settings"]
    print(
        f"\nMariaDB, sysbench {st['workload']} --threads {st['threads']} --time {st['seconds']}"
        f" ({st['tables']} tables x {st['table_size']} rows), {st['runs']} runs each, medians:"
    )
    print(f"  {'':12} {'transactions/s':>15} {'p95 latency':>12}")
    for config in ("plain", "replicated"):
        c = s[config]
        if c["tps"]["n"]:
            print(f"  {config:12} {c['tps']['median']:15.1f} {c['p95_ms']['median']:9.2f} ms")
    if "tps_pct_of_plain" in s:
        print(
            f"  replicated: {s['tps_pct_of_plain']:.0f} % of plain's transactions/s, "
            f"p95 latency x{s['p95_ratio']:.2f}"
        )
    if s["dropped"]:
        print(f"  {s['dropped']} run(s) left out: the primary dropped its secondary")
    print(f"  replica verified: {result['samples']['verified']}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="MariaDB on a replicated datadir vs a plain one (sysbench, side by side)."
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke run (5 s, 1 run)")
    parser.add_argument("--seconds", type=int, help="--time of each sysbench run (20; quick 5)")
    parser.add_argument("--runs", type=int, help="runs per configuration (3; quick 1)")
    parser.add_argument("--threads", type=int, default=4, help="sysbench --threads (4)")
    parser.add_argument("--tables", type=int, default=4, help="sysbench --tables (4)")
    parser.add_argument("--table-size", type=int, default=10000, help="rows per table (10000)")
    parser.add_argument(
        "--workload", default="oltp_write_only", help="sysbench test (oltp_write_only)"
    )
    args = parser.parse_args(argv)
    for name, (full, quick) in {"seconds": (20, 5), "runs": (3, 1)}.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if os.geteuid() != 0:
        print(
            "bench/mariadb.py needs root (FUSE mounts, mariadbd as the mysql user)", file=sys.stderr
        )
        return 1
    if (why := missing()) is not None:
        print(f"bench/mariadb.py: cannot run: {why}", file=sys.stderr)
        return 1
    started = datetime.datetime.now(datetime.UTC)
    version = subprocess.run(["mariadbd", "--version"], capture_output=True, text=True).stdout
    result: dict[str, Any] = {
        **result_header("mariadb", started),
        "settings": {
            "workload": args.workload,
            "seconds": args.seconds,
            "runs": args.runs,
            "threads": args.threads,
            "tables": args.tables,
            "table_size": args.table_size,
            "mariadb": version.strip(),
            "mode": "sync",
            "ack_timeout_s": ACK_TIMEOUT,
            "transport": "TCP loopback (127.0.0.1)",
        },
        "samples": {},
        "summary": {},
        "error": None,
    }
    return run_and_record("mariadb", started, result, lambda: run(args, result), report)


if __name__ == "__main__":
    sys.exit(main())
