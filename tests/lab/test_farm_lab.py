"""Farm modules in a real lab: nginx on three nodes behind one VIP, clients in their own
namespaces, real daemons, the real nftables filter and the virtual MAC on a Linux bridge.

Each test installs its own farm module (its own VIP) built from the farm-web example, so tests
are independent; client1 gets 50 extra addresses (10.100.1.150-199) to be "many clients".
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from itertools import count
from pathlib import Path
from typing import Any

import pytest
import yaml

from hakit.lab.lab import Lab
from hakit.waiting import wait_until
from tests.lab.modules import LabModule, lab_up, removed_after

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
    pytest.mark.skipif(not shutil.which("nft"), reason="the lab needs nftables (nft)"),
    pytest.mark.skipif(not shutil.which("nginx"), reason="the farm tests run nginx"),
]

LAB = "tfarm"
NODES = ("node1", "node2", "node3")
EXAMPLE = Path(__file__).parents[2] / "src" / "hakit" / "examples" / "farm-web"
SOURCES = "10.100.1.150-10.100.1.199"
TIMEOUT = 1.0  # the lab's heartbeat timeout
_ids = count(1)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with lab_up(LAB, 3, 2, 1) as lab:
        lines = [f"addr add 10.100.1.{i}/24 dev eth0" for i in range(150, 200)]
        batch = "\n".join(lines) + "\n"
        lab.exec("client1", ["ip", "-batch", "-"], input=batch)
        yield lab


class Farm(LabModule):
    def __init__(self, lab: Lab, tmp: Path, **options: Any) -> None:
        n = next(_ids)
        super().__init__(lab, f"farm{n}")
        self.vip = f"10.100.1.{210 + n}"
        folder = tmp / self.name
        shutil.copytree(EXAMPLE, folder)
        cfg = yaml.safe_load((EXAMPLE / "module.yaml").read_text())
        cfg["vips"] = [{"address": f"{self.vip}/24", "network": "net1"}]
        self.web_root = f"/srv/{self.name}"
        cfg["variables"]["WEB_ROOT"] = self.web_root
        cfg.update(options)
        (folder / "module.yaml").write_text(yaml.safe_dump(cfg))
        self.lab.exec("node1", ["hakit", "module", "install", str(folder), "--all"])
        self.loaded(NODES)

    def remove(self) -> None:
        self.cmd("node1", "stop", "--all", check=False)
        for node in NODES:
            if self.lab.hosts()[node].power == "on":
                wait_until(lambda n=node: self.me(n) in ("STOP not-ready", "unknown"), 30, "stop")  # type: ignore[misc]
        self.lab.exec("node1", ["hakit", "module", "uninstall", self.name, "--all"], check=False)

    def start_all(self, nodes: tuple[str, ...] = NODES) -> None:
        for node in nodes:
            self.cmd(node, "start")
        for node in nodes:
            self.wait(node, "UP ready", 30)

    def farm(self, node: str) -> dict[str, Any]:
        mod: dict[str, Any] = self.state(node)["modules"][self.name]
        return mod

    def buckets(self, observer: str = "node1") -> dict[str, int]:
        return {n: v["buckets"] for n, v in self.farm(observer)["nodes"].items()}

    def clients(self, n: int, connect_timeout: float = 2.0) -> dict[str, Any]:
        argv = [sys.executable, "-m", "hakit.lab.webclient", self.vip]
        argv += ["--count", str(n), "--sources", SOURCES, "--timeout", str(connect_timeout)]
        r = self.lab.exec("client1", argv, capture=True)
        out: dict[str, Any] = json.loads(r.stdout)
        return out

    def settled(self, nodes: tuple[str, ...]) -> None:
        """Every node in `nodes` UP ready, with one epoch and every bucket owned once."""

        def ok() -> bool:
            epochs = {self.farm(n)["epoch"] for n in nodes}
            b = self.buckets(nodes[0])
            return (
                all(self.me(n) == "UP ready" for n in nodes)
                and len(epochs) == 1
                and None not in epochs
                and sum(b[n] for n in nodes) == 256
            )

        wait_until(ok, 30, f"{self.name} settled on {', '.join(nodes)}")


@pytest.fixture
def farm(lab: Lab, tmp_path: Path) -> Iterator[Callable[..., Farm]]:
    with removed_after(lambda **o: Farm(lab, tmp_path, **o)) as factory:
        yield factory


@pytest.fixture(autouse=True)
def powered(lab: Lab) -> Iterator[None]:
    yield
    for node in NODES:
        if lab.hosts()[node].power != "on":
            lab.poweron(node)
    for c in lab.cuts():
        lab.heal(c.a, c.b, c.network)


def within(counts: dict[str, int], expected: dict[str, float], tolerance: float = 0.15) -> None:
    total = sum(counts.values())
    for node, share in expected.items():
        want = total * share
        got = counts.get(node, 0)
        assert abs(got - want) <= tolerance * want, f"{node}: {got} of {total}, expected ≈{want}"


def test_every_connection_is_served_once_and_the_shares_follow_the_weights(
    farm: Callable[..., Farm],
) -> None:
    m = farm(weights={"node1": 2})
    m.start_all()
    m.settled(NODES)
    assert m.buckets() == {"node1": 128, "node2": 64, "node3": 64}
    r = m.clients(1200)
    assert r["failed"] == 0, r["errors"]
    assert sum(r["served"].values()) == 1200
    within(r["served"], {"node1": 0.5, "node2": 0.25, "node3": 0.25})
    # every node answers ARP with the same virtual MAC: the client never flaps
    neigh = m.lab.exec("client1", ["ip", "neigh", "show", m.vip], capture=True).stdout
    assert m.farm("node1")["virtual_mac"] in neigh
    st = m.farm("node2")
    assert st["nodes"]["node1"]["weight"] == 2
    assert st["nodes"]["node2"]["share"] == 25.0


def test_session_affinity_keeps_a_client_on_one_node(farm: Callable[..., Farm]) -> None:
    m = farm(rules=[{"protocol": "tcp", "port": 80, "by": "client-ip"}])
    m.start_all()
    m.settled(NODES)
    r = m.clients(500)
    assert r["failed"] == 0, r["errors"]
    assert len(r["by_source"]) == 50
    for src, nodes in r["by_source"].items():
        assert len(set(nodes)) == 1, f"{src} served by {Counter(nodes)}"
    assert len(r["served"]) == 3  # 50 addresses spread over every node


def test_a_weight_zero_node_serves_only_when_the_others_are_gone(
    farm: Callable[..., Farm],
) -> None:
    m = farm(weights={"node3": 0})
    m.start_all()
    m.settled(NODES)
    r = m.clients(300)
    assert r["failed"] == 0, r
    assert "node3" not in r["served"], r
    m.cmd("node1", "stop")
    m.cmd("node2", "stop")
    m.wait("node1", "STOP not-ready", 30)
    m.wait("node2", "STOP not-ready", 30)
    m.settled(("node3",))
    r = m.clients(100)
    assert r["failed"] == 0, r
    assert r["served"] == {"node3": 100}, r
    m.cmd("node1", "start")
    m.settled(("node1", "node3"))
    assert m.buckets("node3")["node3"] == 0


def test_poweroff_spreads_the_share_and_the_return_keeps_long_connections(
    farm: Callable[..., Farm], lab: Lab
) -> None:
    m = farm()
    m.start_all()
    m.settled(NODES)
    cut = time.monotonic()
    lab.poweroff("node3")
    # every new connection succeeds once the heartbeat timeout + 1 s have passed
    time.sleep(max(0.0, cut + TIMEOUT + 1.0 - time.monotonic()))
    r = m.clients(600, connect_timeout=1.0)
    assert r["failed"] == 0, r["errors"]
    assert set(r["served"]) == {"node1", "node2"}
    within(r["served"], {"node1": 0.5, "node2": 0.5})
    assert "lost: node3" in m.log("node1")

    # long-lived keep-alive connections on node1 and node2, then node3 comes back
    argv = [sys.executable, "-m", "hakit.lab.webclient", m.vip, "--hold", "40"]
    argv += ["--sources", SOURCES, "--timeout", "2"]
    with subprocess.Popen(
        lab.exec_argv("client1", argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as held:
        assert held.stdout is not None
        assert held.stdin is not None
        try:
            first = json.loads(held.stdout.readline())["served"]
            assert None not in first
            assert set(first) == {"node1", "node2"}
            lab.poweron("node3")
            m.settled(NODES)  # the module resumes by itself: it ran before the power cut
            held.stdin.write("\n")
            held.stdin.flush()
            again = json.loads(held.stdout.readline())["served"]
            assert again == first, "a long-lived connection broke or moved when node3 returned"
        finally:
            held.kill()
    r = m.clients(600)
    assert r["failed"] == 0, r
    assert set(r["served"]) == set(NODES), r


def test_split_both_sides_serve_and_healing_restores_one_assignment(
    farm: Callable[..., Farm], lab: Lab
) -> None:
    m = farm()
    m.start_all()
    m.settled(NODES)
    lab.cut("node1", "node2")
    lab.cut("node1", "node3")
    wait_until(lambda: m.buckets("node1")["node1"] == 256, 15, "node1 alone takes every bucket")
    wait_until(
        lambda: m.buckets("node2")["node2"] + m.buckets("node2")["node3"] == 256,
        15,
        "node2 and node3 share every bucket",
    )
    lab.heal("node1", "node2")
    lab.heal("node1", "node3")
    m.settled(NODES)
    b = m.buckets("node1")
    assert sorted(b.values()) == [85, 85, 86]
    assert "split healed" in m.log("node1") + m.log("node2") + m.log("node3")
    r = m.clients(300)
    assert r["failed"] == 0, r
    assert set(r["served"]) == set(NODES), r


def test_a_node_whose_nginx_stops_leaves_and_rejoins(farm: Callable[..., Farm]) -> None:
    m = farm()
    m.start_all()
    m.settled(NODES)
    m.lab.exec("node2", ["nginx", "-c", f"{m.web_root}/nginx.conf", "-s", "stop"])  # nginx stops
    wait_until(lambda: "tcp checker web failed" in m.log("node2"), 15, "node2 notices")
    m.settled(NODES)
    log = m.log("node2")
    assert "restart of farm" in log
    assert "restart 1 of 3 in 1 h; node2 leaves the farm meanwhile" in log
    assert "checkers pass" in log.split("tcp checker web failed")[-1]
    r = m.clients(300)
    assert r["failed"] == 0, r
    assert set(r["served"]) == set(NODES), r


def test_a_wait_checker_holds_a_node_out_of_the_farm_until_its_link_is_back(
    farm: Callable[..., Farm],
) -> None:
    nic = {"name": "nic", "type": "interface", "interface": "eth1", "interval": 0.2, "fall": 2}
    web = {"name": "web", "type": "tcp", "port": 80, "interval": 0.5, "fall": 2, "rise": 2}
    m = farm(checkers=[web, nic | {"rise": 2}])
    m.start_all()
    m.settled(NODES)
    m.lab.exec("node3", ["ip", "link", "set", "eth1", "down"])
    try:
        m.wait("node3", "WAIT not-ready", 15)
        m.settled(("node1", "node2"))
        assert m.buckets("node1")["node3"] == 0
        me = m.farm("node3")["nodes"]["node3"]
        assert "interface checker nic down (eth1 is down)" in me["reason"]
        r = m.clients(300)
        assert r["failed"] == 0, r
        assert set(r["served"]) == {"node1", "node2"}, r
    finally:
        m.lab.exec("node3", ["ip", "link", "set", "eth1", "up"])
    m.settled(NODES)
    assert "nothing holds it any more; starting" in m.log("node3")
