"""The narrated demo (`hakit lab demo`): a real cluster in the lab, faults, what hakit sees.

Every step runs the real thing: real daemons in namespaces, `hakit state` run inside a node,
real power-off and network cuts. Later capabilities extend the same story.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable
from functools import partial
from importlib import resources
from typing import Any

from rich.console import Console
from rich.rule import Rule

from hakit.lab.errors import LabError
from hakit.lab.lab import Lab
from hakit.lab.narrator import DemoFailed, Narrator
from hakit.lab.scenes import SCENES, build_lab
from hakit.waiting import wait_until

STEP_TIMEOUT = 15.0
VIP = "10.100.1.100"
FARM_VIP = "10.100.1.200"
CLIENT_LOG = "/srv/demo-client.log"
CLIENT = """
import time, urllib.request
end = time.monotonic() + 90
with open("{log}", "a") as f:
    while time.monotonic() < end:
        try:
            who = urllib.request.urlopen("http://{vip}:8080/", timeout=0.2).read().decode()
            f.write(f"{{time.time()}} {{who.split()[-1]}}\\n")
        except OSError:
            f.write(f"{{time.time()}} -\\n")
        f.flush()
        time.sleep(0.05)
"""


class Demo(Narrator):
    """The tour: a cluster forms, survives a network cut and a power cut, then a mirror and a
    farm module at work (the default scene)."""

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
        self.mirror()
        self.farm()

    def client_log(self) -> list[tuple[float, str]]:
        path = self.lab.host_path("client1", CLIENT_LOG)
        if not path.exists():
            return []
        rows = []
        for line in path.read_text().splitlines():
            t, _, who = line.partition(" ")
            rows.append((float(t), who))
        return rows

    def served_by(self, node: str) -> bool:
        rows = self.client_log()
        return bool(rows) and rows[-1][1] == node

    def mirror(self) -> None:
        lab, out = self.lab, self.out
        self.step("5. A mirror module: an application behind a virtual IP, on node1 and node2")
        example = resources.files("hakit") / "examples" / "mirror-web"
        out.print(
            "The module `mirror-web` runs a web server on the primary only; clients use the "
            f"virtual IP {VIP}. It is installed on every node with one command, then started: "
            "`prim` on the node with the good data, `second` on the other."
        )
        self.hakit("node1", "module", "install", str(example), "--all")
        wait_until(lambda: "mirror-web" in self.state("node2").get("modules", {}), 10, "module")
        self.hakit("node1", "prim", "mirror-web")
        self.hakit("node1", "second", "mirror-web", "--node", "node2")
        self.hakit("node1", "wait", "mirror-web", "PRIM", "--timeout", "20")
        self.hakit("node2", "wait", "mirror-web", "SECOND", "--timeout", "20")
        lab.spawn("client1", ["python3", "-c", CLIENT.format(vip=VIP, log=CLIENT_LOG)])
        wait_until(partial(self.served_by, "node1"), 10, "the client to be served")
        out.print(f"client1 asks http://{VIP}:8080/ every 50 ms: served by node1.")
        self.show_state("node2")

        out.print(
            "Its pages in /srv/mirror-web/www are replicated: node1 serves them through a FUSE "
            "mount over the directory, and every write is on node2 before it returns. We publish "
            "20 pages of 256 KiB on node1:"
        )
        self.publish("node1", range(1, 21))
        self.check_page("node2", 20, "the secondary's copy (read-only there)")
        time.sleep(5)  # the site runs a little before the power cut

        self.step("6. Power cut on the primary: node2 takes over")
        off_at = time.time()
        lab.poweroff("node1")
        out.print("node1 lost its power while client1 was being served.")
        wait_until(partial(self.served_by, "node2"), STEP_TIMEOUT, "the client to reach node2")
        rows = self.client_log()
        last1 = max(t for t, who in rows if who == "node1")
        first2 = min(t for t, who in rows if who == "node2" and t > off_at)
        out.print(
            f"client1 was answered by node2 {first2 - off_at:.2f} s after the power cut "
            f"(no answer for {first2 - last1:.2f} s). What node2 decided, and why:"
        )
        for e in self.events("node2"):
            if e.get("module") == "mirror-web" and e["at"] >= off_at:
                out.print(f"  +{e['at'] - off_at:.2f} s  {e['message']}", highlight=False)
        self.show_state("node2")
        self.check_page("client1", 20, "the page published on node1, served by node2")
        out.print("While node1 is away, page 3 changes and page 21 is published on node2:")
        self.publish("node2", [3, 21])

        self.step("7. node1 comes back: secondary, resynchronised with only the changes")
        lab.poweron("node1")
        self.hakit("node1", "wait", "mirror-web", "SECOND", "--timeout", "60")
        out.print(
            "node1 was primary before the cut; node2 has newer data since, so node1 joins as "
            "secondary and the service stays on node2: no second interruption. node2 tracked "
            "what it changed while node1 was away; node1 went down as a primary, so it may hold "
            "writes that never reached node2, and its activity log (kept on disk) says where. "
            "Only those regions are compared by checksum, and only blocks that differ are sent "
            "— not the 7 MiB of the site:"
        )

        def resync_lines() -> list[str]:
            return [
                e["message"]
                for e in self.events("node2")
                if e.get("module") == "mirror-web" and "synchronised:" in e["message"]
            ]

        lines = wait_until(resync_lines, 10, "the resynchronisation report")
        out.print(f"  {lines[-1]}", highlight=False)
        self.check_page("node1", 21, "node1's copy")
        self.hakit("node2", "verify", "mirror-web")
        self.show_state("node1")

    def publish(self, node: str, pages: Iterable[int]) -> None:
        script = (
            "for i in " + " ".join(str(p) for p in pages) + "; do "
            "head -c 262144 /dev/urandom | base64 -w0 > /srv/mirror-web/www/page$i.html.tmp && "
            "mv /srv/mirror-web/www/page$i.html.tmp /srv/mirror-web/www/page$i.html; done && "
            "sync /srv/mirror-web/www/page*.html && ls /srv/mirror-web/www | wc -l"
        )
        self.out.print(f"[dim]$ hakit lab exec {self.lab.name} {node} -- sh -c '…write pages…'[/]")
        r = self.lab.exec(node, ["sh", "-c", script], capture=True, check=False)
        if r.returncode != 0:
            raise DemoFailed(f"demo: writing pages on {node} failed: {r.stderr.strip()}")

    def check_page(self, where: str, page: int, what: str) -> None:
        """Page `page` as seen from `where` (a node's directory, or the client via the VIP)."""
        if where == "client1":
            code = (
                "import urllib.request as u, hashlib; "
                f"print(hashlib.sha256(u.urlopen('http://{VIP}:8080/page{page}.html', "
                "timeout=5).read()).hexdigest()[:16])"
            )
            argv = ["python3", "-c", code]
        else:
            argv = ["sh", "-c", f"sha256sum /srv/mirror-web/www/page{page}.html | cut -c1-16"]
        r = self.lab.exec(where, argv, capture=True, check=False)
        if r.returncode != 0:
            raise DemoFailed(f"demo: page{page}.html not readable on {where}: {r.stderr.strip()}")
        self.out.print(f"  page{page}.html on {where} ({what}): sha256 {r.stdout.strip()}…")

    def webclient(self, count: int) -> dict[str, Any]:
        argv = [sys.executable, "-m", "hakit.lab.webclient", FARM_VIP, "--count", str(count)]
        r = self.lab.exec("client1", [*argv, "--timeout", "1"], capture=True, check=False)
        if r.returncode != 0:
            raise DemoFailed(f"demo: the web client failed: {r.stderr.strip()}")
        out: dict[str, Any] = json.loads(r.stdout)
        served = ", ".join(f"{n} {c}" for n, c in sorted(out["served"].items()))
        self.out.print(
            f"client1 opened {count} connections to http://{FARM_VIP}/: served by {served}"
            + (f"; {out['failed']} failed" if out["failed"] else "; none failed"),
            highlight=False,
        )
        return out

    def farm_buckets(self, node: str) -> dict[str, int]:
        mod = self.state(node).get("modules", {}).get("farm-web", {})
        return {n: v.get("buckets", 0) for n, v in mod.get("nodes", {}).items()}

    def farm_settled(self, nodes: list[str]) -> bool:
        mods = [self.state(n).get("modules", {}).get("farm-web", {}) for n in nodes]
        epochs = {m.get("epoch") for m in mods}
        ready = all(m["nodes"][n]["status"] == "ready" for m, n in zip(mods, nodes, strict=True))
        owned = sum(self.farm_buckets(nodes[0]).get(n, 0) for n in nodes)
        return ready and len(epochs) == 1 and None not in epochs and owned == 256

    def farm(self) -> None:
        lab, out = self.lab, self.out
        nodes = list(lab.nodes)
        self.step("8. A farm module: nginx on all three nodes behind one virtual IP")
        example = resources.files("hakit") / "examples" / "farm-web"
        out.print(
            f"The module `farm-web` runs nginx on every node; every node holds {FARM_VIP}, and "
            "clients resolve it to a virtual MAC no node ever sends from, so the switch floods "
            "their packets to all nodes. A packet filter on each node accepts only the new "
            "connections whose hash falls in the node's buckets (256 in all): no balancer box, "
            "no kernel module."
        )
        self.hakit("node1", "module", "install", str(example), "--all")
        wait_until(lambda: all(self.farm_buckets(n) for n in nodes), STEP_TIMEOUT, "loaded")
        self.hakit("node1", "start", "farm-web", "--all")
        wait_until(partial(self.farm_settled, nodes), 30, "the farm to settle")
        self.show_state("node1")
        self.webclient(300)

        self.step("9. Power cut on node3: its share moves to node1 and node2")
        off_at = time.time()
        lab.poweroff("node3")
        wait_until(partial(self.farm_settled, ["node1", "node2"]), STEP_TIMEOUT, "takeover")
        taken = [
            e
            for e in self.events("node1")
            if e.get("module") == "farm-web" and "lost: node3" in e["message"]
        ]
        if taken:
            out.print(
                f"node1, {taken[-1]['at'] - off_at:.2f} s after the power cut: "
                f"“{taken[-1]['message']}”",
                highlight=False,
            )
        r = self.webclient(300)
        if r["failed"] or "node3" in r["served"]:
            raise DemoFailed("demo: connections failed after node3's share moved")
        lab.poweron("node3")
        out.print("node3 is powered on again: the module resumes there and takes its share back.")
        wait_until(partial(self.farm_settled, nodes), 30, "node3 to rejoin the farm")
        b = self.farm_buckets("node1")
        out.print("buckets now: " + ", ".join(f"{n} {b.get(n, 0)}" for n in nodes), highlight=False)
        self.webclient(300)

        self.step("10. A checker at work: nginx dies on node2")
        out.print(
            "farm-web has a tcp checker on port 80 (every 0.5 s, 2 failures in a row): node2 "
            "leaves the farm (its share goes to the others), restarts nginx, and rejoins once "
            "the checker passes again (docs/checkers.md)."
        )
        since = time.time()
        lab.exec(
            "node2",
            ["nginx", "-c", "/srv/farm-web/nginx.conf", "-s", "stop"],
            capture=True,
            check=False,
        )
        wait_until(
            lambda: any(
                "checkers pass" in e["message"] and e["at"] > since for e in self.events("node2")
            ),
            STEP_TIMEOUT,
            "node2 to restart nginx and rejoin",
        )
        wait_until(partial(self.farm_settled, nodes), 30, "the farm to settle again")
        for e in self.events("node2"):
            if e.get("module") == "farm-web" and e["at"] > since and "exited 0" not in e["message"]:
                out.print(f"node2: “{e['message']}”", highlight=False)
        self.webclient(300)


def run_demo(
    name: str,
    *,
    keep: bool,
    scene: str = "tour",
    console: Console | None = None,
    web_console: bool = False,
    console_port: int = 7380,
) -> None:
    """The tour (`scene` "tour") or one of the architecture scenes (hakit.lab.scenes)."""
    out = console or Console()
    story = SCENES.get(scene)
    if scene != "tour" and story is None:
        raise LabError(f"no scene {scene!r}: choose one of tour, {', '.join(SCENES)}")
    if story is not None and (why := story.missing()):
        raise LabError(f"the scene {scene} cannot run here: {why}")
    lab = Lab(name)
    if lab.exists():
        out.print(f"[yellow]removing the lab {name} left by an earlier run[/]")
        lab.down(missing_ok=True)
    if story is None:
        out.print(f"[bold]hakit demo[/]: building lab {name} (3 nodes, 2 networks, 1 client)…")
        lab.up(3, 2, 1)
    else:
        out.print(
            f"[bold]hakit demo --scene {scene}[/]: {story.summary}; building lab {name} "
            f"({story.nodes} nodes, 1 network, 1 client)…",
            highlight=False,
        )
        try:
            build_lab(lab, story)
        except BaseException:
            lab.down(missing_ok=True)
            raise
    if web_console:
        keep = True  # the console shows the lab: both stay until `hakit lab down`
    try:
        if web_console:
            from hakit.lab.democonsole import start_console

            web = start_console(lab, console_port)
            out.print(
                f"[bold]web console[/]: {web.url}  user [bold]{web.user}[/], password "
                f"[bold]{web.password}[/] (a self-signed certificate: accept it in the "
                f"browser; its log: {web.log})",
                highlight=False,
            )
        if story is None:
            Demo(lab, out).run()
        else:
            told = story(lab, out)
            try:
                told.run()
            finally:
                if not keep:
                    told.close()
        out.print()
        out.print(Rule("[bold green]demo complete", align="left"))
    finally:
        if keep:
            out.print(
                f"The lab is still up: try `hakit lab exec {name} node1 -- hakit state`, "
                f"`hakit lab poweroff {name} node2`, … and `hakit lab down {name}` when done."
            )
            if web_console:
                out.print(
                    f"The web console shows it at https://127.0.0.1:{console_port}/ until then "
                    "(try a power-off and watch it there)."
                )
        else:
            lab.down()
            out.print(f"lab {name} removed: no namespace, mount or process left behind.")
