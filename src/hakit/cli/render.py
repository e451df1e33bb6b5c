"""Human rendering of the status document (rich)."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from hakit.cli.replication import progress_line

STATUS_STYLE = {"ready": "green", "transient": "yellow", "not-ready": "red"}


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 10:
        return f"{seconds:.2f} s ago"
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() - seconds))


def render_state(st: dict[str, Any], console: Console) -> None:
    hb = st["heartbeat"]
    console.print(
        Text.assemble(
            ("cluster ", "bold"),
            (st["cluster"], "bold cyan"),
            "  seen from ",
            (st["node"], "bold"),
            f"  (heartbeat every {hb['interval']:g} s, lost after {hb['timeout']:g} s)",
        )
    )
    networks = list(st["networks"])
    table = Table(show_edge=False, header_style="bold")
    table.add_column("node")
    table.add_column("state")
    for n in networks:
        table.add_column(n)
    table.add_column("last heard")
    for name, node in st["nodes"].items():
        if node["state"] == "self":
            state = Text("alive (this node)", style="green")
        elif node["alive"]:
            state = Text("alive", style="green")
        elif node["state"] == "unknown":
            state = Text("unknown", style="yellow")
        else:
            state = Text("LOST", style="bold red")
        cells: list[Text | str] = []
        for n in networks:
            if n not in node["networks"]:
                cells.append(Text("-", style="dim"))
            elif node["networks"][n]:
                cells.append(Text("up", style="green"))
            else:
                cells.append(Text("down", style="red"))
        heard = "" if node["state"] == "self" else _ago(node.get("last_heard_ago"))
        table.add_row(name, state, *cells, heard)
    console.print(table)
    releases = {name: n.get("release") for name, n in st["nodes"].items() if n.get("release")}
    if len(set(releases.values())) > 1:
        parts = ", ".join(f"{name} {r}" for name, r in releases.items())
        console.print(
            Text(
                f"nodes run different hakit releases ({parts}): a rolling upgrade in progress; "
                "finish it (docs/compatibility.md)",
                style="yellow",
            )
        )
    cap = st.get("capacity") or {}
    if cap.get("over"):
        console.print(
            Text(
                f"{st['node']} runs {len(cap['primaries'])} primaries "
                f"({', '.join(cap['primaries'])}), more than its max_primaries "
                f"{cap['max_primaries']}",
                style="yellow",
            )
        )
    rejected = hb.get("rejected") or {}
    if rejected:
        parts = ", ".join(f"{k} {v}" for k, v in sorted(rejected.items()))
        console.print(Text(f"heartbeats rejected: {parts}", style="yellow"))
    for net, err in (hb.get("network_problems") or {}).items():
        console.print(Text(f"network {net}: {err}", style="bold red"))
    pending = (st.get("daemon") or {}).get("config_pending_restart")
    if pending:
        console.print(
            Text(
                f"cluster.yaml changed {', '.join(pending)}: taken when this daemon restarts "
                "(which stops its modules: one node at a time)",
                style="yellow",
            )
        )
    if not st["modules"]:
        console.print(Text("no modules installed", style="dim"))
        return
    mods = Table(show_edge=False, header_style="bold")
    mods.add_column("module")
    for name in st["nodes"]:
        mods.add_column(name)
    mods.add_column("")
    for mname, mod in st["modules"].items():
        mcells: list[Text | str] = []
        for node in st["nodes"]:
            n = mod.get("nodes", {}).get(node)
            if n is None:
                mcells.append(Text("-", style="dim"))
                continue
            colour = STATUS_STYLE.get(n["status"], "")
            label = f"{n['state']} {n['status']}"
            if mod.get("kind") == "farm" and n.get("state") == "UP":
                label += f" {n.get('share', 0):g}%"
            if n.get("reachable") is False:
                label, colour = "unreachable", "dim"
            mcells.append(Text(label, style=colour))
        me = mod.get("nodes", {}).get(st["node"], {})
        note = mod.get("error") or me.get("blocked") or ""
        style = "yellow"
        if mod.get("unprotected"):
            note, style = f"UNPROTECTED, {mod['unprotected']}", "bold red"
        if not mod.get("failover", True):
            note = ("failover off; " + note) if note else "failover off"
        mods.add_row(mname, *mcells, Text(note.splitlines()[0] if note else "", style=style))
    console.print(mods)
    for mname, mod in st["modules"].items():
        if mod.get("kind") == "farm" and mod.get("nodes"):
            console.print(Text(f"{mname}: {farm_line(mod)}", style="cyan"))
        progress = (mod.get("replication") or {}).get("progress")
        if progress:
            console.print(Text(f"{mname}: {progress_line(progress)}", style="cyan"))
        for line, style in checker_lines(mod):
            console.print(Text(f"{mname}: {line}", style=style))
        sb = mod.get("split_brain") or {}
        if sb.get("asking") or (sb.get("granted") is False and sb.get("arbiter")):
            style = "yellow" if sb.get("asking") else "dim"
            console.print(Text(f"{mname}: arbiter: {sb.get('arbiter')}", style=style))
        kept = (mod.get("replication") or {}).get("diverged_copy_kept")
        if kept:
            console.print(
                Text(
                    f"{mname}: diverged copy kept in {kept['folder']} ({kept['entries']} "
                    "entries; see REPORT.txt there)",
                    style="magenta",
                )
            )


HEALTH_STYLE = {"up": "green", "down": "bold red", "unknown": "yellow", "off": "magenta"}


def checker_lines(mod: dict[str, Any]) -> list[tuple[str, str]]:
    """One line per checker that is active, down or switched off, and the loop protection."""
    out = []
    for name, c in (mod.get("checkers") or {}).items():
        if c["health"] == "idle":
            continue
        what = f"checker {name} ({c['what']}, {c['when']}, {c['action']}): {c['health']}"
        if c["health"] == "off":
            what += " — switched off for maintenance"
        elif c.get("detail"):
            what += f" — {c['detail']}"
        out.append((what, HEALTH_STYLE.get(c["health"], "")))
    rec = mod.get("recovery") or {}
    if rec.get("used"):
        out.append(
            (
                f"automatic recoveries: {rec['used']} of {rec['max']} in the last "
                f"{rec['window']:g} s",
                "yellow",
            )
        )
    return out


def farm_line(mod: dict[str, Any]) -> str:
    """`buckets node1 86 (w 1) · node2 85 (w 1) …; epoch …; VIPs …; virtual MAC …`."""
    parts = [f"{n} {v.get('buckets', 0)} (w {v.get('weight', 1)})" for n, v in mod["nodes"].items()]
    epoch = f"epoch {mod['epoch']}" if mod.get("epoch") else "view not agreed yet"
    unowned = mod.get("unowned") or 0
    tail = f"; {unowned} buckets without owner" if unowned and mod.get("view") else ""
    return (
        f"buckets {' · '.join(parts)} of 256; {epoch}{tail}; VIPs "
        f"{', '.join(mod.get('vips', []))} via virtual MAC {mod.get('virtual_mac')}"
    )
