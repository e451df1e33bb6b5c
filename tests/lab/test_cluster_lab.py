"""The foundation's acceptance tests, in a real lab: real daemons in namespaces, real faults.

3 nodes on 2 networks see each other; `--node` and `--all` reach the other daemons over
mutual TLS; a power cut is detected by both survivors within the
timeout plus one pulse; cutting one of two networks loses nobody; forged, replayed and garbage
heartbeats are rejected and counted.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import textwrap
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest

from hakit.lab.lab import Lab
from hakit.waiting import wait_until

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
    pytest.mark.skipif(not shutil.which("nft"), reason="the lab needs nftables (nft)"),
]

LAB = "tcluster"
INTERVAL, TIMEOUT, PORT = 0.2, 1.0, 7350


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    lab = Lab(LAB)
    lab.down(missing_ok=True)
    try:
        lab.up(3, 2, 1)
        yield lab
    finally:
        lab.down(missing_ok=True)


def state(lab: Lab, node: str) -> dict[str, Any]:
    r = lab.exec(node, ["hakit", "state", "--json"], capture=True)
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def events(lab: Lab, node: str) -> list[dict[str, Any]]:
    path = lab.host_path(node, "/var/log/hakit/events.jsonl")
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def is_lost(lab: Lab, observer: str, node: str) -> bool:
    return not state(lab, observer)["nodes"][node]["alive"]


def everyone_alive(lab: Lab) -> bool:
    for n in lab.nodes:
        st = state(lab, n)
        if not all(v["alive"] and all(v["networks"].values()) for v in st["nodes"].values()):
            return False
    return True


def test_three_nodes_see_each_other_on_two_networks(lab: Lab) -> None:
    wait_until(lambda: everyone_alive(lab), 10, "all nodes alive on all networks")
    st = state(lab, "node1")
    assert st["cluster"] == LAB
    assert st["node"] == "node1"
    assert set(st["nodes"]) == {"node1", "node2", "node3"}
    for node in st["nodes"].values():
        assert node["alive"] is True
        assert node["networks"] == {"net1": True, "net2": True}
    assert st["modules"] == {}
    # every node has its own identity from its own (private) host name and files
    assert state(lab, "node2")["node"] == "node2"


def test_node_and_all_reach_the_other_daemons_over_mutual_tls(lab: Lab) -> None:
    """`--node` and `--all` go through the other nodes' APIs (HTTPS, mutual TLS, signed)."""
    remote = json.loads(
        lab.exec("node1", ["hakit", "state", "--json", "--node", "node3"], capture=True).stdout
    )
    assert remote["node"] == "node3"
    folder = lab.host_path("node1", "/tmp/tlsmod")
    folder.mkdir(exist_ok=True)
    (folder / "module.yaml").write_text(
        "kind: mirror\nnodes: [node1, node2]\nscripts: {start_timeout: 10, stop_timeout: 10}\n"
    )
    r = lab.exec("node1", ["hakit", "module", "install", "/tmp/tlsmod", "--all"], capture=True)
    assert all(f"node{i}: " in r.stdout for i in (1, 2, 3)), r.stdout
    wait_until(lambda: "tlsmod" in state(lab, "node2")["modules"], 10, "tlsmod on node2")
    r = lab.exec("node2", ["hakit", "stop", "tlsmod", "--all"], capture=True)
    assert all(f"node{i}: " in r.stdout for i in (1, 2)), r.stdout
    r = lab.exec("node3", ["hakit", "module", "uninstall", "tlsmod", "--all"], capture=True)
    assert all(f"node{i}: " in r.stdout for i in (1, 2, 3)), r.stdout
    wait_until(lambda: not state(lab, "node1")["modules"], 10, "tlsmod gone from node1")


def test_cutting_one_of_two_networks_keeps_membership(lab: Lab) -> None:
    wait_until(lambda: everyone_alive(lab), 10, "all alive")
    start = time.time()
    lab.cut("node1", "node2", network=1)
    try:
        wait_until(
            lambda: not state(lab, "node1")["nodes"]["node2"]["networks"]["net1"], 5, "net1 down"
        )
        time.sleep(TIMEOUT + INTERVAL)  # a full timeout window with net1 cut
        st = state(lab, "node1")
        assert st["nodes"]["node2"]["alive"] is True
        assert st["nodes"]["node2"]["networks"] == {"net1": False, "net2": True}
        assert state(lab, "node2")["nodes"]["node1"]["alive"] is True
        lost = [e for e in events(lab, "node1") if e["kind"] == "peer-lost" and e["at"] >= start]
        assert lost == []
        downs = [e for e in events(lab, "node1") if e["kind"] == "link-down" and e["at"] >= start]
        assert any(e["peer"] == "node2" and e["network"] == "net1" for e in downs)
    finally:
        lab.heal("node1", "node2", network=1)
    wait_until(lambda: everyone_alive(lab), 5, "net1 back")


def _send_script(body: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(body)]


def rejected(lab: Lab, node: str) -> dict[str, int]:
    return state(lab, node)["heartbeat"].get("rejected", {})  # type: ignore[no-any-return]


def test_forged_replayed_and_garbage_heartbeats_are_rejected_and_counted(lab: Lab) -> None:
    wait_until(lambda: everyone_alive(lab), 10, "all alive")
    node1_ip = lab.address("node1", 1)
    before = rejected(lab, "node1")

    # Forged: a well-formed heartbeat of this cluster, "from node2", with a wrong secret.
    lab.exec(
        "client1",
        _send_script(f"""
            import socket, time
            from hakit.wire.heartbeat import Codec, Heartbeat, make_boot_id, NO_BOOT
            c = Codec({LAB!r}, b"not-the-secret-0123456789abcdef", "node2")
            hb = Heartbeat("node2", "node1", "net1", make_boot_id(time.time_ns(), b"evil!!!!"),
                           10**12, time.time(), NO_BOOT)
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.sendto(c.encode(hb), ({node1_ip!r}, {PORT}))
            s.sendto(b"garbage that is not a heartbeat at all........", ({node1_ip!r}, {PORT}))
        """),
    )
    # Replayed: capture a real heartbeat frame node2 -> node1 on the wire, send it again.
    r = lab.exec(
        "node2",
        _send_script(f"""
            import socket, struct, time
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
            s.bind(("eth0", 0))
            s.settimeout(1.0)
            dst = socket.inet_aton({node1_ip!r})
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                frame, addr = s.recvfrom(65535)
                ip = frame[14:]
                if addr[2] != socket.PACKET_OUTGOING or ip[9] != 17 or ip[16:20] != dst:
                    continue
                ihl = (ip[0] & 15) * 4
                if struct.unpack("!H", ip[ihl + 2:ihl + 4])[0] != {PORT}:
                    continue
                # The captured UDP checksum may be unfinished (checksum offload): send it as
                # "no checksum" (0, valid for UDP over IPv4); the datagram itself is unchanged.
                frame = frame[:14 + ihl + 6] + b"\\0\\0" + frame[14 + ihl + 8:]
                time.sleep(0.05)
                s.send(frame)  # the very same heartbeat, a little later
                print("replayed", len(frame))
                break
        """),
        capture=True,
    )
    assert "replayed" in r.stdout, r.stderr

    def counted() -> dict[str, int] | None:
        now = rejected(lab, "node1")
        grew = {k: now.get(k, 0) - before.get(k, 0) for k in ("forged", "replayed", "malformed")}
        return grew if all(v >= 1 for v in grew.values()) else None

    grew = wait_until(counted, 5, "node1 to count forged, replayed and malformed heartbeats")
    assert grew == {"forged": 1, "replayed": 1, "malformed": 1}
    # nothing crashed, nobody was fooled
    st = state(lab, "node1")
    assert st["nodes"]["node2"]["alive"] is True
    assert st["daemon"]["heartbeat_restarts"] == 0


def test_poweroff_is_detected_by_both_survivors_within_timeout_plus_one_pulse(lab: Lab) -> None:
    wait_until(lambda: everyone_alive(lab), 10, "all alive")
    off_at = time.time()
    lab.poweroff("node3")
    for n in ("node1", "node2"):
        wait_until(partial(is_lost, lab, n, "node3"), 5, f"{n}: node3 lost")
        lost = [
            e
            for e in events(lab, n)
            if e["kind"] == "peer-lost" and e["peer"] == "node3" and e["at"] >= off_at
        ]
        assert len(lost) == 1
        assert lost[0]["at"] - off_at <= TIMEOUT + INTERVAL, lost[0]
        assert lost[0]["message"].startswith("node3 lost: no heartbeat on net1, net2 for")
        st = state(lab, n)
        assert st["nodes"]["node3"]["networks"] == {"net1": False, "net2": False}
    lab.poweron("node3")
    wait_until(lambda: everyone_alive(lab), 15, "node3 back and seen by all")
    back = [e for e in events(lab, "node1") if e["kind"] == "peer-up" and e["at"] >= off_at]
    assert any(e["peer"] == "node3" for e in back)
