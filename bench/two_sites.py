"""Two sites: failover and synchronous write latency of a mirror module with added RTT.

    python bench/two_sites.py [--rtt-ms 0,5,20,50] [--rounds N] [--lab NAME]

One lab (2 nodes, 1 network; default name `tsite2`) runs a mirror module `site` replicating
/srv/site in `sync` mode, heartbeat settings as the lab writes them (interval 0.2 s, timeout
1.0 s). For each added round-trip time R, `hakit.lab.slowlink.SlowLink` puts the replication
stream and the heartbeats between the nodes through a delay proxy (R/2 each way; R = 0 still
goes through the proxies, to show their own cost). Each round:

- **write + fsync**: on the primary, 100 × (`pwrite` of 4 KiB, `fsync`) in the replicated
  directory after 10 warm-up ones; p50 and p99 (what a committing database sees);
- **failover**: the primary's power is cut (`Lab.poweroff`); from the cut to the survivor's
  `peer-lost` (detection) and to its `ALONE` (its timeline, /var/log/hakit/events.jsonl);
- **rejoin**: the old primary is powered on (its daemon restarts, its proxy is restarted),
  from the power-on to its `SECOND ready` (daemon start, forming, resynchronisation of the
  changes, polled with `hakit state`: ±0.3 s).

Roles alternate (each round cuts the current primary). Results: a table of medians per R with
ratios to R = 0 (printed, never asserted) and bench/results/two_sites-TIMESTAMP.json. Every wait
is bounded, the lab is removed in any case. Needs root. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import statistics
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from _common import EVENTS, result_header, run_and_record, wait_for

from hakit.config.model import DEFAULT_PORT
from hakit.config.module import SCRIPTS
from hakit.lab import Lab
from hakit.lab.slowlink import SlowLink

MODULE = "site"
DIR = "/srv/site"
REPL_PORT = 7460
FSYNC = """
import os, statistics, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)
buf, t = os.urandom(4096), []
for i in range(110):
    a = time.perf_counter(); os.pwrite(fd, buf, i * 4096); os.fsync(fd)
    t.append(time.perf_counter() - a)
t = sorted(t[10:])
print(statistics.median(t) * 1e6, t[98] * 1e6)
"""


def say(text: str) -> None:
    print(text, flush=True)


def state_of(lab: Lab, node: str) -> str:
    import json

    r = lab.exec(node, ["hakit", "state", "--json"], capture=True, check=False, timeout=15)
    if r.returncode != 0:
        return "unknown"
    mod = json.loads(r.stdout)["modules"].get(MODULE, {}).get("nodes", {}).get(node)
    return f"{mod['state']} {mod['status']}" if mod else "unknown"


def loaded(lab: Lab, node: str) -> bool:
    import json

    r = lab.exec(node, ["hakit", "state", "--json"], capture=True, check=False, timeout=15)
    return r.returncode == 0 and MODULE in json.loads(r.stdout)["modules"]


def wait_state(lab: Lab, node: str, want: str, timeout: float) -> float:
    return wait_for(
        lambda: time.time() if state_of(lab, node) == want else None,
        timeout,
        f"{MODULE} {want} on {node}",
        interval=0.1,
    )


def marks_since(lab: Lab, node: str, peer: str, since: float) -> dict[str, float]:
    import json

    out: dict[str, float] = {}
    try:
        lines = lab.host_path(node, EVENTS).read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if e.get("at", 0) < since:
            continue
        if e.get("kind") == "peer-lost" and e.get("peer") == peer:
            out.setdefault("peer_lost", float(e["at"]))
        if str(e.get("message", "")).startswith(f"{MODULE} on {node} ALONE"):
            out.setdefault("alone", float(e["at"]))
    return out


def alone_marks(lab: Lab, node: str, peer: str, since: float) -> dict[str, float] | None:
    m = marks_since(lab, node, peer, since)
    return m if "alone" in m else None


def install(lab: Lab) -> None:
    folder = Path(tempfile.mkdtemp(prefix="hkbench-site-")) / MODULE  # the module's name
    (folder / "bin").mkdir(parents=True)
    (folder / "module.yaml").write_text(
        textwrap.dedent(f"""\
        kind: mirror
        nodes: [node1, node2]
        replication:
          mode: sync
          port: {REPL_PORT}
          dirs:
            - path: {DIR}
        """)
    )
    for s in SCRIPTS:
        p = folder / "bin" / s
        p.write_text("#!/bin/sh\nexit 0\n")
        p.chmod(0o755)
    for node in lab.nodes:
        lab.exec(node, ["mkdir", "-p", DIR])
    try:
        lab.exec("node1", ["hakit", "module", "install", str(folder), "--all"], capture=True)
    finally:
        shutil.rmtree(folder.parent)
    for node in lab.nodes:
        wait_for(partial(loaded, lab, node), 20, f"{MODULE} loaded on {node}")


def fsync_latency(lab: Lab, node: str) -> tuple[float, float]:
    r = lab.exec(node, [sys.executable, "-c", FSYNC, f"{DIR}/lat"], capture=True, timeout=120)
    p50, p99 = r.stdout.split()
    return float(p50), float(p99)


def measure(args: argparse.Namespace, result: dict[str, Any]) -> None:
    lab = Lab(args.lab)
    lab.down(missing_ok=True)
    link: SlowLink | None = None
    try:
        lab.up(2, 1, 1)
        install(lab)
        prim, sec = "node1", "node2"
        lab.exec(prim, ["hakit", "prim", MODULE], capture=True)
        wait_state(lab, prim, "ALONE ready", 30)
        lab.exec(sec, ["hakit", "second", MODULE], capture=True)
        wait_state(lab, sec, "SECOND ready", 60)
        for rtt in args.rtt_ms:
            if link is not None:
                link.remove()
            link = SlowLink(lab, rtt / 1000, tcp_ports=(REPL_PORT,), udp_ports=(DEFAULT_PORT,))
            link.start("node1")
            link.start("node2")
            samples = result["samples"].setdefault(str(rtt), [])
            for r in range(args.rounds):
                wait_state(lab, prim, "PRIM ready", 60)
                wait_state(lab, sec, "SECOND ready", 60)
                p50, p99 = fsync_latency(lab, prim)
                t0 = time.time()
                lab.poweroff(prim)
                m: dict[str, float] = wait_for(
                    partial(alone_marks, lab, sec, prim, t0), 30, f"{sec} ALONE"
                )
                t1 = time.time()
                lab.poweron(prim)
                link.start(prim)
                back = wait_state(lab, prim, "SECOND ready", 120)
                s: dict[str, Any] = {
                    "round": r,
                    "cut": prim,
                    "fsync_p50_us": p50,
                    "fsync_p99_us": p99,
                    "detection_s": m["peer_lost"] - t0 if "peer_lost" in m else None,
                    "failover_s": m["alone"] - t0,
                    "rejoin_s": back - t1,
                    "loadavg": os.getloadavg(),
                }
                samples.append(s)
                say(
                    f"  +{rtt:g} ms round {r + 1}: write+fsync p50 {p50:.0f} us p99 {p99:.0f} us,"
                    f" detection {s['detection_s'] or float('nan'):.2f} s, failover to ALONE "
                    f"{s['failover_s']:.2f} s, rejoin {s['rejoin_s']:.2f} s, load "
                    f"{s['loadavg'][0]:.2f}"
                )
                prim, sec = sec, prim
        result["summary"] = {
            k: {
                f: statistics.median(x[f] for x in v if x[f] is not None)
                for f in ("fsync_p50_us", "fsync_p99_us", "detection_s", "failover_s", "rejoin_s")
            }
            for k, v in result["samples"].items()
        }
    finally:
        if link is not None:
            link.remove()
        lab.down(missing_ok=True)


def report(result: dict[str, Any]) -> None:
    s = result["summary"]
    base = s.get("0") or next(iter(s.values()))
    say(
        f"\nTwo sites, hakit {(result['hakit_source'].get('commit') or '?')[:10]}, medians of "
        f"{result['settings']['rounds']} rounds, load at start "
        f"{' '.join(result['machine']['loadavg_at_start'])}"
    )
    say("  +RTT    fsync p50 (x)        p99   detection  failover (x)   rejoin")
    for k, v in s.items():
        ratio = v["fsync_p50_us"] / base["fsync_p50_us"]
        say(
            f"  {k:>4} ms {v['fsync_p50_us']:8.0f} us {ratio:6.1f}x"
            f" {v['fsync_p99_us']:8.0f} us {v['detection_s']:7.2f} s {v['failover_s']:6.2f} s "
            f"{v['failover_s'] / base['failover_s']:4.2f}x {v['rejoin_s']:6.2f} s"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rtt-ms", default="0,5,20,50", help="added RTTs, comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lab", default="tsite2")
    args = parser.parse_args(argv)
    try:
        args.rtt_ms = [float(x) for x in args.rtt_ms.split(",")]
    except ValueError:
        parser.error("--rtt-ms: numbers separated by commas")
    if os.geteuid() != 0:
        print("bench/two_sites.py needs root (the lab)", file=sys.stderr)
        return 1
    started = datetime.datetime.now(datetime.UTC)
    result: dict[str, Any] = {
        **result_header("two_sites", started),
        "settings": {
            "rtt_ms": args.rtt_ms,
            "rounds": args.rounds,
            "heartbeat": "interval 0.2 s, timeout 1.0 s",
            "mode": "sync",
        },
        "samples": {},
        "summary": {},
        "error": None,
    }
    return run_and_record("two_sites", started, result, lambda: measure(args, result), report)


if __name__ == "__main__":
    sys.exit(main())
