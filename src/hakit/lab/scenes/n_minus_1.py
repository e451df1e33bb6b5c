"""N-1: two applications on their own servers share one backup server; both servers fail at
once, the backup runs both (and says it carries more than it was sized for); both go home."""

from __future__ import annotations

import json
import time

from hakit.lab.narrator import DemoFailed
from hakit.lab.scenes.base import Scene

A_URL = "http://10.100.1.141:8081"
B_URL = "http://10.100.1.142:8082"
NODE3 = "      net1: 10.100.1.13\n"


class NMinus1(Scene):
    name = "n-1"
    summary = "two applications sharing one backup server; two power cuts at once; failback"
    nodes = 3

    @classmethod
    def cluster(cls, text: str) -> str:
        if NODE3 not in text:
            raise DemoFailed("demo: the lab's cluster.yaml has no node3 address line")
        return text.replace(NODE3, NODE3 + "    max_primaries: 1\n")

    def run(self) -> None:
        lab = self.lab
        self.step("1. Two servers, one shared backup")
        self.say(
            "`appa` runs on node1, `appb` on node2; node3 is the backup of both (appa on "
            "[node1, node3], appb on [node2, node3], each with default_primary its own server). "
            "cluster.yaml says node3 can carry one primary: `max_primaries: 1`."
        )
        self.install(self.web_app("appa", ["node1", "node3"], 1, default_primary="node1"))
        self.install(self.web_app("appb", ["node2", "node3"], 2, default_primary="node2"))
        self.start_mirror("appa", "node1", "node3")
        self.start_mirror("appb", "node2", "node3")
        self.write("node1", "/srv/appa/www/order", "order a-1")
        self.write("node2", "/srv/appb/www/order", "order b-1")
        self.show_state("node3")

        self.step("2. node1 and node2 lose their power at once")
        off = time.time()
        lab.poweroff("node1")
        lab.poweroff("node2")
        self.wait_module("node3", "appa", "ALONE ready", 30)
        self.wait_module("node3", "appb", "ALONE ready", 30)
        self.say(f"Both applications run on node3 {time.time() - off:.1f} s after the cuts:")
        self.expect_page(f"{A_URL}/order", "order a-1", "appa's data on node3")
        self.expect_page(f"{B_URL}/order", "order b-1", "appb's data on node3")
        st = json.loads(self.hakit("node3", "state", "--json", quiet=True))
        if not st.get("capacity", {}).get("over"):
            raise DemoFailed(
                f"demo: node3 does not report its capacity exceeded: {st.get('capacity')}"
            )
        self.say(
            "node3 took both over (availability first) and says it carries more than it was "
            "sized for — in `hakit state`, in its timeline (capacity-warning) and in the JSON:"
        )
        self.show_state("node3")

        self.step("3. Power is back: each application goes home")
        back = time.time()
        for node in ("node1", "node2"):
            self.power_on(node)
        self.wait_module("node1", "appa", "PRIM ready", 120)
        self.wait_module("node2", "appb", "PRIM ready", 120)
        self.expect_page(f"{A_URL}/", "served by node1", "appa on node1 again")
        self.expect_page(f"{B_URL}/", "served by node2", "appb on node2 again")
        self.say(
            f"Both are home {time.time() - back:.1f} s after power-on: each server was "
            "resynchronised, then each module failed back to its default primary."
        )
        self.timeline("node3", "appa", back, limit=5)
        self.wait_module("node3", "appa", "SECOND ready", 60)
        self.wait_module("node3", "appb", "SECOND ready", 60)
        st = json.loads(self.hakit("node3", "state", "--json", quiet=True))
        kinds = [e["kind"] for e in self.events("node3")]
        if st["capacity"]["over"] or kinds.count("capacity-warning") != 1:
            raise DemoFailed(f"demo: node3's capacity after the failback: {st['capacity']}")
        if kinds.count("capacity") != 1:
            raise DemoFailed("demo: node3's timeline does not say it is back within capacity")
        self.say("node3 is back within its capacity, and its timeline says so:")
        for e in self.events("node3"):
            if e["kind"] in ("capacity-warning", "capacity"):
                self.say(f"  {e['kind']}: {e['message']}")
        self.show_state("node3")
