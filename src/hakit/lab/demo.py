"""The narrated demo (`hakit lab demo`): a real cluster in the lab, faults, what hakit sees.

Every step runs the real thing: real daemons in namespaces, `hakit state` run inside a node,
real power-off and network cuts. Later capabilities extend the same story.
"""

from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.rule import Rule

from hakit.lab.errors import LabError
from hakit.lab.lab import Lab
from hakit.waiting import wait_until

STEP_TIMEOUT = 15.0


class DemoFailed(LabError):
    pass


class Demo:
    def __init__(self, lab: Lab, console: Console) -> None:
        self.lab = lab
        self.out = console

    def state(self, node: str) -> dict[str, Any]:
        r = self.lab.exec(node, ["hakit", "state", "--json"], capture=True, check=False)
        if r.returncode != 0:
            return {}
        return json.loads(r.stdout)  # type: ignore[no-any-return]

    def show_state(self, node: str) -> None:
        self.out.print(f"[dim]$ hakit lab exec {self.lab.name} {node} -- hakit state[/]")
        r = self.lab.exec(
            node, ["hakit", "state"], capture=True, check=False, env={"COLUMNS": "100"}
        )
        self.out.print(r.stdout.rstrip(), highlight=False, markup=False)

    def events(self, node: str) -> list[dict[str, Any]]:
        path: Path = self.lab.host_path(node, "/var/log/hakit/events.jsonl")
        if not path.exists():
            return []
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]

    def alive(self, observer: str, node: str) -> bool:
        st = self.state(observer)
        return bool(st) and bool(st["nodes"][node]["alive"])

    def sees_all(self, observer: str, nodes: list[str]) -> bool:
        """`observer` sees every node alive on every network."""
        st = self.state(observer)
        return bool(st) and all(
            st["nodes"][m]["alive"] and all(st["nodes"][m]["networks"].values()) for m in nodes
        )

    def lost(self, observer: str, node: str) -> bool:
        st = self.state(observer)
        return bool(st) and not st["nodes"][node]["alive"]

    def step(self, title: str) -> None:
        self.out.print()
        self.out.print(Rule(f"[bold]{title}", align="left"))

    def run(self) -> None:
        lab, out = self.lab, self.out
        nodes = list(lab.nodes)
        self.step("1. Three servers, two networks")
        out.print(
            f"The lab built {len(nodes)} nodes ({', '.join(nodes)}), each with its own network, "
            "mount and host-name namespaces, on networks "
            f"{', '.join(lab.networks)}. The real `hakit daemon` runs on each."
        )
        for n in nodes:
            wait_until(partial(self.sees_all, n, nodes), STEP_TIMEOUT, f"{n} to see all")
        st = self.state("node1")
        hb = st["heartbeat"]
        out.print(
            f"The cluster formed: every node hears every other on every network. Heartbeats go "
            f"every {hb['interval']:g} s, authenticated with the cluster secret; a node silent on "
            f"every network for {hb['timeout']:g} s is lost."
        )
        self.show_state("node1")

        self.step("2. A network fails: nobody is lost")
        for a in nodes:
            for b in nodes:
                if a < b:
                    lab.cut(a, b, network=1)
        out.print(f"Cut network {lab.networks[0]} between all nodes (a switch died).")
        wait_until(
            lambda: not self.state("node1")["nodes"]["node2"]["networks"][lab.networks[0]],
            STEP_TIMEOUT,
            "net1 to be reported down",
        )
        time.sleep(hb["timeout"])  # let a full timeout pass: nobody may be declared lost
        if not all(self.alive("node1", m) for m in nodes):
            raise DemoFailed("demo: a node was lost although a network still works")
        out.print(
            f"{lab.networks[0]} is down everywhere, but every node is still alive: heartbeats "
            f"still flow on {lab.networks[1]}. That is why two networks are recommended."
        )
        self.show_state("node1")
        for a in nodes:
            for b in nodes:
                if a < b:
                    lab.heal(a, b, network=1)
        out.print(f"Network {lab.networks[0]} repaired.")

        self.step("3. Power cut on node3")
        wait_until(
            lambda: all(self.state("node1")["nodes"]["node3"]["networks"].values()), 5, "net1"
        )
        off_at = time.time()
        lab.poweroff("node3")
        out.print("node3 lost its power: every process killed, its network links dead.")
        for n in ("node1", "node2"):
            wait_until(partial(self.lost, n, "node3"), STEP_TIMEOUT, f"{n} to lose node3")
        for n in ("node1", "node2"):
            lost = [
                e for e in self.events(n) if e["kind"] == "peer-lost" and e.get("peer") == "node3"
            ]
            if not lost:
                raise DemoFailed(f"demo: {n} has no timeline entry for the loss of node3")
            out.print(
                f"[bold]{n}[/] detected it {lost[-1]['at'] - off_at:.2f} s after the power cut "
                f"(timeout {hb['timeout']:g} s): “{lost[-1]['message']}”",
                highlight=False,
            )
        self.show_state("node1")

        self.step("4. node3 comes back")
        lab.poweron("node3")
        for n in nodes:
            wait_until(partial(self.sees_all, n, nodes), STEP_TIMEOUT, f"{n} to see all")
        back = [
            e for e in self.events("node1") if e["kind"] == "peer-up" and e.get("peer") == "node3"
        ]
        if back:
            out.print(f"node1: “{back[-1]['message']}”", highlight=False)
        self.show_state("node2")


def run_demo(name: str, *, keep: bool, console: Console | None = None) -> None:
    out = console or Console()
    lab = Lab(name)
    if lab.exists():
        out.print(f"[yellow]removing the lab {name} left by an earlier run[/]")
        lab.down(missing_ok=True)
    out.print(f"[bold]hakit demo[/]: building lab {name} (3 nodes, 2 networks, 1 client)…")
    lab.up(3, 2, 1)
    try:
        Demo(lab, out).run()
        out.print()
        out.print(Rule("[bold green]demo complete", align="left"))
    finally:
        if keep:
            out.print(
                f"The lab is still up: try `hakit lab exec {name} node1 -- hakit state`, "
                f"`hakit lab poweroff {name} node2`, … and `hakit lab down {name}` when done."
            )
        else:
            lab.down()
            out.print(f"lab {name} removed: no namespace, mount or process left behind.")
