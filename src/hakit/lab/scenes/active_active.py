"""active/active: two applications on two servers, each preferring its own; both on the
server left after a failure, each back on its own once its server returns (failback)."""

from __future__ import annotations

import time

from hakit.lab.scenes.base import Scene

A_URL = "http://10.100.1.141:8081"
B_URL = "http://10.100.1.142:8082"
DELAY = 3


class ActiveActive(Scene):
    name = "active-active"
    summary = "two mirror modules, each preferring its own server; failure, return, failback"
    nodes = 2

    def run(self) -> None:
        lab = self.lab
        self.step("1. Two applications, each on its own server, each the other's backup")
        self.say(
            "`appa` prefers node1 (default_primary: node1, failback_delay: "
            f"{DELAY}), `appb` prefers node2 (default_primary: node2, at once). Both servers "
            "work in normal times; each holds a synchronous copy of the other's data."
        )
        self.install(
            self.web_app(
                "appa", ["node1", "node2"], 1, default_primary="node1", failback_delay=DELAY
            )
        )
        self.install(self.web_app("appb", ["node1", "node2"], 2, default_primary="node2"))
        self.start_mirror("appa", "node1", "node2")
        self.start_mirror("appb", "node2", "node1")
        self.expect_page(f"{A_URL}/", "served by node1", "appa on its server")
        self.expect_page(f"{B_URL}/", "served by node2", "appb on its server")
        self.show_state("node1")

        self.step("2. Power cut on node1: node2 runs both")
        off = time.time()
        lab.poweroff("node1")
        self.wait_module("node2", "appa", "ALONE ready", 30)
        self.expect_page(f"{A_URL}/", "served by node2", "appa taken over by node2")
        self.say(f"appa runs on node2 {time.time() - off:.1f} s after the cut; appb never moved:")
        self.expect_page(f"{B_URL}/", "served by node2", "appb untouched")
        self.write("node2", "/srv/appa/www/note", "written on node2 while node1 was away")

        self.step("3. node1 returns: appa is resynchronised, then goes home")
        back = time.time()
        self.power_on("node1")
        self.wait_module("node1", "appa", "SECOND ready", 120)
        ready = time.time()
        self.say(
            f"node1 is appa's ready secondary {ready - back:.1f} s after power-on (only the "
            f"changes were copied). appa waits failback_delay = {DELAY} s — node1 must stay a "
            "ready secondary all that time — then switches over cleanly:"
        )
        self.wait_module("node1", "appa", "PRIM ready", 60)
        self.expect_page(f"{A_URL}/", "served by node1", "appa back on node1")
        self.expect_page(
            f"{A_URL}/note", "written on node2 while node1 was away", "with what node2 wrote"
        )
        self.timeline("node2", "appa", ready - 1, limit=12)
        self.wait_module("node2", "appa", "SECOND ready", 60)
        self.expect_page(f"{B_URL}/", "served by node2", "appb still on node2")
        self.show_state("node2")
