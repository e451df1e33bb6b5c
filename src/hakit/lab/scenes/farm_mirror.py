"""farm + mirror on the same three servers: a web tier load-balanced over all of them, an
application with its data mirrored on two; a power cut of a server that has both."""

from __future__ import annotations

import time

from hakit.lab.scenes.base import FARM_VIP, Scene, need

DB = "db"
DB_URL = "http://10.100.1.141:8081"


class FarmMirror(Scene):
    name = "farm-mirror"
    summary = "a web farm on three servers and a mirrored application on two of them; a power cut"
    nodes = 3
    needs = (need("nginx", "nginx"),)

    def run(self) -> None:
        lab = self.lab
        self.step("1. One cluster, two kinds of module")
        self.say(
            f"Three servers. `farm-web` (a farm) runs nginx on all three behind {FARM_VIP}; "
            f"`{DB}` (a mirror) runs an application on node1 with its data replicated "
            "synchronously to node2, behind its own virtual IP 10.100.1.141. Each module is an "
            "ordinary module: installed with one command, deciding on its own."
        )
        self.add_client_addresses()
        farm = self.example("farm-web", "farm-web", nodes=list(lab.nodes))
        self.install(farm)
        self.install(self.web_app(DB, ["node1", "node2"], 1))
        self.hakit("node1", "start", "farm-web", "--all", quiet=True)
        self.start_mirror(DB, "node1", "node2")
        for node in lab.nodes:
            self.wait_module(node, "farm-web", "UP ready", 30)
        self.farm_served_by(set(lab.nodes), 15)
        self.show_state("node3")
        self.show_farm()
        self.write("node1", "/srv/db/www/orders", "order 1001 paid")
        self.expect_page(f"{DB_URL}/orders", "order 1001 paid", "written on node1, the primary")

        self.step("2. Power cut on node1: both modules recover, each on its own")
        off = time.time()
        lab.poweroff("node1")
        self.say("node1 lost its power: it served a third of the farm and ran the application.")
        farm_back = self.farm_served_by({"node2", "node3"}, 20)
        self.say(
            f"The farm: node1's share moved to node2 and node3; every connection served again "
            f"{farm_back:.1f} s after the cut (measured by the client, heartbeat timeout 1 s)."
        )
        self.wait_module("node2", DB, "ALONE ready", 30)
        self.expect_page(f"{DB_URL}/orders", "order 1001 paid", "node2 took over with the data")
        self.say(f"The application: running on node2 {time.time() - off:.1f} s after the cut. Why:")
        self.timeline("node2", DB, off)
        self.show_farm()
        self.write("node2", "/srv/db/www/orders", "order 1002 paid")

        self.step("3. node1 comes back")
        self.power_on("node1")
        self.wait_module("node1", "farm-web", "UP ready", 60)
        self.farm_served_by(set(lab.nodes), 20)
        self.say("node1 took its share of the farm back as soon as its checker passed.")
        self.wait_module("node1", DB, "SECOND ready", 120)
        self.say(
            "The application stays on node2 (default_primary: alone: no second interruption); "
            "node1 is its secondary again, resynchronised with only what changed."
        )
        self.expect_page(f"{DB_URL}/orders", "order 1002 paid", "still served by node2")
        self.show_state("node1")
        self.show_farm()
