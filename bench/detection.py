"""Failure detection, hakit vs keepalived, side by side in one lab and one run.

    python bench/detection.py [--runs N] [--load-runs M] [--lab NAME] [--plain-poweroff]

One lab (2 nodes, 2 networks, no client) runs both systems at once:

- hakit's daemons, as `hakit lab` starts them (heartbeat interval 0.2 s, timeout 1.0 s);
- keepalived, one VRRP instance on net1 with keepalived's default timing (advert_int 1):
  node1 MASTER (priority 150), node2 BACKUP (priority 100), VIP 10.100.1.200/24, and a
  `notify_master` script that appends a wall-clock timestamp to a file in the node's /srv.

Each round cuts node1's power — every process of node1 stopped (SIGSTOP, see `freeze`), then
`Lab.poweroff` — and measures, from the start of the cut, for the same cut:

- hakit: the `at` (wall time of the decision) of node2's `peer-lost` entry for node1 in
  /var/log/hakit/events.jsonl;
- keepalived: the timestamp node2's `notify_master` script wrote.

The cut is placed at a stratified random phase of keepalived's advert cycle (keepalived's
detection time is 3.61 s minus the time since the last advert), so that a few runs give a
representative median; hakit's heartbeat phase is random.

Then node1 is powered on (the lab restarts hakit's daemon), keepalived is restarted on it, and
the next round waits until hakit sees both nodes alive again and node1 is VRRP MASTER again
(preemption). Rounds with `--load-runs` do the same with 4 busy-loop processes on the machine.
Finally the resident memory of hakit's daemon + heartbeat process and of keepalived's
processes on node2 are read from /proc.

Results: a table (median / min / max and the ratio keepalived / hakit) and a JSON file
bench/results/detection-TIMESTAMP.json with the machine, the settings and every sample. The
exit status is non-zero only when something could not be measured, never because of a timing.
Everything is bounded: every wait has a deadline, the load processes stop by themselves, the
keepalived processes are started by this script and killed by PID, and the lab is removed in
any case. Needs root (the lab); installs the Debian package `keepalived` if it is missing.
See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from _common import (
    DAEMON_OUT,
    EXEC_TIMEOUT,
    KA_DIR,
    Keepalived,
    MeasureError,
    ensure_package,
    events_since,
    freeze,
    hakit_processes,
    hakit_state,
    keepalived_version,
    memory_of,
    netns_id,
    peer_lost_at,
    result_header,
    run_and_record,
    sees_alive,
    sleep_until,
    stratified,
    summarize,
    wait_for,
)

from hakit.lab import Lab
from hakit.waiting import WaitTimeout, wait_until

MASTER, BACKUP = "node1", "node2"  # keepalived roles; node1 is the one whose power is cut
KA_PRIORITY = {MASTER: 150, BACKUP: 100}
KA_ADVERT_INT = 1  # keepalived's default
KA_VRID = 51
VIP = "10.100.1.200/24"  # inside the lab's net1 (10.100.1.0/24)

DETECT_DEADLINE = 15.0  # s, for each system to report the loss (expected: ~1 s and ~3.6 s)
SETTLE_DEADLINE = 30.0  # s, for both systems to be back to their steady state after poweron
LOAD_PROCS = 4
LOAD_SECONDS = 8.0  # each busy loop stops by itself after this
LOAD_RAMP = 0.5  # s of load before the power cut


class Load:
    """LOAD_PROCS busy loops on the machine, each stopping by itself after `seconds`."""

    def __init__(self, procs: int, seconds: float) -> None:
        code = f"import time\ne = time.monotonic() + {seconds}\nwhile time.monotonic() < e: pass\n"
        self.started = time.time()
        self.until = self.started + seconds
        self.procs: list[subprocess.Popen[bytes]] = []
        for _ in range(procs):
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-I", "-c", code],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()  # by PID: our own child, not yet reaped
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=5)


def keepalived_conf(node: str) -> str:
    state = "MASTER" if node == MASTER else "BACKUP"
    return f"""\
# keepalived for bench/detection.py: default timing, everything under {KA_DIR}
global_defs {{
    router_id {node}
    script_user root
    enable_script_security
}}
vrrp_instance bench {{
    state {state}
    interface eth0
    virtual_router_id {KA_VRID}
    priority {KA_PRIORITY[node]}
    advert_int {KA_ADVERT_INT}
    virtual_ipaddress {{
        {VIP}
    }}
    notify_master "{KA_DIR}/notify.sh MASTER"
    notify_backup "{KA_DIR}/notify.sh BACKUP"
    notify_fault "{KA_DIR}/notify.sh FAULT"
}}
"""


NOTIFY = f"""\
#!/bin/sh
# Appends "WALL-CLOCK-TIME STATE" for every VRRP state change of this node.
printf '%s %s\\n' "$(date +%s.%N)" "$1" >> {KA_DIR}/states
"""


# -- the benchmark ---------------------------------------------------------------------------


@dataclass
class Bench:
    lab: Lab
    ka: Keepalived
    rng: random.Random
    windows: dict[str, tuple[float, float]]  # expected detection after death, per system
    since: float = 0.0  # the previous power cut (keepalived states after it go with a sample)
    freeze: bool = True  # SIGSTOP the node's processes before lab.poweroff (see `freeze`)

    def unsettled(self) -> str | None:
        """None in the steady state (hakit: both nodes alive on every network, both ways;
        keepalived: node1 MASTER for at least 1.5 adverts and node2 BACKUP), else what is not
        there yet."""
        for observer, peer in ((BACKUP, MASTER), (MASTER, BACKUP)):
            if hakit_state(self.lab, observer) is None:
                return f"{observer}'s hakit daemon does not answer{self.daemon_tail(observer)}"
            if not sees_alive(self.lab, observer, peer):
                return f"{observer}'s hakit does not see {peer} alive on every network"
        m, b = self.ka.last(MASTER), self.ka.last(BACKUP)
        if m is None or b is None or m[1] != "MASTER" or b[1] != "BACKUP":
            return (
                f"keepalived: {MASTER} is {m and m[1]} and {BACKUP} is {b and b[1]} "
                f"(waiting for MASTER and BACKUP){self.ka.log_tail(BACKUP)}"
            )
        if time.time() - m[0] < 1.5 * KA_ADVERT_INT:
            return f"keepalived: {MASTER} became MASTER less than 1.5 adverts ago"
        return None

    def daemon_tail(self, node: str, lines: int = 15) -> str:
        try:
            text = self.lab.host_path(node, DAEMON_OUT).read_text(errors="replace")
        except OSError:
            return ""
        tail = "\n".join(text.rstrip("\n").splitlines()[-lines:])
        return f"\n--- end of {node}:{DAEMON_OUT} ---\n{tail}\n---"

    def wait_settled(self) -> None:
        reason: list[str | None] = [None]

        def settled() -> bool:
            reason[0] = self.unsettled()
            return reason[0] is None

        try:
            wait_until(settled, SETTLE_DEADLINE, "steady state", interval=0.2)
        except WaitTimeout as e:
            raise MeasureError(
                f"not back to the steady state within {SETTLE_DEADLINE:g} s: {reason[0]}"
            ) from e

    def vip_on(self, node: str, timeout: float = 5.0) -> bool:
        """Whether `node` holds the VIP (a sanity check that keepalived really failed over)."""

        def held() -> bool:
            argv = ["ip", "-o", "-4", "addr", "show", "dev", "eth0"]
            r = self.lab.exec(node, argv, check=False, capture=True, timeout=EXEC_TIMEOUT)
            return f" {VIP} " in r.stdout

        try:
            wait_until(held, timeout, f"the VIP on {node}", interval=0.1)
        except WaitTimeout:
            return False
        return True

    def cut_time(self, phase: float, lead: float) -> tuple[float, float]:
        """When to cut so that node1's last VRRP advert left `phase` s before (at least `lead`
        s from now), and node1's first advert as MASTER (its notify_master time) it counts
        from. A master sends an advert on entering MASTER, then one every advert interval."""
        m = self.ka.last(MASTER)
        if m is None or m[1] != "MASTER":
            raise MeasureError(f"{MASTER} is not keepalived MASTER before the cut")
        earliest = time.time() + lead
        return earliest + (phase - (earliest - m[0])) % KA_ADVERT_INT, m[0]

    def round(self, index: int, loaded: bool, phase: float) -> dict[str, Any]:
        self.wait_settled()
        netns = netns_id(self.lab, MASTER)
        cut_at, master_since = self.cut_time(phase, LOAD_RAMP + 0.1 if loaded else 0.0)
        load: Load | None = None
        try:
            if loaded:
                sleep_until(cut_at - LOAD_RAMP)
                load = Load(LOAD_PROCS, LOAD_SECONDS)
            sleep_until(cut_at)
            t0 = time.time()
            frozen = freeze(netns) if self.freeze else []
            t_frozen = time.time()
            killed = self.lab.poweroff(MASTER)
            t1 = time.time()
            self.ka.forget(MASTER)
            hakit_at = wait_for(
                lambda: peer_lost_at(self.lab, BACKUP, MASTER, t0),
                DETECT_DEADLINE,
                f"{BACKUP}'s hakit peer-lost entry for {MASTER}",
            )
            try:
                ka_at = wait_for(
                    lambda: self.ka.entered(BACKUP, "MASTER", t0),
                    DETECT_DEADLINE,
                    f"{BACKUP}'s keepalived notify_master",
                )
            except MeasureError as e:
                raise MeasureError(f"{e}{self.ka.log_tail(BACKUP)}") from e
        finally:
            if load is not None:
                load.stop()
        vip_moved = self.vip_on(BACKUP)
        sample: dict[str, Any] = {
            "round": index,
            "cpu_load": loaded,
            "poweroff_at": t0,
            "poweroff_returned_at": t1,
            "poweroff_s": t1 - t0,
            "frozen_processes": len(frozen),
            "freeze_s": t_frozen - t0 if self.freeze else None,
            "processes_killed": len(killed),
            "hakit_peer_lost_at": hakit_at,
            "hakit_s": hakit_at - t0,
            "keepalived_master_at": ka_at,
            "keepalived_s": ka_at - t0,
            "keepalived_vip_on_survivor": vip_moved,
            # time since node1's last advert at the cut, and what RFC 3768 then predicts
            "keepalived_phase_s": (t0 - master_since) % KA_ADVERT_INT,
            "keepalived_predicted_s": self.windows["keepalived"][1]
            - (t0 - master_since) % KA_ADVERT_INT,
            # every VRRP state change since the previous cut, in seconds from this cut
            "keepalived_states": {
                n: [[round(t - t0, 3), st] for t, st in self.ka.states(n) if t >= self.since]
                for n in (MASTER, BACKUP)
            },
        }
        # Outside its expected window (after death, which happens during the cut):
        # keep what explains it.
        outside = []
        for system, took in (("hakit", hakit_at - t0), ("keepalived", ka_at - t0)):
            lo, hi = self.windows[system]
            if not lo - 0.02 <= took <= hi + (t1 - t0) + 0.1:
                outside.append(system)
        sample["outside_expected_window"] = outside
        if "keepalived" in outside:
            sample["keepalived_logs"] = {
                n: self.ka.log_tail(n, 40).splitlines() for n in (MASTER, BACKUP)
            }
        if "hakit" in outside:
            sample["hakit_events"] = events_since(self.lab, BACKUP, self.since)
        self.since = t1
        if load is not None:
            sample["load_started_at"] = load.started
            sample["load_until"] = load.until
            sample["detections_under_load"] = max(hakit_at, ka_at) <= load.until
        self.lab.poweron(MASTER)  # restarts hakit's daemon on node1 (and waits for its API)
        self.ka.start(MASTER)  # preemption: node1 (150) takes MASTER back from node2 (100)
        return sample


def expected_windows(interval: float, timeout: float) -> dict[str, tuple[float, float]]:
    """When each system should decide, in seconds after the death of the node.

    hakit (docs/architecture.md, "Timing budget"): between T - I and T + I/4.
    keepalived (RFC 3768): a backup declares the master down Master_Down_Interval =
    3 * Advertisement_Interval + Skew_Time after the last advert it received, with
    Skew_Time = (256 - priority) / 256 * Advertisement_Interval; that last advert left at most
    one advert interval before the death."""
    skew = (256 - KA_PRIORITY[BACKUP]) / 256 * KA_ADVERT_INT
    down = 3 * KA_ADVERT_INT + skew
    return {
        "hakit": (timeout - interval, timeout + interval / 4),
        "keepalived": (down - KA_ADVERT_INT, down),
    }


def _mib(kib: float | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f}"


def print_report(result: dict[str, Any]) -> None:
    s = result["summary"]
    rows = [
        ("hakit", s["hakit"]),
        ("keepalived", s["keepalived"]),
        ("hakit, CPU load", s["hakit_load"]),
        ("keepalived, CPU load", s["keepalived_load"]),
    ]
    print()
    print("Detection time: power cut -> survivor's decision (seconds)")
    print(f"  {'system':<22}{'runs':>5}{'median':>9}{'min':>8}{'max':>8}")
    for name, st in rows:
        if st["n"]:
            print(
                f"  {name:<22}{st['n']:>5}{st['median_s']:>9.3f}{st['min_s']:>8.3f}"
                f"{st['max_s']:>8.3f}"
            )
    print(f"  ratio keepalived / hakit (medians): {s['ratio_keepalived_over_hakit']:.2f}")
    if s.get("ratio_under_load") is not None:
        print(f"  ratio under CPU load:               {s['ratio_under_load']:.2f}")
    print(f"  the power cut itself took {s['poweroff_median_s'] * 1000:.0f} ms (median)")
    w = result["settings"]["expected_after_death_s"]
    print(
        f"  expected after death: hakit {w['hakit'][0]:.2f}-{w['hakit'][1]:.2f} s, "
        f"keepalived {w['keepalived'][0]:.2f}-{w['keepalived'][1]:.2f} s"
    )
    for sample in result["samples"]:
        for system in sample["outside_expected_window"]:
            print(
                f"  round {sample['round']}: {system} took {sample[system + '_s']:.3f} s, "
                "outside its expected window (details in the JSON file)"
            )
    mem = result["memory"]
    print()
    print(f"Memory on {mem['node']} (MiB)")
    print(f"  {'process':<34}{'VmRSS':>8}{'Pss':>8}")
    for system in ("hakit", "keepalived"):
        for p in mem[system]["processes"]:
            label = f"{system}: {p['role']} ({p['pid']})"
            print(f"  {label:<34}{_mib(p['vm_rss_kib']):>8}{_mib(p['pss_kib']):>8}")
        total = mem[system]
        label = f"{system}: total"
        print(f"  {label:<34}{_mib(total['vm_rss_kib']):>8}{_mib(total['pss_kib']):>8}")
    print(f"  ratio hakit / keepalived (VmRSS): {mem['ratio_rss_hakit_over_keepalived']:.1f}")


def measure_memory(lab: Lab, ka: Keepalived, node: str) -> dict[str, Any]:
    hakit = [memory_of(pid) for pid in hakit_processes(lab, node)]
    for p, role in zip(hakit, ("daemon", "heartbeat"), strict=False):
        p["role"] = role
    kad = ka.memory(node)
    if not hakit or not kad:
        raise MeasureError(f"{node}: cannot find the processes to measure memory")
    for p, role in zip(kad, ("parent", "vrrp child"), strict=False):
        p["role"] = role

    def total(ps: list[dict[str, Any]], key: str) -> int | None:
        values = [p[key] for p in ps]
        return None if None in values else sum(values)

    out: dict[str, Any] = {"node": node}
    for system, ps in (("hakit", hakit), ("keepalived", kad)):
        out[system] = {
            "processes": ps,
            "vm_rss_kib": total(ps, "vm_rss_kib"),
            "pss_kib": total(ps, "pss_kib"),
        }
    out["ratio_rss_hakit_over_keepalived"] = out["hakit"]["vm_rss_kib"] / max(
        1, out["keepalived"]["vm_rss_kib"]
    )
    return out


def run(args: argparse.Namespace, result: dict[str, Any]) -> None:
    result["keepalived_installed_by_this_run"] = ensure_package("keepalived")
    result["settings"]["keepalived"]["version"] = keepalived_version()
    lab = Lab(args.lab)
    if lab.status() != "absent":
        print(f"removing lab {args.lab} left by an earlier run")
        lab.down(missing_ok=True)
    ka = Keepalived(lab, keepalived_conf, {"notify.sh": NOTIFY})
    samples: list[dict[str, Any]] = result["samples"]
    try:
        print(f"building lab {args.lab}: 2 nodes, 2 networks, hakit daemons")
        lab.up(2, 2, 0, daemon=True)
        for node in (MASTER, BACKUP):
            ka.setup(node)
            ka.start(node)
        bench = Bench(lab, ka, random.Random(args.seed), {}, time.time(), not args.plain_poweroff)
        print("waiting for the steady state (hakit: all alive; keepalived: node1 MASTER)")
        bench.wait_settled()
        state = hakit_state(lab, BACKUP) or {}
        hb = state.get("heartbeat", {})
        interval, timeout = float(hb["interval"]), float(hb["timeout"])
        bench.windows = expected_windows(interval, timeout)
        result["settings"]["hakit"].update(
            interval_s=interval,
            timeout_s=timeout,
            heartbeat_scheduling=state.get("daemon", {}).get("heartbeat_scheduling"),
        )
        result["settings"]["expected_after_death_s"] = bench.windows
        # idle and loaded rounds alternate, so that a drift of the machine affects both alike
        phases = {
            False: stratified(args.runs, bench.rng, KA_ADVERT_INT),
            True: stratified(args.load_runs, bench.rng, KA_ADVERT_INT),
        }
        plan = [
            (loaded, phases[loaded][i])
            for i in range(max(args.runs, args.load_runs))
            for loaded, count in ((False, args.runs), (True, args.load_runs))
            if i < count
        ]
        for i, (loaded, phase) in enumerate(plan, 1):
            sample = bench.round(i, loaded, phase)
            samples.append(sample)
            print(
                f"round {i}/{len(plan)}{' (CPU load)' if loaded else ''}: "
                f"hakit {sample['hakit_s']:.3f} s, keepalived {sample['keepalived_s']:.3f} s "
                f"(the cut took {sample['poweroff_s'] * 1000:.0f} ms)"
                f"{'' if sample['keepalived_vip_on_survivor'] else '; VIP NOT on ' + BACKUP}"
                + "".join(f"; {x} OUTSIDE its window" for x in sample["outside_expected_window"]),
                flush=True,
            )
        bench.wait_settled()
        result["memory"] = measure_memory(lab, ka, BACKUP)
    finally:
        ka.stop_all()
        lab.down(missing_ok=True)

    def col(key: str, loaded: bool) -> list[float]:
        return [float(s[key]) for s in samples if s["cpu_load"] is loaded]

    summary = {
        "hakit": summarize(col("hakit_s", False)),
        "keepalived": summarize(col("keepalived_s", False)),
        "hakit_load": summarize(col("hakit_s", True)),
        "keepalived_load": summarize(col("keepalived_s", True)),
        "poweroff_median_s": statistics.median(s["poweroff_s"] for s in samples),
    }
    summary["ratio_keepalived_over_hakit"] = (
        summary["keepalived"]["median_s"] / summary["hakit"]["median_s"]
    )
    summary["ratio_under_load"] = (
        summary["keepalived_load"]["median_s"] / summary["hakit_load"]["median_s"]
        if args.load_runs
        else None
    )
    result["summary"] = summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Failure detection, hakit vs keepalived, side by side in one lab."
    )
    parser.add_argument("--runs", type=int, default=5, help="power cuts without load (5)")
    parser.add_argument(
        "--load-runs",
        type=int,
        default=None,
        help=f"power cuts with {LOAD_PROCS} busy loops on the machine (default: --runs; 0: none)",
    )
    parser.add_argument("--lab", default="bdet", help="lab name (bdet)")
    parser.add_argument(
        "--plain-poweroff",
        action="store_true",
        help="cut the power with Lab.poweroff alone, without freezing the node's processes "
        "first (keepalived may then resign instead of failing: see freeze())",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of the random pauses")
    args = parser.parse_args(argv)
    if args.load_runs is None:
        args.load_runs = args.runs
    if args.runs < 1 or args.load_runs < 0:
        parser.error("--runs must be at least 1 and --load-runs at least 0")
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(2**32)
    if os.geteuid() != 0:
        print("bench/detection.py needs root (the lab uses namespaces)", file=sys.stderr)
        return 1

    started = datetime.datetime.now(datetime.UTC)
    result: dict[str, Any] = {
        **result_header("detection", started),
        "settings": {
            "runs": args.runs,
            "load_runs": args.load_runs,
            "lab": args.lab,
            "seed": args.seed,
            "topology": "2 nodes, 2 networks; node1 powered off, node2 measures",
            "cut_phase": "stratified random over keepalived's advert interval, per column",
            "power_cut": "Lab.poweroff" if args.plain_poweroff else "SIGSTOP all, Lab.poweroff",
            "load": {"processes": LOAD_PROCS, "seconds": LOAD_SECONDS, "ramp_s": LOAD_RAMP},
            "hakit": {},
            "keepalived": {
                "advert_int_s": KA_ADVERT_INT,
                "priorities": KA_PRIORITY,
                "vrid": KA_VRID,
                "vip": VIP,
                "interface": "eth0 (net1)",
                "preempt": True,
            },
        },
        "samples": [],
        "error": None,
    }
    return run_and_record("detection", started, result, lambda: run(args, result), print_report)


if __name__ == "__main__":
    sys.exit(main())
