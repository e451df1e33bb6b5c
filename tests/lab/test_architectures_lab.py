"""The architectures of docs/architectures.md, on three lab servers at once.

- farm + mirror: a web farm on all three servers and mirror modules beside it;
- N-1: two mirror modules, each with its own preferred server (node1, node2), sharing one
  backup (node3);
- active/active failback: each module goes back to its preferred server once it has returned
  and is resynchronised (`default_primary`), at once or after `failback_delay`.

Two servers lose their power at once: both applications run on the backup, with their data,
and the farm is served by the one server left. Power comes back: each module returns to its
server, and the farm to three servers.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from hakit.lab.lab import Lab
from hakit.waiting import wait_until
from tests.lab.modules import LabModule, lab_up

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
    pytest.mark.skipif(not shutil.which("nft"), reason="the lab needs nftables (nft)"),
    pytest.mark.skipif(not shutil.which("nginx"), reason="the farm runs nginx"),
]

LAB = "tarch"
NODES = ("node1", "node2", "node3")
EXAMPLES = Path(__file__).parents[2] / "src" / "hakit" / "examples"
FARM_VIP = "10.100.1.200"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """Three servers; node3, the shared backup, can carry one primary (`max_primaries`)."""
    with lab_up(LAB, 3, 1, 1, daemon=False) as lab:
        for node in NODES:
            path = lab.host_path(node, "/etc/hakit/cluster.yaml")
            text = path.read_text()
            mark = "      net1: 10.100.1.13\n"
            assert mark in text
            path.write_text(text.replace(mark, mark + "    max_primaries: 1\n"))
        lab.start_daemons(NODES)
        yield lab


def power_on(lab: Lab, node: str) -> None:
    """Power on, and start its daemon as systemd would (the lab was built without daemons,
    to give node3 its capacity first)."""
    lab.poweron(node)
    lab.start_daemons([node])


def example(tmp: Path, name: str, source: str, **changes: object) -> Path:
    folder = tmp / name
    shutil.copytree(EXAMPLES / source, folder)
    cfg = yaml.safe_load((folder / "module.yaml").read_text())
    cfg.update(changes)
    (folder / "module.yaml").write_text(yaml.safe_dump(cfg))
    return folder


def app(tmp: Path, name: str, preferred: str, n: int, **more: object) -> Path:
    """A mirror-web module on (preferred, node3) that fails back to `preferred`."""
    root = f"/srv/{name}"
    return example(
        tmp,
        name,
        "mirror-web",
        nodes=[preferred, "node3"],
        default_primary=preferred,
        **more,
        vips=[{"address": f"10.100.1.{140 + n}/24", "network": "net1"}],
        replication={"mode": "sync", "port": 7380 + n, "dirs": [{"path": f"{root}/www"}]},
        variables={"WEB_PORT": str(8080 + n), "WEB_ROOT": root},
    )


def get(lab: Lab, url: str) -> str:
    code = (
        "import sys, urllib.request as u; print(u.urlopen(sys.argv[1], timeout=2).read().decode())"
    )
    r = lab.exec("client1", [sys.executable, "-c", code, url], capture=True, check=False)
    return r.stdout.strip() if r.returncode == 0 else ""


def farm_nodes(lab: Lab, n: int = 60) -> set[str]:
    argv = [sys.executable, "-m", "hakit.lab.webclient", FARM_VIP, "--count", str(n)]
    argv += ["--sources", "10.100.1.150-10.100.1.179", "--timeout", "2"]
    r = json.loads(lab.exec("client1", argv, capture=True).stdout)
    assert r["failed"] == 0, r["errors"]
    return set(r["served"])


def test_farm_and_n_minus_1_mirrors_survive_two_servers_and_fail_back(
    lab: Lab, tmp_path: Path
) -> None:
    lab.exec(
        "client1",
        ["ip", "-batch", "-"],
        input="".join(f"addr add 10.100.1.{i}/24 dev eth0\n" for i in range(150, 180)),
    )
    farm = LabModule(lab, "farm-web")
    a, b = LabModule(lab, "appa"), LabModule(lab, "appb")
    folders = [
        example(tmp_path, "farm-web", "farm-web", nodes=list(NODES)),
        app(tmp_path, "appa", "node1", 1, failback_delay=2),
        app(tmp_path, "appb", "node2", 2),
    ]
    for folder in folders:
        lab.exec("node1", ["hakit", "module", "install", str(folder), "--all"], capture=True)
    try:
        farm.loaded(NODES)
        for node in NODES:
            farm.cmd(node, "start")
        for m, preferred in ((a, "node1"), (b, "node2")):
            m.loaded((preferred, "node3"))
            m.cmd(preferred, "prim")
            m.wait(preferred, "ALONE ready", 30)
            m.cmd("node3", "second")
        for m, preferred in ((a, "node1"), (b, "node2")):
            m.wait("node3", "SECOND ready", 60)
            m.wait(preferred, "PRIM ready", 30)
        for node in NODES:
            farm.wait(node, "UP ready", 30)
        assert farm_nodes(lab) == set(NODES)
        assert get(lab, "http://10.100.1.141:8081/") == "served by node1"
        assert get(lab, "http://10.100.1.142:8082/") == "served by node2"
        lab.exec("node1", ["sh", "-c", "echo order-1 > /srv/appa/www/order && sync"])
        lab.exec("node2", ["sh", "-c", "echo order-2 > /srv/appb/www/order && sync"])

        # two servers lose their power at once: the backup runs both applications
        lab.poweroff("node1")
        lab.poweroff("node2")
        a.wait("node3", "ALONE ready", 30)
        b.wait("node3", "ALONE ready", 30)
        assert get(lab, "http://10.100.1.141:8081/order") == "order-1"
        assert get(lab, "http://10.100.1.142:8082/order") == "order-2"
        assert get(lab, "http://10.100.1.141:8081/") == "served by node3"
        # more than the backup was sized for: said, not refused
        st = json.loads(lab.exec("node3", ["hakit", "state", "--json"], capture=True).stdout)
        assert st["capacity"] == {"max_primaries": 1, "primaries": ["appa", "appb"], "over": True}
        shown = lab.exec("node3", ["hakit", "state"], capture=True).stdout
        assert "node3 runs 2 primaries (appa, appb), more than its max_primaries 1" in shown
        wait_until(lambda: farm_nodes(lab, 20) == {"node3"}, 15, "the farm on node3 alone")

        # power is back: each module returns to its preferred server, the farm to three
        power_on(lab, "node1")
        power_on(lab, "node2")
        a.wait("node1", "PRIM ready", 120)
        b.wait("node2", "PRIM ready", 120)
        a.wait("node3", "SECOND ready", 30)
        b.wait("node3", "SECOND ready", 30)
        assert get(lab, "http://10.100.1.141:8081/") == "served by node1"
        assert get(lab, "http://10.100.1.142:8082/order") == "order-2"
        for node in NODES:
            farm.wait(node, "UP ready", 60)
        wait_until(lambda: farm_nodes(lab) == set(NODES), 15, "the farm on three servers")
        assert "failback to node1, the default primary, in 2 s" in a.log("node3")
        assert "failback: node2 is the default primary" in b.log("node3")  # at once
        st = json.loads(lab.exec("node3", ["hakit", "state", "--json"], capture=True).stdout)
        assert st["capacity"]["over"] is False
        timeline = lab.exec("node3", ["cat", "/var/log/hakit/events.jsonl"], capture=True).stdout
        kinds = [json.loads(line)["kind"] for line in timeline.splitlines()]
        assert kinds.count("capacity-warning") == 1
        assert kinds.count("capacity") == 1
    finally:
        for node in NODES:
            if lab.hosts()[node].power != "on":
                power_on(lab, node)
        for m in (farm, a, b):
            m.cmd("node3", "stop", "--all", check=False)
        for m in (farm, a, b):
            for node in NODES:
                wait_until(
                    lambda m=m, node=node: m.me(node) in ("STOP not-ready", "unknown"),  # type: ignore[misc]
                    60,
                    f"{m.name} stopped on {node}",
                )
            lab.exec("node3", ["hakit", "module", "uninstall", m.name, "--all"], check=False)
