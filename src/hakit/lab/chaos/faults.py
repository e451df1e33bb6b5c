"""The faults of a chaos campaign (effects): each one injected on a lab, held for its duration
and undone, with the nodes it made unreachable marked for the observer (a powered-off or frozen
node's state file is stale: it serves nothing)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, MutableMapping
from pathlib import Path

from hakit.lab import linkfaults
from hakit.lab.chaos.invariants import FROZEN, OFF
from hakit.lab.chaos.scenario import NODES, WITNESS_PORT, Scenario
from hakit.lab.chaos.schedule import Fault
from hakit.waiting import wait_until


def peer(node: str) -> str:
    return next(n for n in NODES if n != node)


def signal_all(pids: Callable[[], list[int]], sig: int, passes: int = 3) -> None:
    """`sig` to every process `pids` lists, again for those forked meanwhile."""
    done: set[int] = set()
    for _ in range(passes):
        todo = [p for p in pids() if p not in done]
        if not todo:
            return
        for pid in todo:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        done.update(todo)


def _dead(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


class Injector:
    """Applies one fault to `scen` and undoes it; `marks` is shared with the observer."""

    def __init__(self, scen: Scenario, marks: MutableMapping[str, str], work: Path) -> None:
        self.scen = scen
        self.lab = scen.lab
        self.marks = marks
        self.work = work

    def run(self, fault: Fault, node: str) -> str:
        """Inject `fault` on `node`, hold it `fault.duration` s, undo it; what was done."""
        kind = fault.kind
        if kind == "poweroff":
            self.marks[node] = OFF
            self.lab.poweroff(node)
            self.scen.forget_addresses(node)
            time.sleep(fault.duration)
            self.lab.poweron(node)  # starts its daemon, as the boot does
            self.marks.pop(node, None)
            return f"{node} powered off {fault.duration:.1f} s"
        if kind == "kill-daemon":
            pid = self.lab.daemon_pid(node)
            if pid is None:
                return f"{node}: no daemon to kill"
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: _dead(pid), 10, f"the daemon of {node} killed")
            self.lab.start_daemons([node])  # as systemd's Restart= would
            return f"{node}: daemon {pid} killed and restarted"
        if kind == "kill-app":
            pids = self.scen.app_pids(node)
            signal_all(lambda: self.scen.app_pids(node), signal.SIGKILL)
            return f"{node}: application {pids or 'not running'} killed"
        if kind in ("freeze-short", "freeze-long"):
            self._freeze(node, fault.duration)
            return f"{node} frozen {fault.duration:.2f} s"
        if kind == "cut":
            self.lab.cut("node1", "node2", fault.network)
            time.sleep(fault.duration)
            self.lab.heal("node1", "node2", fault.network)
            return f"node1 x node2 on net{fault.network} {fault.duration:.1f} s"
        if kind == "isolate":
            self.lab.isolate(node)
            time.sleep(fault.duration)
            self.lab.heal(node)
            return f"{node} isolated {fault.duration:.1f} s"
        if kind == "oneway":
            linkfaults.drop(self.lab, node, peer(node))
            time.sleep(fault.duration)
            linkfaults.clear(self.lab)
            return f"{node} -> {peer(node)} dropped {fault.duration:.1f} s"
        if kind == "cut-witness":
            linkfaults.cut_port(self.lab, node, WITNESS_PORT)
            time.sleep(fault.duration)
            linkfaults.clear(self.lab)
            return f"{node} x witness {fault.duration:.1f} s"
        if kind == "loss":
            linkfaults.lose(self.lab, node, peer(node), fault.percent)
            time.sleep(fault.duration)
            linkfaults.clear(self.lab)
            return f"{fault.percent} % lost between the nodes {fault.duration:.1f} s"
        if kind == "kill-heartbeat":
            pids = self.scen.heartbeat_pids(node)
            for hb in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(hb, signal.SIGKILL)
            return f"{node}: heartbeat process {pids or 'not running'} killed"
        if kind == "swap":
            other = peer(node)  # the primary: `hakit swap` there while `node` is frozen
            log = self.work / f"swap-round{fault.round}.out"
            self.lab.spawn(other, ["hakit", "swap", self.scen.module], log=log)
            self._freeze(node, fault.duration)
            return f"swap on {other} while {node} frozen {fault.duration:.2f} s"
        raise ValueError(f"unknown fault kind {kind!r}")

    def _freeze(self, node: str, seconds: float) -> None:
        self.marks[node] = FROZEN
        try:
            signal_all(lambda: self.scen.pids(node), signal.SIGSTOP)
            time.sleep(seconds)
        finally:
            signal_all(lambda: self.scen.pids(node), signal.SIGCONT)
            self.marks.pop(node, None)

    def repair(self) -> None:
        """Undo whatever a fault interrupted by an error left (idempotent)."""
        signal_all(lambda: [p for n in NODES for p in self.scen.pids(n)], signal.SIGCONT)
        with contextlib.suppress(Exception):
            linkfaults.clear(self.lab)
        for c in self.lab.cuts():
            self.lab.heal(c.a, c.b, c.network)
        for node in NODES:
            if self.lab.hosts()[node].power != "on":
                self.lab.poweron(node)
        self.marks.clear()
