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
import importlib.metadata
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from hakit.errors import HakitError
from hakit.lab import Lab, LabError
from hakit.waiting import WaitTimeout, wait_until

T = TypeVar("T")

MASTER, BACKUP = "node1", "node2"  # keepalived roles; node1 is the one whose power is cut
KA_DIR = "/srv/keepalived-bench"  # keepalived's files, inside each node's private /srv
KA_PRIORITY = {MASTER: 150, BACKUP: 100}
KA_ADVERT_INT = 1  # keepalived's default
KA_VRID = 51
VIP = "10.100.1.200/24"  # inside the lab's net1 (10.100.1.0/24)
EVENTS = "/var/log/hakit/events.jsonl"
DAEMON_OUT = "/var/log/hakit/daemon.out"

DETECT_DEADLINE = 15.0  # s, for each system to report the loss (expected: ~1 s and ~3.6 s)
SETTLE_DEADLINE = 30.0  # s, for both systems to be back to their steady state after poweron
START_DEADLINE = 10.0  # s, for a keepalived VRRP child to be running
EXEC_TIMEOUT = 15.0  # s, for one command inside a node
APT_TIMEOUT = 600.0  # s, for each apt-get step
LOAD_PROCS = 4
LOAD_SECONDS = 8.0  # each busy loop stops by itself after this
LOAD_RAMP = 0.5  # s of load before the power cut


class MeasureError(Exception):
    """Something could not be measured (the benchmark exits non-zero)."""


# -- processes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Proc:
    """A process identified across PID reuse by its start time (field 22 of /proc/PID/stat)."""

    pid: int
    started: int

    @classmethod
    def of(cls, pid: int) -> Proc | None:
        fields = _stat_fields(pid)
        return None if fields is None else cls(pid, int(fields[19]))

    def alive(self) -> bool:
        fields = _stat_fields(self.pid)
        return fields is not None and int(fields[19]) == self.started

    def ppid(self) -> int | None:
        fields = _stat_fields(self.pid)
        return int(fields[1]) if fields is not None else None

    def kill(self) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/PID/stat (state first), None if the process is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return None if fields[0] in ("Z", "X") else fields


def memory_of(pid: int) -> dict[str, Any]:
    """VmRSS (from /proc/PID/status) and Pss (from /proc/PID/smaps_rollup) in KiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    pss: int | None = None
    with contextlib.suppress(OSError, StopIteration):
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
        pss = next(int(line.split()[1]) for line in rollup if line.startswith("Pss:"))
    comm = Path(f"/proc/{pid}/comm").read_text().strip()
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    return {"pid": pid, "comm": comm, "cmdline": cmdline, "vm_rss_kib": rss, "pss_kib": pss}


def netns_id(lab: Lab, node: str) -> tuple[int, int]:
    st = os.stat(f"/run/netns/{lab.hosts()[node].netns}")
    return st.st_dev, st.st_ino


def freeze(netns: tuple[int, int], timeout: float = 2.0) -> list[int]:
    """SIGSTOP every process in network namespace `netns` (until a scan finds no new one).

    `Lab.poweroff` SIGKILLs a node's processes one by one, so a process can react to the death
    of another before its own SIGKILL arrives: keepalived's VRRP child gets SIGTERM when its
    parent dies (parent-death signal) and resigns with a priority-0 advert, which makes the
    backup take over after Skew_Time (~0.6 s) instead of detecting a failure. A real power cut
    gives nobody that chance; stopping every process first, then letting `Lab.poweroff` kill
    them, does the same (a stopped process handles no signal; SIGKILL still kills it)."""
    deadline = time.monotonic() + timeout
    me = os.getpid()
    stopped: set[int] = set()
    while True:
        new = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == me or int(entry) in stopped:
                continue
            try:
                st = os.stat(f"/proc/{entry}/ns/net")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == netns:
                new.append(int(entry))
        if not new:
            return sorted(stopped)
        if time.monotonic() > deadline:
            raise MeasureError(f"processes {new} kept appearing while freezing the node")
        for pid in new:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
            stopped.add(pid)


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None and int(fields[1]) == pid:
                found.append(int(entry))
    return sorted(found)


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


# -- waiting ---------------------------------------------------------------------------------


def sleep_until(wall: float) -> None:
    time.sleep(max(0.0, wall - time.time()))


def stratified(n: int, rng: random.Random) -> list[float]:
    """n phases in [0, KA_ADVERT_INT), one at a random place in each n-th of the interval, in
    random order: random like a failure time, without all the runs falling in the same half of
    the cycle by chance (keepalived's detection time is a linear function of this phase)."""
    phases = [(k + rng.random()) / n * KA_ADVERT_INT for k in range(n)]
    rng.shuffle(phases)
    return phases


def wait_for(cond: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """`wait_until` for a value that may legitimately be 0.0: waits for a non-None result."""
    box: list[T] = []

    def ready() -> bool:
        value = cond()
        if value is None:
            return False
        box.append(value)
        return True

    try:
        wait_until(ready, timeout, what, interval)
    except WaitTimeout as e:
        raise MeasureError(str(e)) from e
    return box[-1]


# -- hakit -----------------------------------------------------------------------------------


def hakit_state(lab: Lab, node: str) -> dict[str, Any] | None:
    """`hakit state --json` inside `node`, None if the daemon does not answer (yet)."""
    try:
        r = lab.exec(
            node, ["hakit", "state", "--json"], check=False, capture=True, timeout=EXEC_TIMEOUT
        )
    except LabError:
        return None
    if r.returncode != 0:
        return None
    try:
        state = json.loads(r.stdout)
    except ValueError:
        return None
    return state if isinstance(state, dict) else None


def sees_alive(lab: Lab, observer: str, peer: str) -> bool:
    state = hakit_state(lab, observer)
    if state is None:
        return False
    p = state.get("nodes", {}).get(peer, {})
    return bool(p.get("alive")) and all(p.get("networks", {}).values())


def peer_lost_at(lab: Lab, observer: str, peer: str, since: float) -> float | None:
    """Wall time of `observer`'s first `peer-lost` entry for `peer` at or after `since`."""
    try:
        text = lab.host_path(observer, EVENTS).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue  # a line being written
        if e.get("kind") == "peer-lost" and e.get("peer") == peer and e.get("at", 0) >= since:
            return float(e["at"])
    return None


def events_since(lab: Lab, node: str, since: float) -> list[dict[str, Any]]:
    try:
        text = lab.host_path(node, EVENTS).read_text()
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            e = json.loads(line)
            if isinstance(e, dict) and e.get("at", 0) >= since:
                out.append(e)
    return out


def hakit_processes(lab: Lab, node: str) -> list[int]:
    """PIDs of `node`'s hakit daemon and its heartbeat process."""
    state = hakit_state(lab, node) or {}
    daemon = state.get("daemon", {})
    pid = daemon.get("pid") or lab.daemon_pid(node)
    if pid is None:
        raise MeasureError(f"{node}: no hakit daemon running")
    hb = daemon.get("heartbeat_pid")
    return [int(pid), *([int(hb)] if hb else children_of(int(pid)))]


# -- keepalived ------------------------------------------------------------------------------


def ensure_keepalived() -> bool:
    """Install the Debian package `keepalived` if missing; whether this run installed it."""
    if shutil.which("keepalived"):
        return False
    print("keepalived is missing: installing the Debian package (apt-get install keepalived)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "keepalived"],
    ):
        try:
            r = subprocess.run(
                argv, env=env, capture_output=True, text=True, timeout=APT_TIMEOUT, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise MeasureError(f"`{' '.join(argv)}` failed: {e}") from e
        if r.returncode != 0:
            raise MeasureError(f"`{' '.join(argv)}` exited {r.returncode}: {r.stderr.strip()}")
    if not shutil.which("keepalived"):
        raise MeasureError("keepalived is still not on PATH after installing it")
    return True


def keepalived_version() -> str:
    r = subprocess.run(
        ["keepalived", "--version"], capture_output=True, text=True, timeout=10, check=False
    )
    lines = (r.stderr or r.stdout).strip().splitlines()
    return lines[0] if lines else "unknown"


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


class Keepalived:
    """keepalived in the lab's nodes: its files under KA_DIR in each node's private /srv, its
    processes started here and killed here by PID."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.procs: dict[str, list[Proc]] = {}

    def path(self, node: str, name: str) -> Path:
        return self.lab.host_path(node, f"{KA_DIR}/{name}")

    def setup(self, node: str) -> None:
        d = self.path(node, "")
        d.mkdir(mode=0o755, parents=True, exist_ok=True)
        self.path(node, "keepalived.conf").write_text(keepalived_conf(node))
        script = self.path(node, "notify.sh")
        script.write_text(NOTIFY)
        script.chmod(0o755)

    def argv(self) -> list[str]:
        return [
            "keepalived",
            "--dont-fork",
            "--log-console",
            "--log-detail",
            "--no-syslog",  # /dev/log would be the machine's syslog: keep logs in the node
            "--vrrp",  # VRRP only: no checker, no BFD process
            "--use-file", f"{KA_DIR}/keepalived.conf",
            "--pid", f"{KA_DIR}/keepalived.pid",
            "--vrrp_pid", f"{KA_DIR}/vrrp.pid",
            "--checkers_pid", f"{KA_DIR}/checkers.pid",
            "--bfd_pid", f"{KA_DIR}/bfd.pid",
        ]  # fmt: skip

    def start(self, node: str) -> float:
        """Start keepalived in `node`; returns the wall time just before, once its VRRP child
        runs."""
        if any(p.alive() for p in self.procs.get(node, [])):
            raise MeasureError(f"{node}: keepalived is already running")
        for pidfile in ("keepalived.pid", "vrrp.pid", "checkers.pid", "bfd.pid"):
            # stale after a power cut; keepalived refuses to start if a live process has that PID
            self.path(node, pidfile).unlink(missing_ok=True)
        at = time.time()
        pid = self.lab.spawn(node, self.argv(), log=self.path(node, "keepalived.log"))
        parent = Proc.of(pid)
        if parent is None:
            raise MeasureError(f"{node}: keepalived exited at once{self.log_tail(node)}")
        self.procs[node] = [parent]

        def vrrp_child() -> Proc | None:
            if not parent.alive():
                raise MeasureError(f"{node}: keepalived exited{self.log_tail(node)}")
            try:
                child = Proc.of(int(self.path(node, "vrrp.pid").read_text().strip()))
            except (OSError, ValueError):
                return None
            return child if child is not None and child.ppid() == parent.pid else None

        child = wait_for(vrrp_child, START_DEADLINE, f"{node}: keepalived's VRRP child")
        self.procs[node].append(child)
        return at

    def forget(self, node: str) -> None:
        """After a power cut: the node's keepalived processes must be gone."""
        left = [p.pid for p in self.procs.pop(node, []) if p.alive()]
        if left:
            raise MeasureError(f"{node}: keepalived processes {left} survived the power cut")

    def stop_all(self) -> None:
        """SIGKILL, by PID, every keepalived process started here (the parent first, so that it
        cannot respawn its child); waits at most 5 s for them to be gone."""
        for procs in self.procs.values():
            for p in procs:
                p.kill()
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and any(
            p.alive() for ps in self.procs.values() for p in ps
        ):
            time.sleep(0.05)
        left = [p.pid for ps in self.procs.values() for p in ps if p.alive()]
        self.procs.clear()
        if left:
            print(f"warning: keepalived processes {left} did not die", file=sys.stderr)

    def states(self, node: str) -> list[tuple[float, str]]:
        try:
            text = self.path(node, "states").read_text()
        except OSError:
            return []
        out = []
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 2:
                with contextlib.suppress(ValueError):
                    out.append((float(parts[0]), parts[1]))
        return out

    def last(self, node: str) -> tuple[float, str] | None:
        s = self.states(node)
        return s[-1] if s else None

    def entered(self, node: str, state: str, since: float) -> float | None:
        """Time `node` first entered `state` at or after `since`."""
        return next((t for t, s in self.states(node) if s == state and t >= since), None)

    def log_tail(self, node: str, lines: int = 15) -> str:
        try:
            text = self.path(node, "keepalived.log").read_text(errors="replace")
        except OSError:
            return ""
        tail = "\n".join(text.rstrip("\n").splitlines()[-lines:])
        return f"\n--- end of {node}:{KA_DIR}/keepalived.log ---\n{tail}\n---"

    def memory(self, node: str) -> list[dict[str, Any]]:
        return [memory_of(p.pid) for p in self.procs.get(node, []) if p.alive()]


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


def summarize(values: Sequence[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "median_s": statistics.median(values),
        "min_s": min(values),
        "max_s": max(values),
        "mean_s": statistics.fmean(values),
        "stdev_s": statistics.stdev(values) if len(values) > 1 else 0.0,
    }


def hakit_source() -> dict[str, Any]:
    """Which hakit runs (the lab's daemons run the same one): its directory, and its git commit
    with whether that directory has uncommitted changes."""
    import hakit

    pkg = Path(hakit.__file__).resolve().parent
    info: dict[str, Any] = {"path": str(pkg), "commit": None, "uncommitted_changes": None}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        git = ["git", "-C", str(pkg)]
        head = subprocess.run(
            [*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False
        )
        if head.returncode == 0:
            info["commit"] = head.stdout.strip()
            dirty = subprocess.run(
                [*git, "status", "--porcelain", "--", "."],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
            info["uncommitted_changes"] = bool(dirty.stdout.strip())
    return info


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = None
    with contextlib.suppress(OSError, StopIteration, ValueError):
        meminfo = Path("/proc/meminfo").read_text().splitlines()
        mem_kib = next(int(x.split()[1]) for x in meminfo if x.startswith("MemTotal:"))
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "mem_total_kib": mem_kib,
        "kernel": platform.release(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
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
    result["keepalived_installed_by_this_run"] = ensure_keepalived()
    result["settings"]["keepalived"]["version"] = keepalived_version()
    lab = Lab(args.lab)
    if lab.status() != "absent":
        print(f"removing lab {args.lab} left by an earlier run")
        lab.down(missing_ok=True)
    ka = Keepalived(lab)
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
            False: stratified(args.runs, bench.rng),
            True: stratified(args.load_runs, bench.rng),
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
        "benchmark": "detection",
        "started_at": started.isoformat(timespec="seconds"),
        "hakit_version": importlib.metadata.version("hakit"),
        "hakit_source": hakit_source(),
        "machine": machine_info(),
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
    status = 0
    try:
        run(args, result)
    except (MeasureError, HakitError, OSError, subprocess.SubprocessError) as e:
        result["error"] = str(e)
        print(f"bench/detection.py: could not measure: {e}", file=sys.stderr)
        status = 1
    finally:
        result["finished_at"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        out_dir = Path(__file__).resolve().parent / "results"
        out_dir.mkdir(parents=True, exist_ok=True)
        out = out_dir / f"detection-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
        out.write_text(json.dumps(result, indent=2) + "\n")
    if status == 0:
        print_report(result)
    print(f"\nresults: {out}")
    return status


if __name__ == "__main__":
    sys.exit(main())
