"""Real daemons in a lab, power cuts and power-on (one lab with `hakit daemon` on each node)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from hakit.lab.errors import LabError
from hakit.lab.lab import Lab
from hakit.lab.namespaces import start_time
from hakit.lab.testing import can_ping, unavailable_reason, unique_name, wait_until

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason())),
]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("labroot")
    lab = Lab(unique_name(), root=root)
    try:
        # /tmp/... is a volatile private path: emptied at power-on, like a tmpfs at boot.
        lab.up(nodes=2, networks=2, clients=0, private=[str(root / "scratch")])
        yield lab
    finally:
        lab.down(missing_ok=True)


def state(lab: Lab, node: str) -> dict[str, object]:
    r = lab.exec(node, ["hakit", "state", "--json"], capture=True, check=False)
    return json.loads(r.stdout) if r.returncode == 0 else {}


def sees_alive(lab: Lab, node: str, peer: str) -> bool:
    st = state(lab, node)
    nodes = st.get("nodes", {})
    return isinstance(nodes, dict) and bool(nodes.get(peer, {}).get("alive"))


def test_up_starts_a_daemon_per_node_that_knows_its_name(lab: Lab) -> None:
    for node in lab.nodes:
        assert lab.daemon_pid(node) is not None
        assert lab.host_path(node, "/var/lib/hakit/hakit.sock").exists()
        st = state(lab, node)
        assert (st["cluster"], st["node"]) == (lab.name, node)
    wait_until(lambda: sees_alive(lab, "node1", "node2"), 10, "node1 to see node2 alive")


def test_poweroff_kills_everything_and_poweron_restores(lab: Lab) -> None:
    sleeper = lab.spawn("node2", ["sleep", "300"])
    daemon = lab.daemon_pid("node2")
    assert daemon is not None
    lab.exec("node2", ["sh", "-c", "echo kept > /etc/hakit/persistent"])
    volatile = lab.root / "scratch" / "volatile"  # private to each host, and volatile
    lab.exec("node2", ["sh", "-c", f"echo gone > {volatile}"])
    assert not volatile.exists()  # this machine's directory is only the mount point
    assert can_ping(lab, "node1", "node2", 1)

    killed = lab.poweroff("node2")

    assert {sleeper, daemon} <= set(killed)
    assert start_time(sleeper) is None
    assert start_time(daemon) is None
    assert lab.hosts()["node2"].power == "off"
    assert not can_ping(lab, "node1", "node2", 1, wait=0.5)
    assert not can_ping(lab, "node1", "node2", 2, wait=0.5)
    with pytest.raises(LabError, match="powered off"):
        lab.exec("node2", ["true"])
    wait_until(lambda: not sees_alive(lab, "node1", "node2"), 10, "node1 to lose node2")

    lab.poweron("node2")

    assert lab.hosts()["node2"].power == "on"
    new_daemon = lab.daemon_pid("node2")
    assert new_daemon is not None
    assert new_daemon != daemon
    wait_until(lambda: can_ping(lab, "node1", "node2", 1), 5, "node2 reachable on net1")
    assert can_ping(lab, "node1", "node2", 2)
    assert lab.exec("node2", ["cat", "/etc/hakit/persistent"], capture=True).stdout == "kept\n"
    assert lab.exec("node2", ["test", "-e", str(volatile)], check=False).returncode == 1
    wait_until(lambda: sees_alive(lab, "node1", "node2"), 10, "node1 to see node2 again")


def test_poweron_of_a_running_node_keeps_its_daemon(lab: Lab) -> None:
    before = lab.daemon_pid("node1")
    lab.poweron("node1")
    assert lab.daemon_pid("node1") == before
