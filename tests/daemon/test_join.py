"""A cluster built with `cluster init`, `add-node` and `join` by real daemons on loopback; new
cluster.yaml files checked on every node and applied live; `remove-node`; the join listener's
refusals and bounds."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hakit.core.jointoken import parse_token
from hakit.waiting import wait_until
from tests.daemon.conftest import Node, free_tcp_port, free_udp_port

ADDRESS = {"node1": "127.0.0.11", "node2": "127.0.0.12", "node3": "127.0.0.13"}


class Built:
    def __init__(self, root: Path) -> None:
        self.hb, self.api, self.join = free_udp_port(), free_tcp_port(), free_tcp_port()
        self.nodes: dict[str, Node] = {}
        for name in ADDRESS:
            node = Node(name, root / name)
            for d in ("etc", "var", "log"):
                (node.root / d).mkdir(parents=True)
            self.nodes[name] = node

    def __getitem__(self, name: str) -> Node:
        return self.nodes[name]

    def init(self) -> None:
        r = self["node1"].hakit(
            "cluster", "init", "--name", "loop", "--node", f"node1:lo={ADDRESS['node1']}",
            "--port", str(self.hb), "--api-port", str(self.api), "--join-port", str(self.join),
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        self["node1"].start()

    def token(self, node: str, *extra: str, on: str = "node1") -> dict[str, Any]:
        r = self[on].hakit("cluster", "add-node", f"{node}:lo={ADDRESS[node]}", "--json", *extra)
        assert r.returncode == 0, r.stdout + r.stderr
        return json.loads(r.stdout.splitlines()[-1])  # type: ignore[no-any-return]

    def join_with(self, node: str, token: str, *extra: str, via: str = "node1") -> Any:
        member = f"{ADDRESS[via]}:{self.join}"
        return self[node].hakit("cluster", "join", member, "--token", token, *extra)


@pytest.fixture
def built(tmp_path: Path) -> Iterator[Built]:
    b = Built(tmp_path)
    try:
        yield b
    finally:
        for node in b.nodes.values():
            node.kill()


def sees(node: Node, *names: str) -> bool:
    st = node.state()["nodes"]
    return set(st) == set(names) and all(v["alive"] for v in st.values())


def test_init_add_node_join_and_remove_node(built: Built) -> None:
    built.init()
    assert list(built["node1"].state()["nodes"]) == ["node1"]
    t2 = built.token("node2")
    assert t2["join"].startswith(f"hakit cluster join {ADDRESS['node1']} --token hk1-")
    r = built.join_with("node2", t2["token"])
    assert r.returncode == 0, r.stderr
    assert "joined cluster loop as node2" in r.stdout
    key = built["node2"].root / "etc" / "cluster.key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert key.read_bytes() == (built["node1"].root / "etc" / "cluster.key").read_bytes()
    built["node2"].start()
    wait_until(lambda: sees(built["node1"], "node1", "node2"), 10, "node1 to see node2")
    wait_until(lambda: sees(built["node2"], "node1", "node2"), 10, "node2 to see node1")

    r = built["node1"].hakit("cluster", "add-node", f"node3:lo={ADDRESS['node3']}")
    assert r.returncode == 0, r.stderr
    assert " node1 " in r.stdout
    assert " node2 " in r.stdout
    assert "applied live (node3 added); modules kept running" in r.stdout
    assert "not a member yet" in r.stdout
    t3 = r.stdout.split("hakit cluster join ")[1].split("--token ")[1].split()[0]
    assert built.join_with("node3", t3).returncode == 0
    built["node3"].start()
    for n in built.nodes.values():
        wait_until(lambda n=n: sees(n, "node1", "node2", "node3"), 10, f"{n.name} to see all")  # type: ignore[misc]
    # node2 learnt node3 without a restart and without losing node1 for a moment
    events = built["node2"].events()
    kinds = [e["kind"] for e in events]
    assert "config-applied" in kinds
    assert kinds.count("daemon-start") == 1
    assert not [e for e in events if e["kind"] == "peer-lost" and e["peer"] == "node1"]

    r = built["node2"].hakit("cluster", "remove-node", "node3")
    assert r.returncode == 0, r.stderr
    assert "node3 removed from cluster loop" in r.stdout
    for name in ("node1", "node2"):
        node = built[name]
        wait_until(lambda node=node: sees(node, "node1", "node2"), 10, f"{name} without node3")  # type: ignore[misc]
        text = (node.root / "etc" / "cluster.yaml").read_text()
        assert "node3" not in text
        assert "# TCP: the daemons' API between nodes" in text  # comments kept


def test_wrong_used_and_expired_tokens_are_refused_with_the_reason(built: Built) -> None:
    built.init()
    good = built.token("node2")["token"]
    other = built.token("node3")["token"]  # keeps the listener open after node2 joined
    tok = parse_token(good)
    wrong = f"hk1-{tok.id}-{'0' * 32}-{tok.ca_hash}"
    r = built.join_with("node2", wrong)
    assert r.returncode == 1
    assert f"node1 refused the join: token {tok.id} is not valid on this node" in r.stderr
    assert not (built["node2"].root / "etc" / "cluster.yaml").exists()

    impostor = f"hk1-{tok.id}-{tok.secret}-{'ab' * 32}"
    r = built.join_with("node2", impostor)
    assert r.returncode == 1
    assert "is not a member of the cluster this token was made for" in r.stderr
    assert "Nothing was sent" in r.stderr
    # checked before anything was sent: the real token is still good
    assert built.join_with("node2", good).returncode == 0

    r = built.join_with("node3", good)
    assert r.returncode == 1
    assert "was used by 127.0.0.1 to join as node2" in r.stderr, r.stderr

    short = built.token("node3", "--ttl", "1s")
    wait_until(lambda: time.time() > short["expires"], 5, "the one-second token to expire")
    r = built.join_with("node3", short["token"])
    assert r.returncode == 1
    assert f"token {short['id']} expired" in r.stderr, r.stderr

    assert built.join_with("node3", other).returncode == 0  # still outstanding
    # no token left: the listener is closed
    wait_until(lambda: "join-closed" in [e["kind"] for e in built["node1"].events()], 5, "closed")
    r = built.join_with("node3", other, "--force")
    assert r.returncode == 1
    assert f"nothing listens on {ADDRESS['node1']}:{built.join}" in r.stderr
    refused = [e["message"] for e in built["node1"].events() if e["kind"] == "join-refused"]
    assert len(refused) == 3, refused


def test_guesses_are_throttled_and_unauthenticated_connections_bounded(built: Built) -> None:
    built.init()
    tok = parse_token(built.token("node2")["token"])
    for i in range(5):
        r = built.join_with("node3", f"hk1-{i:08x}-{'1' * 32}-{tok.ca_hash}")
        assert "is not valid on this node" in r.stderr
    r = built.join_with("node3", str(tok))
    assert "too many wrong join tokens from 127.0.0.1: try again in" in r.stderr
    # at most 4 connections of one address before authentication: the 5th is closed at once,
    # while the first 4 are still waiting for their TLS handshake (5 s)
    idle = [socket.create_connection((ADDRESS["node1"], built.join)) for _ in range(4)]
    try:
        with socket.create_connection((ADDRESS["node1"], built.join)) as fifth:
            fifth.settimeout(10)
            assert fifth.recv(1) == b""
        idle[0].setblocking(False)
        with pytest.raises(BlockingIOError):
            idle[0].recv(1)  # still open
    finally:
        for s in idle:
            s.close()
