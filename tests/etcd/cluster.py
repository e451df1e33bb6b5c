"""A real etcd cluster for tests: Debian's `etcd` (3.4), members on loopback, TLS both ways.

Each member has its own client and peer ports and its own data folder under /tmp/etcdw-*;
the certificates come from `hakit.tls.identity` (an Ed25519 CA derived from a random secret,
one certificate per member with its loopback address, one per hakit node). Members are started
and stopped by PID; `stop()` kills every member still running and removes the data.
"""

from __future__ import annotations

import os
import shutil
import signal
import ssl
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from hakit.tls import identity
from hakit.waiting import wait_until
from tests.daemon.conftest import free_tcp_port

ETCD = "/usr/bin/etcd"
CLUSTER = "etcd-test"


def etcd_argv(
    name: str,
    client: tuple[str, int],
    peers: dict[str, tuple[str, int]],
    data: Path | str,
    files: tuple[Path | str, Path | str, Path | str],  # CA, the member's certificate and key
) -> list[str]:
    """One member of a new etcd cluster, TLS both ways for clients and peers."""
    ca, crt, key = files
    host, port = client
    peer_host, peer_port = peers[name]
    return [
        ETCD,
        f"--name={name}",
        f"--data-dir={data}",
        f"--listen-client-urls=https://{host}:{port}",
        f"--advertise-client-urls=https://{host}:{port}",
        f"--listen-peer-urls=https://{peer_host}:{peer_port}",
        f"--initial-advertise-peer-urls=https://{peer_host}:{peer_port}",
        "--initial-cluster=" + ",".join(f"{n}=https://{h}:{p}" for n, (h, p) in peers.items()),
        "--initial-cluster-state=new",
        "--client-cert-auth",
        f"--trusted-ca-file={ca}",
        f"--cert-file={crt}",
        f"--key-file={key}",
        "--peer-client-cert-auth",
        f"--peer-trusted-ca-file={ca}",
        f"--peer-cert-file={crt}",
        f"--peer-key-file={key}",
        "--log-level=error",
    ]


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    data: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.client_port}"


@dataclass
class EtcdCluster:
    size: int = 3
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="etcdw-")))
    members: list[Member] = field(default_factory=list)

    def __post_init__(self) -> None:
        secret = os.urandom(32)
        for i in range(1, self.size + 1):
            name = f"etcd{i}"
            m = Member(name, free_tcp_port(), free_tcp_port(), self.root / name)
            ident = identity(secret, CLUSTER, name, ("127.0.0.1",))
            (self.root / f"{name}.crt").write_bytes(ident.cert_pem)
            (self.root / f"{name}.key").write_bytes(ident.key_pem)
            self.members.append(m)
        (self.root / "ca.crt").write_text(ident.ca_pem)
        for node in ("node1", "node2", "node3"):
            ident = identity(secret, CLUSTER, node)
            (self.root / f"{node}.crt").write_bytes(ident.cert_pem)
            (self.root / f"{node}.key").write_bytes(ident.key_pem)
            (self.root / f"{node}.key").chmod(0o600)
        # a CA and client certificate etcd does not trust (another secret)
        other = identity(os.urandom(32), CLUSTER, "intruder")
        (self.root / "intruder.crt").write_bytes(other.cert_pem)
        (self.root / "intruder.key").write_bytes(other.key_pem)

    @property
    def ca(self) -> Path:
        return self.root / "ca.crt"

    def cert(self, node: str) -> tuple[Path, Path]:
        return self.root / f"{node}.crt", self.root / f"{node}.key"

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def _args(self, m: Member) -> list[str]:
        peers = {x.name: ("127.0.0.1", x.peer_port) for x in self.members}
        files = (self.ca, self.root / f"{m.name}.crt", self.root / f"{m.name}.key")
        return [
            *etcd_argv(m.name, ("127.0.0.1", m.client_port), peers, m.data, files),
            f"--initial-cluster-token={self.root.name}",
            "--heartbeat-interval=50",  # ms: quick elections, a 1 s minimum lease TTL
            "--election-timeout=500",
        ]

    def start(self, m: Member) -> None:
        log = (self.root / f"{m.name}.log").open("ab")
        try:
            m.proc = subprocess.Popen(self._args(m), stdout=log, stderr=log)
        finally:
            log.close()

    @staticmethod
    def available() -> bool:
        return os.access(ETCD, os.X_OK)

    def start_all(self) -> None:
        for m in self.members:
            self.start(m)
        self.wait_healthy()

    def wait_healthy(self) -> None:
        wait_until(self.healthy, 30, "a healthy etcd cluster")

    def healthy(self) -> bool:
        """Every running member answers a linearizable read (through the JSON gateway)."""
        running = [m for m in self.members if m.proc is not None and m.proc.poll() is None]
        return bool(running) and all(self._answers(m) for m in running)

    def _answers(self, m: Member) -> bool:
        crt, key = self.cert("node1")
        ctx = ssl.create_default_context(cafile=str(self.ca))
        ctx.load_cert_chain(str(crt), str(key))
        try:
            r = httpx.post(f"{m.endpoint}/v3/kv/range", json={"key": "AA=="}, verify=ctx, timeout=1)
        except httpx.HTTPError:
            return False
        return r.status_code == 200 and "header" in r.json()

    def kill(self, m: Member) -> None:
        if m.proc is not None and m.proc.poll() is None:
            m.proc.send_signal(signal.SIGKILL)
            m.proc.wait(10)
        m.proc = None

    def stop(self) -> None:
        for m in self.members:
            self.kill(m)
        shutil.rmtree(self.root, ignore_errors=True)
