"""Helpers shared by the benchmarks that run hakit and keepalived in a lab (detection.py,
failover.py): processes identified by PID and start time, freezing a node before its power
cut, deadlines, hakit's state and timeline inside a node, keepalived started and killed by
PID inside lab nodes, summaries and where a result comes from (machine, hakit commit).

Not a benchmark itself; `python bench/NAME.py` finds it next to the script."""

from __future__ import annotations

import contextlib
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from hakit.lab import Lab, LabError
from hakit.waiting import WaitTimeout, wait_until

T = TypeVar("T")

KA_DIR = "/srv/keepalived-bench"  # keepalived's files, inside each node's private /srv
EVENTS = "/var/log/hakit/events.jsonl"
DAEMON_OUT = "/var/log/hakit/daemon.out"
START_DEADLINE = 10.0  # s, for a keepalived VRRP child to be running
EXEC_TIMEOUT = 15.0  # s, for one command inside a node
APT_TIMEOUT = 600.0  # s, for each apt-get step


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


# -- waiting ---------------------------------------------------------------------------------


def sleep_until(wall: float) -> None:
    time.sleep(max(0.0, wall - time.time()))


def stratified(n: int, rng: random.Random, period: float) -> list[float]:
    """n phases in [0, period), one at a random place in each n-th of the interval, in random
    order: random like a failure time, without all the runs falling in the same half of the
    cycle by chance (keepalived's detection time is a linear function of its advert phase)."""
    phases = [(k + rng.random()) / n * period for k in range(n)]
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


def stats(values: Sequence[float]) -> dict[str, Any]:
    """Median, min, max, mean and standard deviation of a series (`n` 0: no sample)."""
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "mean": statistics.fmean(values),
        "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
    }


def ensure_package(command: str, package: str | None = None) -> bool:
    """Install the Debian package providing `command` if it is missing; whether this run
    installed it."""
    package = package or command
    if shutil.which(command):
        return False
    print(f"{command} is missing: installing the Debian package (apt-get install {package})")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package],
    ):
        try:
            r = subprocess.run(
                argv, env=env, capture_output=True, text=True, timeout=APT_TIMEOUT, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise MeasureError(f"`{' '.join(argv)}` failed: {e}") from e
        if r.returncode != 0:
            raise MeasureError(f"`{' '.join(argv)}` exited {r.returncode}: {r.stderr.strip()}")
    if not shutil.which(command):
        raise MeasureError(f"{command} is still not on PATH after installing {package}")
    return True


def keepalived_version() -> str:
    r = subprocess.run(
        ["keepalived", "--version"], capture_output=True, text=True, timeout=10, check=False
    )
    lines = (r.stderr or r.stdout).strip().splitlines()
    return lines[0] if lines else "unknown"


class Keepalived:
    """keepalived in the lab's nodes: its files under `directory` (default KA_DIR, in each
    node's private /srv), its processes started here and killed here by PID.

    `conf(node)` is the text of the node's keepalived.conf; `files` are more files to write
    next to it (name -> text, made executable: the notify scripts)."""

    def __init__(
        self,
        lab: Lab,
        conf: Callable[[str], str],
        files: Mapping[str, str],
        directory: str = KA_DIR,
    ) -> None:
        self.lab = lab
        self.conf = conf
        self.files = dict(files)
        self.dir = directory
        self.procs: dict[str, list[Proc]] = {}

    def path(self, node: str, name: str) -> Path:
        return self.lab.host_path(node, f"{self.dir}/{name}")

    def setup(self, node: str) -> None:
        d = self.path(node, "")
        d.mkdir(mode=0o755, parents=True, exist_ok=True)
        self.path(node, "keepalived.conf").write_text(self.conf(node))
        for name, text in self.files.items():
            script = self.path(node, name)
            script.write_text(text)
            script.chmod(0o755)

    def argv(self) -> list[str]:
        return [
            "keepalived",
            "--dont-fork",
            "--log-console",
            "--log-detail",
            "--no-syslog",  # /dev/log would be the machine's syslog: keep logs in the node
            "--vrrp",  # VRRP only: no checker, no BFD process
            "--use-file", f"{self.dir}/keepalived.conf",
            "--pid", f"{self.dir}/keepalived.pid",
            "--vrrp_pid", f"{self.dir}/vrrp.pid",
            "--checkers_pid", f"{self.dir}/checkers.pid",
            "--bfd_pid", f"{self.dir}/bfd.pid",
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

    def states(self, node: str, file: str = "states") -> list[tuple[float, str]]:
        """The `WALL-TIME STATE` lines the notify script appended to `file` in the node."""
        try:
            text = self.path(node, file).read_text()
        except OSError:
            return []
        out = []
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 2:
                with contextlib.suppress(ValueError):
                    out.append((float(parts[0]), parts[1]))
        return out

    def last(self, node: str, file: str = "states") -> tuple[float, str] | None:
        s = self.states(node, file)
        return s[-1] if s else None

    def entered(self, node: str, state: str, since: float, file: str = "states") -> float | None:
        """Time `node` first entered `state` at or after `since`."""
        return next((t for t, s in self.states(node, file) if s == state and t >= since), None)

    def log_tail(self, node: str, lines: int = 15) -> str:
        try:
            text = self.path(node, "keepalived.log").read_text(errors="replace")
        except OSError:
            return ""
        tail = "\n".join(text.rstrip("\n").splitlines()[-lines:])
        return f"\n--- end of {node}:{self.dir}/keepalived.log ---\n{tail}\n---"

    def memory(self, node: str) -> list[dict[str, Any]]:
        return [memory_of(p.pid) for p in self.procs.get(node, []) if p.alive()]


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


def run_and_record(
    name: str,
    started: Any,
    result: dict[str, Any],
    measure: Callable[[], None],
    report: Callable[[dict[str, Any]], None],
) -> int:
    """Run a benchmark, always write its JSON (with `error` on failure), print the report.

    `started` is the start time (a `datetime`); exit status 1 only if it could not measure.
    """
    import datetime

    from hakit.errors import HakitError

    status = 0
    try:
        measure()
    except (MeasureError, HakitError, OSError, subprocess.SubprocessError) as e:
        result["error"] = str(e)
        print(f"bench/{name}.py: could not measure: {e}", file=sys.stderr)
        status = 1
    finally:
        result["finished_at"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        out_dir = Path(__file__).resolve().parent / "results"
        out_dir.mkdir(parents=True, exist_ok=True)
        out = out_dir / f"{name}-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
        out.write_text(json.dumps(result, indent=2) + "\n")
    if status == 0:
        report(result)
    print(f"\nresults: {out}")
    return status


def result_header(name: str, started: Any) -> dict[str, Any]:
    """What every benchmark's JSON starts with: which benchmark, when, which hakit, where."""
    import importlib.metadata

    return {
        "benchmark": name,
        "started_at": started.isoformat(timespec="seconds"),
        "hakit_version": importlib.metadata.version("hakit"),
        "hakit_source": hakit_source(),
        "machine": machine_info(),
    }


def side_by_side(plain: Sequence[float], replicated: Sequence[float]) -> dict[str, Any]:
    """Both configurations' statistics and the replicated median as % of the plain one."""
    return {
        "plain": stats(plain),
        "replicated": stats(replicated),
        "replicated_pct_of_plain": statistics.median(replicated) / statistics.median(plain) * 100
        if plain and replicated and statistics.median(plain)
        else None,
    }


def _side_by_side_row(label: str, v: Mapping[str, Any], fmt: str, width: int) -> str:
    """One line of a plain / replicated / ratio table made of `side_by_side` figures."""
    pct = v["replicated_pct_of_plain"]
    return (
        f"{label:{width}} {fmt.format(v['plain']['median'])} "
        f"{fmt.format(v['replicated']['median']):>11} "
        f"{'' if pct is None else f'{pct:15.0f} %':>17}"
    )


def print_side_by_side(
    title: str, rows: Sequence[tuple[str, str, str]], summary: Mapping[str, Any], width: int
) -> None:
    """The plain / replicated / ratio table of `side_by_side` figures: (label, key, format)
    per row, then the runs left out because the primary dropped its secondary."""
    print(f"\n{title}")
    print(f"{'':{width}} {'plain':>10} {'replicated':>11} {'replicated/plain':>17}")
    for label, key, fmt in rows:
        print(_side_by_side_row(label, summary[key], fmt, width))
    if summary["dropped"]:
        print(f"({summary['dropped']} runs left out: the primary dropped its secondary)")
