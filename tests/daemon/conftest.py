"""Real daemons on loopback addresses (127.0.0.x), each with its own HAKIT_ETC/VAR/LOG roots."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hakit.config.starter import new_secret, render_cluster_yaml
from hakit.waiting import wait_until


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_tcp_port() -> int:
    """A TCP port free on every address (test runs elsewhere on the machine use the default)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


@dataclass
class Node:
    name: str
    root: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "HAKIT_ETC": str(self.root / "etc"),
            "HAKIT_VAR": str(self.root / "var"),
            "HAKIT_LOG": str(self.root / "log"),
        }

    def start(self) -> None:
        with (self.root / "daemon.out").open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hakit", "daemon", "--node", self.name],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(lambda: (self.root / "var" / "hakit.sock").exists(), 15, f"{self.name} socket")

    def hakit(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "hakit", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
        )

    def state(self) -> dict[str, Any]:
        r = self.hakit("state", "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)  # type: ignore[no-any-return]

    def events(self) -> list[dict[str, Any]]:
        path = self.root / "log" / "events.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)  # the daemon and its heartbeat process
            self.proc.wait(10)


@dataclass
class Cluster:
    nodes: dict[str, Node] = field(default_factory=dict)
    interval: float = 0.2
    timeout: float = 1.0
    api_port: int = 0

    def __getitem__(self, name: str) -> Node:
        return self.nodes[name]


@pytest.fixture
def loopback_cluster(tmp_path: Path) -> Iterator[Callable[[int], Cluster]]:
    made: list[Cluster] = []

    def make(n: int) -> Cluster:
        port = free_udp_port()
        spec = {f"node{i}": {"lo": f"127.0.0.{10 + i}"} for i in range(1, n + 1)}
        api_port = free_tcp_port()
        text = render_cluster_yaml(
            "loop", spec, port=port, api_port=api_port, join_port=free_tcp_port()
        )
        secret = new_secret()
        c = Cluster(api_port=api_port)
        for name in spec:
            root = tmp_path / name
            for d in ("etc", "var", "log"):
                (root / d).mkdir(parents=True)
            (root / "etc" / "cluster.yaml").write_text(text)
            key = root / "etc" / "cluster.key"
            key.write_text(secret)
            key.chmod(0o600)
            c.nodes[name] = Node(name, root)
        made.append(c)
        for node in c.nodes.values():
            node.start()
        return c

    yield make
    for c in made:
        for node in c.nodes.values():
            node.kill()
