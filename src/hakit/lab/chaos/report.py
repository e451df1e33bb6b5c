"""The report of a chaos campaign: a table per round, the invariants' results, the seed, JSON
and a timeline picture (SVG, written by hand: each node's role over time as coloured bars,
the faults marked); on a violation, how to reproduce it and a copy of every node's logs."""

from __future__ import annotations

import html
import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hakit.lab.chaos.invariants import BOOTING, FROZEN, OFF, PRIMARY_PHASES, Sample, segments
from hakit.lab.chaos.schedule import Fault

COLOURS = {
    "primary": "#2e7d32",
    "second": "#1565c0",
    OFF: "#424242",
    FROZEN: "#80deea",
    "up": "#2e7d32",
    "other": "#ffb300",
    "": "#e0e0e0",
}


@dataclass
class RoundResult:
    fault: Fault
    node: str  # the node the fault hit
    done: str  # what the injector did
    start: float  # epoch seconds: fault injected, undone, cluster settled again
    undone: float
    settled: float
    detected: float | None  # seconds from injection to the first role change seen, if any
    decision: str = ""  # mirror: who is primary after it; farm: who answered in the round
    outage: float = 0.0  # mirror: longest time without an acknowledgement; farm: longest wait
    acked: int = 0  # acknowledged records (farm: requests) so far
    present: int = 0  # of those, present and intact on the primary (farm: answered)
    stale_hold: float = 0.0  # s a node resumed from a freeze kept the VIP beside the primary
    violations: list[str] = field(default_factory=list)

    def line(self) -> str:
        det = f"{self.detected:.2f} s" if self.detected is not None else "-"
        ok = "ok" if not self.violations else "VIOLATION: " + "; ".join(self.violations)
        stale = f"  stale VIP {self.stale_hold * 1000:.0f} ms" if self.stale_hold else ""
        return (
            f"round {self.fault.round:3d}  {self.fault.kind:12s} {self.node:6s} "
            f"detected {det:8s} {self.decision:28s} service back after {self.outage:5.2f} s  "
            f"settled {self.settled - self.start:5.1f} s  "
            f"{self.present}/{self.acked}{stale}  {ok}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "fault": self.fault.to_json(),
            "node": self.node,
            "done": self.done,
            "start": round(self.start, 3),
            "undone_after": round(self.undone - self.start, 3),
            "settled_after": round(self.settled - self.start, 3),
            "detected_after": None if self.detected is None else round(self.detected, 3),
            "decision": self.decision,
            "service_back_after": round(self.outage, 3),
            "acked": self.acked,
            "present": self.present,
            "stale_vip_hold": round(self.stale_hold, 3),
            "violations": self.violations,
        }


def role(phase: str) -> str:
    if phase in PRIMARY_PHASES:
        return "primary"
    if phase == BOOTING:
        return OFF
    if phase in (OFF, FROZEN, ""):
        return phase
    if phase.startswith("second"):
        return "second"
    if phase == "up":
        return "up"
    return "other"


def timeline_svg(
    samples: Sequence[Sample], results: Sequence[RoundResult], nodes: Sequence[str]
) -> str:
    """Each node's role over time (bars), each fault a marked span with its round number."""
    width, left, bar, gap = 1200, 70, 26, 14
    if not samples:
        return '<svg xmlns="http://www.w3.org/2000/svg" width="400" height="40"></svg>\n'
    t0, t1 = samples[0].t, max(samples[-1].t, samples[0].t + 1)
    scale = (width - left - 10) / (t1 - t0)
    height = 40 + len(nodes) * (bar + gap) + 60

    def x(t: float) -> float:
        return left + (t - t0) * scale

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="11">',
        f'<text x="{left}" y="14">roles over {t1 - t0:.0f} s (faults in red)</text>',
    ]
    for r in results:
        xa, xb = x(r.start), x(max(r.undone, r.start + 0.2))
        top = 24
        h = len(nodes) * (bar + gap)
        out.append(
            f'<rect x="{xa:.1f}" y="{top}" width="{max(xb - xa, 1):.1f}" height="{h}" '
            f'fill="#ef5350" fill-opacity="0.25"><title>'
            f"{html.escape(r.fault.describe())}: {html.escape(r.done)}</title></rect>"
        )
        out.append(f'<text x="{xa:.1f}" y="{top + h + 10}" fill="#c62828">{r.fault.round}</text>')
    for i, node in enumerate(nodes):
        y = 30 + i * (bar + gap)
        out.append(f'<text x="4" y="{y + bar / 2 + 4:.0f}">{html.escape(node)}</text>')
        for a, b, phase in segments(samples, node):
            colour = COLOURS[role(phase)]
            out.append(
                f'<rect x="{x(a):.1f}" y="{y}" width="{max((b - a) * scale, 0.5):.1f}" '
                f'height="{bar}" fill="{colour}"><title>{html.escape(phase or "?")}</title></rect>'
            )
    y = 40 + len(nodes) * (bar + gap) + 20
    legend = [("primary", "primary"), ("secondary", "second"), ("off", OFF), ("frozen", FROZEN)]
    legend += [("up (farm)", "up"), ("other", "other"), ("unknown", "")]
    for j, (name, colour) in enumerate(legend):
        lx = left + j * 120
        out.append(f'<rect x="{lx}" y="{y}" width="12" height="12" fill="{COLOURS[colour]}"/>')
        out.append(f'<text x="{lx + 16}" y="{y + 10}">{name}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def table(results: Sequence[RoundResult]) -> str:
    head = (
        "round fault        node   detected decision                     service back  "
        "settled  present/acked (farm: answered/requests)"
    )
    return "\n".join([head, *(r.line() for r in results)]) + "\n"


def write_report(
    folder: Path,
    *,
    scenario: str,
    seed: int,
    started: float,
    results: Sequence[RoundResult],
    samples: Sequence[Sample],
    violations: Sequence[str],
    logs: Mapping[str, Path],
    extra: Mapping[str, Path],
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    kinds: dict[str, int] = {}
    for r in results:
        kinds[r.fault.kind] = kinds.get(r.fault.kind, 0) + 1
    failed = next((r.fault.round for r in results if r.violations), None)
    again = f"hakit lab chaos --scenario {scenario} --seed {seed}"
    summary: dict[str, Any] = {
        "scenario": scenario,
        "seed": seed,
        "started": round(started, 3),
        "rounds": len(results),
        "faults": kinds,
        "acknowledged_checked": results[-1].acked if results else 0,
        "samples": len(samples),
        "violations": list(violations),
        "reproduce": None if not violations else f"{again} --rounds {failed or len(results)}",
        "rounds_detail": [r.to_json() for r in results],
    }
    (folder / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    nodes = sorted({n for s in samples for n in s.phases})
    (folder / "timeline.svg").write_text(timeline_svg(samples, results, nodes))
    text = [
        f"hakit lab chaos --scenario {scenario} --seed {seed}: {len(results)} rounds, "
        f"{len(samples)} samples, faults {kinds}",
        table(results),
        "invariants: " + ("all held" if not violations else f"{len(violations)} violated"),
        *(f"  {v}" for v in violations),
    ]
    if summary["reproduce"]:
        text.append(f"reproduce: {summary['reproduce']}")
    (folder / "report.txt").write_text("\n".join(text) + "\n")
    for name, path in extra.items():
        if path.is_file():
            shutil.copyfile(path, folder / name)
        elif path.is_dir() and violations:
            shutil.copytree(path, folder / name, dirs_exist_ok=True)
    if violations:
        for name, path in logs.items():
            dest = folder / "logs" / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                shutil.copyfile(path, dest)
            except OSError:
                continue
