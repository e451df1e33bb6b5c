"""Servers bootstrapped as real ones are, in a lab whose nodes start with no configuration:
`cluster init` on node1, `add-node` prints a token, node2 and node3 `join` with only that token
and a member's address; every node sees all three; wrong, used and expired tokens are refused;
`remove-node` shrinks the cluster; the rules of `config ports --nftables`, loaded in the nodes,
let the cluster's traffic through and keep a client off hakit's ports."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from hakit.lab.lab import Lab
from hakit.waiting import wait_until

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
    pytest.mark.skipif(not shutil.which("nft"), reason="the lab needs nftables (nft)"),
]

LAB = "tjoin"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    lab = Lab(LAB)
    lab.down(missing_ok=True)
    try:
        lab.up(3, 2, 1, cluster=False)
        yield lab
    finally:
        lab.down(missing_ok=True)


def hakit(lab: Lab, node: str, *args: str) -> subprocess.CompletedProcess[str]:
    return lab.exec(node, ["hakit", *args], capture=True, check=False)


def spec(lab: Lab, node: str) -> str:
    return f"{node}:net1={lab.address(node, 1)},net2={lab.address(node, 2)}"


def token(lab: Lab, node: str, on: str = "node1", *extra: str) -> dict[str, Any]:
    r = hakit(lab, on, "cluster", "add-node", spec(lab, node), "--json", *extra)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout.splitlines()[-1])  # type: ignore[no-any-return]


def join(lab: Lab, node: str, tok: str, via: str = "node1") -> subprocess.CompletedProcess[str]:
    return hakit(lab, node, "cluster", "join", lab.address(via, 1), "--token", tok)


def state(lab: Lab, node: str) -> dict[str, Any]:
    r = hakit(lab, node, "state", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def all_see(lab: Lab, nodes: tuple[str, ...]) -> bool:
    for n in nodes:
        st = state(lab, n)["nodes"]
        if set(st) != set(nodes):
            return False
        if not all(v["alive"] and all(v["networks"].values()) for v in st.values()):
            return False
    return True


def test_nodes_without_configuration_join_with_a_token_only(lab: Lab) -> None:
    assert not lab.host_path("node1", "/etc/hakit/cluster.yaml").exists()
    r = hakit(lab, "node1", "cluster", "init", "--name", LAB, "--node", spec(lab, "node1"))
    assert r.returncode == 0, r.stderr
    lab.start_daemons(["node1"])
    t2 = token(lab, "node2")
    r = join(lab, "node2", t2["token"])
    assert r.returncode == 0, r.stderr
    assert f"joined cluster {LAB} as node2" in r.stdout
    assert hakit(lab, "node2", "config", "check").returncode == 0
    lab.start_daemons(["node2"])
    wait_until(lambda: all_see(lab, ("node1", "node2")), 15, "node1 and node2")

    # a member other than the first admits node3; it joins through that member
    t3 = token(lab, "node3", "node2")
    assert lab.address("node2", 1) in t3["join"]
    r = join(lab, "node3", t3["token"], via="node2")
    assert r.returncode == 0, r.stderr
    lab.start_daemons(["node3"])
    wait_until(lambda: all_see(lab, ("node1", "node2", "node3")), 15, "all three")
    for n in ("node1", "node2", "node3"):
        key = lab.host_path(n, "/etc/hakit/cluster.key")
        assert key.stat().st_mode & 0o777 == 0o600

    # the used token, a wrong one and an expired one are refused, saying why
    spare = token(lab, "node3")  # keeps node1's join listener open
    r = join(lab, "node3", t2["token"])
    assert r.returncode == 1
    assert "already has a cluster configuration" in r.stderr  # nothing replaced by accident
    r = hakit(
        lab, "node3", "cluster", "join", lab.address("node1", 1), "--token", t2["token"], "--force"
    )
    assert "was used by" in r.stderr
    assert "to join as node2" in r.stderr
    wrong = t2["token"][:13] + "f" * 32 + t2["token"][45:]
    r = hakit(lab, "node3", "cluster", "join", lab.address("node1", 2), "--token", wrong, "--force")
    assert "is not valid on this node" in r.stderr
    short = token(lab, "node3", "node1", "--ttl", "1s")
    wait_until(lambda: time.time() > short["expires"], 5, "the short token to expire")
    r = hakit(
        lab,
        "node3",
        "cluster",
        "join",
        lab.address("node1", 1),
        "--token",
        short["token"],
        "--force",
    )
    assert f"token {short['id']} expired" in r.stderr
    assert state(lab, "node3")["nodes"]["node1"]["alive"]  # node3 untouched by the refusals
    del spare

    # remove-node shrinks the cluster on the remaining members
    r = hakit(lab, "node1", "cluster", "remove-node", "node3")
    assert r.returncode == 0, r.stdout + r.stderr
    wait_until(lambda: all_see(lab, ("node1", "node2")), 15, "the cluster without node3")


def heard_since(lab: Lab, observer: str, peer: str, since: float) -> bool:
    p = state(lab, observer)["nodes"][peer]
    heard = p.get("last_heard_by_network") or {}
    return p["alive"] and len(heard) == 2 and all(t and t > since for t in heard.values())


def test_nftables_rules_let_the_cluster_through_and_keep_others_off(lab: Lab) -> None:
    client_probe = (
        "import socket\n"
        "try:\n"
        f"    socket.create_connection(('{lab.address('node1', 1)}', 7351), timeout=2)\n"
        "    print('open')\n"
        "except OSError as e:\n"
        "    print('closed', e)\n"
    )
    before = lab.exec("client1", ["python3", "-c", client_probe], capture=True)
    assert before.stdout.startswith("open"), before.stdout
    for n in ("node1", "node2"):
        r = hakit(lab, n, "config", "ports", "--nftables")
        assert r.returncode == 0, r.stderr
        check = lab.exec(n, ["nft", "-c", "-f", "-"], input=r.stdout, capture=True, check=False)
        assert check.returncode == 0, check.stderr
        lab.exec(n, ["nft", "-f", "-"], input=r.stdout)
    loaded = time.time()
    after = lab.exec("client1", ["python3", "-c", client_probe], capture=True)
    assert after.stdout.startswith("closed"), after.stdout  # not a node: dropped
    # between the nodes: heartbeats on both networks and the node API still pass
    for a, b in (("node1", "node2"), ("node2", "node1")):
        wait_until(lambda a=a, b=b: heard_since(lab, a, b, loaded), 10, f"{a} hears {b}")  # type: ignore[misc]
    r = hakit(lab, "node2", "state", "--node", "node1", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["node"] == "node1"
