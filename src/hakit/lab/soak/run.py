"""A soak (effects): the mirror-witness and farm scenarios of the chaos campaigns on one lab, a
bulk writer at full speed on the mirror's primary, every core kept busy, no fault — and a
probe of every node from outside every `sample_every` seconds. Then the report.

    Soak(Lab("soak"), minutes=60, report=Path("soak-report")).run()
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hakit.lab.chaos import invariants as inv
from hakit.lab.chaos.records import parse
from hakit.lab.chaos.scenario import DATA, FARM, MODULE, NODES, Scenario
from hakit.lab.errors import LabError
from hakit.lab.lab import Lab, alive_pid
from hakit.lab.namespaces import netns_path, ns_id, pids_in
from hakit.lab.soak import analysis as an

STEADY = {MODULE: ("PRIM ready", "SECOND ready"), FARM: ("UP ready",)}
BULK_DIR = f"{DATA}/bulk"
BULK_STOP = "/srv/soak-bulk-stop"  # in node1
PROGRESS_EVERY = 60.0  # s between two progress lines


def _proc_tree(root: int, pids: list[int]) -> dict[int, str]:
    """The daemon and its hakit children among `pids` (a node's processes): pid -> tag."""
    out = {root: "daemon"}
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == root and "hakit" in cmd:
            out[pid] = "heartbeat" if "hakit.daemon.heartbeat" in cmd else f"child-{pid}"
    return out


def _node_pids(lab: Lab, node: str) -> list[int]:
    ident = ns_id(netns_path(lab.hosts()[node].netns))
    return pids_in([("net", ident)]) if ident is not None else []


def _rss_kib(pid: int) -> int | None:
    try:
        for raw in Path(f"/proc/{pid}/status").read_text().splitlines():
            if raw.startswith("VmRSS:"):
                return int(raw.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


@dataclass
class Soak:
    lab: Lab
    minutes: float
    report: Path = Path("soak-report")
    hogs: int | None = None  # busy processes (default: one per core)
    sample_every: float = 10.0
    say: Any = print
    warm_up: float = an.WARM_UP  # s not counted for growth and percentiles
    probes: list[an.Probe] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    def run(self) -> bool:
        """The whole soak; True when nothing that must not happen happened."""
        work = Path(tempfile.mkdtemp(prefix="hakit-soak-"))
        mirror = Scenario(self.lab, "mirror-witness", work / "mirror")
        farm = Scenario(self.lab, "farm", work / "farm")
        hogs: list[int] = []
        bulk: int | None = None
        try:
            self.say(f"soak: building lab {self.lab.name} (mirror with witness + farm)")
            self.lab.up(len(NODES), 2, 1)
            mirror.install()
            farm.install()
            self.lab.exec("node1", ["mkdir", "-p", BULK_DIR])
            self.lab.host_path("node1", BULK_STOP).unlink(missing_ok=True)
            argv = [sys.executable, "-m", "hakit.lab.soak.bulk", BULK_DIR, BULK_STOP]
            bulk = self.lab.spawn("node1", argv, log=work / "bulk.out")
            count = self.hogs if self.hogs is not None else os.cpu_count() or 1
            hog = [sys.executable, "-c", "while True: pass"]
            hogs = [self.lab.spawn("client1", hog) for _ in range(count)]
            start = time.time()
            self.say(
                f"soak: {self.minutes:g} min: bulk replication on node1, the mirror's ledger "
                f"writer, farm traffic and {count} busy processes; a probe every "
                f"{self.sample_every:g} s"
            )
            self._watch(start, work)
            end = time.time()
            self._stop(bulk, hogs, mirror, farm)
            bulk, hogs = None, []
            self._conclude(start, end, mirror, farm, work)
        except (LabError, OSError) as e:
            self.problems.append(f"the soak could not go on: {e}")
        finally:
            self._stop(bulk, hogs, mirror, farm)
            self._write(work)
            shutil.rmtree(work, ignore_errors=True)
        return not self.problems

    # -- while it runs -------------------------------------------------------------------

    def _watch(self, start: float, work: Path) -> None:
        deadline = time.monotonic() + 60 * self.minutes
        next_line = time.monotonic() + PROGRESS_EVERY
        while time.monotonic() < deadline:
            t = time.monotonic()
            for node in NODES:
                self.probes.append(self._probe(node))
            if time.monotonic() >= next_line:
                next_line += PROGRESS_EVERY
                self.say(self._progress(start, work))
            time.sleep(max(0.0, min(self.sample_every - (time.monotonic() - t), deadline - t)))

    def _probe(self, node: str) -> an.Probe:
        t = time.time()
        rss: dict[str, int] = {}
        fds: dict[str, int] = {}
        root = self.lab.daemon_pid(node)
        if root is not None and alive_pid(root):
            for pid, tag in _proc_tree(root, _node_pids(self.lab, node)).items():
                if (r := _rss_kib(pid)) is not None:
                    rss[tag] = r
                if (f := _fds(pid)) is not None:
                    fds[tag] = f
        states: dict[str, str] = {}
        gaps: dict[str, Any] = {}
        lag: Any = None
        doc = self._status(node)
        if doc is not None:
            for module in STEADY:
                mine = (doc.get("modules", {}).get(module) or {}).get("nodes", {}).get(node)
                if isinstance(mine, dict):
                    states[module] = f"{mine.get('state')} {mine.get('status')}"
            for peer, p in (doc.get("nodes") or {}).items():
                if peer != node and isinstance(p, dict):
                    for net, h in (p.get("heartbeat_gaps_by_network") or {}).items():
                        gaps[f"{peer}/{net}"] = h
            lag = (doc.get("daemon") or {}).get("loop_lag")
        return an.Probe(t, node, rss, fds, states, gaps, lag)

    def _status(self, node: str) -> dict[str, Any] | None:
        try:
            r = self.lab.exec(
                node, ["hakit", "state", "--json"], capture=True, check=False, timeout=20
            )
        except LabError:
            return None
        with contextlib.suppress(ValueError):
            doc = json.loads(r.stdout)
            return doc if isinstance(doc, dict) else None
        return None

    def _progress(self, start: float, work: Path) -> str:
        mins = (time.time() - start) / 60
        last = {p.node: p for p in self.probes[-len(NODES) :]}
        states = "; ".join(
            f"{n} " + ", ".join(f"{m} {s}" for m, s in sorted(p.states.items()))
            for n, p in sorted(last.items())
        )
        mem = ", ".join(f"{n} {sum(p.rss_kib.values()) / 1024:.0f} MiB" for n, p in last.items())
        rate, errors, _ = an.throughput(_read(work / "bulk.out"), start + self.warm_up)
        return f"soak: {mins:5.1f} min  {states}  daemons {mem}  bulk {rate:.0f} MB/s" + (
            f" ({errors} write errors)" if errors else ""
        )

    # -- the end ---------------------------------------------------------------------------

    def _stop(self, bulk: int | None, hogs: list[int], mirror: Scenario, farm: Scenario) -> None:
        for pid in hogs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if bulk is not None:
            with contextlib.suppress(LabError, OSError):
                self.lab.host_path("node1", BULK_STOP).touch()
            for _ in range(100):
                if not alive_pid(bulk):
                    break
                time.sleep(0.1)
            with contextlib.suppress(ProcessLookupError):
                os.kill(bulk, signal.SIGKILL)
        for scen in (mirror, farm):
            scen.close()

    def _conclude(
        self, start: float, end: float, mirror: Scenario, farm: Scenario, work: Path
    ) -> None:
        events: list[dict[str, Any]] = []
        for node in NODES:
            path = self.lab.host_path(node, "/var/log/hakit/events.jsonl")
            for raw in _read(path).splitlines():
                with contextlib.suppress(ValueError):
                    e = json.loads(raw)
                    if isinstance(e, dict):
                        events.append(e | {"node": e.get("node") or node})
        false = an.false_failovers(events, start, end)
        self.problems += [f"false failover: {f}" for f in false]
        wobbly = an.unsteady(self.probes, STEADY)
        self.problems += [f"not steady: {w}" for w in wobbly[:20]]
        since = start + self.warm_up
        self.problems += an.leaks(self.probes, NODES, since)
        for node in NODES:
            pid = self.lab.daemon_pid(node)
            if pid is None or not alive_pid(pid):
                self.problems.append(f"the daemon of {node} is not running")
        logs = {}
        for scen in (mirror, farm):
            for name, path in scen.logs().items():
                logs[name] = _read(path)
        self.problems += inv.tracebacks(logs)
        acked = inv.parse_acked(_read(mirror.ledger))
        prim = next((n for n in NODES if mirror.state(n).startswith("PRIM")), NODES[0])
        present, _ = parse(mirror.records(prim))
        self.problems += inv.lost_records(acked, present, prim)
        requests, unanswered = inv.unanswered(_read(farm.ledger))
        self.problems += inv.farm_failures(unanswered)
        rate, errors, span = an.throughput(_read(work / "bulk.out"), since)
        if errors:
            self.problems.append(f"the bulk writer saw {errors} write errors")
        self.summary = {
            "minutes": round((end - start) / 60, 2),
            "probes": len(self.probes),
            "false_failovers": len(false),
            "heartbeat_link_losses": an.link_losses(events, start, end),
            "bulk_mb_per_s": round(rate, 1),
            "bulk_seconds": round(span, 1),
            "ledger_records_checked": len(acked),
            "farm_requests": requests,
            "farm_unanswered": len(unanswered),
            "nodes": {
                node: {
                    "memory_mib": _json(an.memory(self.probes, node, since)),
                    "descriptors": _json(an.descriptors(self.probes, node, since)),
                    "event_loop_lag_s": an.lag_spread(self.probes, node, since),
                    "heartbeat_gaps_s": an.gap_spread(self.probes, node, since),
                }
                for node in NODES
            },
        }

    def _write(self, work: Path) -> None:
        self.report.mkdir(parents=True, exist_ok=True)
        doc = {"summary": self.summary, "problems": self.problems}
        (self.report / "report.json").write_text(json.dumps(doc, indent=2) + "\n")
        with (self.report / "probes.jsonl").open("w") as f:
            for p in self.probes:
                row = {"t": p.t, "node": p.node, "rss_kib": dict(p.rss_kib)}
                f.write(json.dumps(row | {"fds": dict(p.fds), "states": dict(p.states)}) + "\n")
        (self.report / "report.txt").write_text(text(self.summary, self.problems))
        if self.problems:
            for node in NODES:
                with contextlib.suppress(LabError, OSError):
                    src = self.lab.host_path(node, "/var/log/hakit")
                    shutil.copytree(src, self.report / "logs" / node, dirs_exist_ok=True)
            with contextlib.suppress(OSError):
                shutil.copy(work / "bulk.out", self.report / "bulk.out")


def _json(g: an.Growth | None) -> dict[str, float] | None:
    return None if g is None else g.to_json()


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _ms(v: Any) -> str:
    if not isinstance(v, int | float):
        return "-"
    return "inf" if v == float("inf") else f"{v * 1000:.0f} ms"


def text(summary: dict[str, Any], problems: list[str]) -> str:
    """The report as the user reads it."""
    if not summary:
        return "soak: no result\n" + "".join(f"  {p}\n" for p in problems)
    s = summary
    lines = [
        f"soak: {s['minutes']:g} min, {s['probes']} probes",
        f"false failovers: {s['false_failovers']}   heartbeat network losses: "
        f"{s['heartbeat_link_losses']}",
        f"bulk replication: {s['bulk_mb_per_s']:g} MB/s (1 MiB writes + fsync, sync mode)",
        f"mirror ledger: {s['ledger_records_checked']} acknowledged records, all present"
        if not any("acknowledged records" in p for p in problems)
        else "mirror ledger: records missing (below)",
        f"farm: {s['farm_requests']} requests, {s['farm_unanswered']} unanswered",
        "",
        "node    daemon memory MiB (after warm-up → end, MiB/h)   descriptors   loop lag "
        "p50/p99/max   heartbeat gap p50/p99/p99.9/max",
    ]
    for node, n in s["nodes"].items():
        mem, fds = n["memory_mib"] or {}, n["descriptors"] or {}
        lag, gap = n["event_loop_lag_s"] or {}, (n["heartbeat_gaps_s"] or {}).get("all", {})
        lines.append(
            f"{node:7s} {mem.get('first', 0):.1f} → {mem.get('last', 0):.1f} "
            f"({mem.get('per_hour', 0):+.2f}/h)   {fds.get('first', 0):.0f} → "
            f"{fds.get('last', 0):.0f}   {_ms(lag.get('p50'))}/{_ms(lag.get('p99'))}/"
            f"{_ms(lag.get('max_since_start'))}   {_ms(gap.get('p50'))}/{_ms(gap.get('p99'))}/"
            f"{_ms(gap.get('p99.9'))}/{_ms(gap.get('max_since_start'))}"
        )
    lines += ["", "problems: none" if not problems else f"problems: {len(problems)}"]
    lines += [f"  {p}" for p in problems]
    return "\n".join(lines) + "\n"
