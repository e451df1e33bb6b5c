"""A chaos campaign (effects): the scenario's lab, its workload, an observer sampling every
node's role every 50 ms from outside, and the seeded rounds — inject, undo, wait for the
cluster to settle, check the invariants — then the report.

    Campaign(lab, "mirror-witness", seed=7, rounds=6, report=Path("chaos-report")).run()
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute  # type: ignore[import-untyped]

from hakit.lab.chaos import invariants as inv
from hakit.lab.chaos.faults import Injector, peer
from hakit.lab.chaos.records import parse
from hakit.lab.chaos.report import RoundResult, write_report
from hakit.lab.chaos.scenario import NODES, Scenario
from hakit.lab.chaos.schedule import Fault, schedule
from hakit.lab.errors import LabError
from hakit.lab.lab import Lab, alive_pid
from hakit.waiting import WaitTimeout, wait_until

SAMPLE_EVERY = 0.05
SETTLE_TIMEOUT = 180.0


class Observer:
    """Samples, every 50 ms in a thread, each node's phase (its state file) and whether its
    kernel holds the module's VIP (netlink, in its network namespace); `marks`: the nodes the
    campaign powered off or froze."""

    def __init__(self, scen: Scenario, marks: dict[str, str], limit: float) -> None:
        self.scen = scen
        self.marks = marks
        self.limit = limit
        self.samples: list[inv.Sample] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True, name="chaos-observer")
        self._t.start()

    def _run(self) -> None:
        end = time.monotonic() + self.limit
        links = {n: self.scen.lab.hosts()[n].netns for n in NODES}
        routes: dict[str, IPRoute] = {}
        try:
            while not self._stop.is_set() and time.monotonic() < end:
                phases = {n: self.marks.get(n) or self.scen.phase(n) for n in NODES}
                holders = tuple(
                    n for n in NODES if n not in self.marks and self._holds(routes, links, n)
                )
                self.samples.append(inv.Sample(time.time(), phases, holders))
                self._stop.wait(SAMPLE_EVERY)
        finally:
            for r in routes.values():
                r.close()

    def _holds(self, routes: dict[str, IPRoute], links: dict[str, str], node: str) -> bool:
        vip = self.scen.vip
        if vip is None:
            return False
        try:
            if node not in routes:
                routes[node] = IPRoute(netns=links[node])
            return any(m.get("IFA_ADDRESS") == vip for m in routes[node].get_addr(family=2))
        except Exception:  # a namespace being rebuilt: ask again at the next sample
            routes.pop(node, None)
            return False

    def since(self, t: float) -> list[inv.Sample]:
        return [s for s in list(self.samples) if s.t >= t]

    def stop(self) -> None:
        self._stop.set()
        self._t.join(10)


@dataclass
class Campaign:
    lab: Lab
    scenario: str
    seed: int
    rounds: int | None = None
    minutes: float | None = None
    report: Path = Path("chaos-report")
    say: Any = print
    results: list[RoundResult] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    def run(self) -> bool:
        """The whole campaign; True when no invariant was violated."""
        work = Path(tempfile.mkdtemp(prefix="hakit-chaos-"))
        marks: dict[str, str] = {}
        limit = self.rounds if self.rounds is not None else 100_000
        faults = schedule(self.seed, limit, self.scenario)
        deadline = time.monotonic() + 60 * self.minutes if self.minutes else None
        scen = Scenario(self.lab, self.scenario, work)
        self.say(f"chaos: building lab {self.lab.name} ({self.scenario}, seed {self.seed})")
        obs: Observer | None = None
        start = time.time()
        try:
            scen.build()
            obs = Observer(scen, marks, limit=24 * 3600)
            inject = Injector(scen, marks, work)
            for fault in faults:
                if deadline is not None and time.monotonic() > deadline:
                    break
                result = self._round(scen, inject, obs, fault)
                self.results.append(result)
                self.say(result.line())
                if result.violations:
                    self.violations += [f"round {fault.round}: {v}" for v in result.violations]
                    break
        except (LabError, WaitTimeout, OSError) as e:
            self.violations.append(f"campaign stopped: {e}")
            self.say(f"chaos: stopped: {e}")
            (work / "error.txt").write_text(traceback.format_exc())
        finally:
            if obs is not None:
                obs.stop()
            if self.lab.exists():
                scen.close()
            samples = obs.samples if obs is not None else []
            write_report(
                self.report,
                scenario=self.scenario,
                seed=self.seed,
                started=start,
                results=self.results,
                samples=samples,
                violations=self.violations,
                logs=scen.logs() if self.lab.exists() else {},
                extra={"ledger": scen.ledger, "work": work} if self.lab.exists() else {},
            )
            shutil.rmtree(work, ignore_errors=True)
        return not self.violations

    # -- one round -----------------------------------------------------------------------

    def _target(self, scen: Scenario, fault: Fault) -> str:
        if fault.target not in ("primary", "secondary"):
            return fault.target
        prim = self._primary(scen)
        return prim if fault.target == "primary" else peer(prim)

    def _primary(self, scen: Scenario) -> str:
        for node in NODES:
            if scen.state(node).startswith(("PRIM", "ALONE")):
                return node
        return NODES[0]

    def _round(self, scen: Scenario, inject: Injector, obs: Observer, fault: Fault) -> RoundResult:
        node = self._target(scen, fault)
        before = {n: obs.samples[-1].phases.get(n, "") for n in NODES} if obs.samples else {}
        t0 = time.time()
        try:
            done = inject.run(fault, node)
        except (LabError, OSError, WaitTimeout) as e:
            inject.repair()
            done = f"fault not completed: {e}"
        t_undo = time.time()
        violations: list[str] = []
        try:
            self._settle(scen)
        except WaitTimeout as e:
            violations.append(f"did not settle within {SETTLE_TIMEOUT:g} s: {e}")
        t_end = time.time()
        samples = obs.since(t0)
        detected = next((s.t - t0 for s in samples if inv.reacted(s, before)), None)
        result = RoundResult(fault, node, done, t0, t_undo, t_end, detected)
        result.decision = self._decision(scen, before)
        ledger = scen.ledger.read_text() if scen.ledger.exists() else ""
        if self.scenario == "farm":
            served, result.outage = inv.farm_round(ledger, t0, t_end)
            result.decision = ", ".join(f"{n} {c}" for n, c in sorted(served.items()))
        else:
            result.outage = inv.longest_gap(inv.ack_times(ledger), t0, t_end)
        if self.scenario == "mirror-witness":
            violations += inv.two_primaries(samples)
            result.stale_hold = inv.stale_holds(samples)
        violations += self._check(scen, result)
        result.violations = violations
        return result

    def _settle(self, scen: Scenario) -> None:
        if self.scenario == "farm":
            for node in NODES:
                scen.wait(node, "UP ready", SETTLE_TIMEOUT)
            return

        def paired() -> bool:
            states = sorted(scen.state(n) for n in NODES)
            return states == ["PRIM ready", "SECOND ready"]

        wait_until(paired, SETTLE_TIMEOUT, "PRIM ready and SECOND ready", interval=0.2)

    def _decision(self, scen: Scenario, before: dict[str, str]) -> str:
        was = next((n for n, p in before.items() if p in inv.PRIMARY_PHASES), "?")
        now = self._primary(scen)
        return f"{now} stayed primary" if now == was else f"{now} took over from {was}"

    def _check(self, scen: Scenario, result: RoundResult) -> list[str]:
        out: list[str] = []
        ledger = scen.ledger.read_text() if scen.ledger.exists() else ""
        if self.scenario == "farm":
            count, failed = inv.unanswered(ledger)
            result.acked, result.present = count, count - len(failed)
            out += inv.farm_failures(failed)
        else:
            acked = inv.parse_acked(ledger)  # read before the records: all must be there
            prim = self._primary(scen)
            present, _ = parse(scen.records(prim))
            out += inv.lost_records(acked, present, prim)
            result.acked = len(acked)
            result.present = sum(1 for n in acked if present.get(n))
            verify = scen.lab.exec(
                prim, ["hakit", "verify", scen.module], capture=True, check=False
            )
            if verify.returncode != 0:
                out.append(f"hakit verify {scen.module}: {(verify.stdout + verify.stderr)[-400:]}")
        for node in NODES:
            pid = scen.lab.daemon_pid(node)
            if pid is None or not alive_pid(pid):
                out.append(f"the daemon of {node} is not running")
        logs = {}
        for name, path in scen.logs().items():
            try:
                logs[name] = path.read_text(errors="replace")
            except OSError:
                continue
        out += inv.tracebacks(logs)
        return out
