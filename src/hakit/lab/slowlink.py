"""A slower, longer link between two lab nodes (two sites), without netem.

The kernel here has no netem, so the delay is added in userspace: in each node's network
namespace an nftables `output` nat rule redirects what the node sends to its peer's address on
the chosen TCP and UDP ports to a local `DelayProxy` process (`python -m hakit.lab.delay`),
which forwards it to the peer `rtt / 2` later. The proxy runs as `nobody`, so that the packets
it forwards itself are not redirected again (`meta skuid`). What crosses the link then:

- a TCP connection (replication) goes through the proxy of the node that opened it, both ways:
  `rtt` more per round trip;
- a UDP datagram (heartbeats) goes through the proxy of its sender: `rtt / 2` more one way,
  `rtt` more for a heartbeat and its echo.

The rules meet only new flows: a heartbeat flow the peer opened while nothing was redirected
would make this node's datagrams its replies, sent straight past the proxy. `start` therefore
forgets the UDP flows on those ports in both nodes (conntrack, through pyroute2).

A powered-off node loses its proxy with its other processes (its nftables table stays with its
namespace): `start(node)` again after `Lab.poweron`. Loopback only inside the lab's namespaces;
the proxies are stopped by PID and the tables removed by `remove()`.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hakit.lab.errors import LabError
from hakit.lab.lab import Lab, alive_pid
from hakit.lab.namespaces import netns_path, run

TABLE = "hakit_slowlink"
NOBODY = 65534
FIRST_PORT = 18200  # the proxies listen on FIRST_PORT, FIRST_PORT + 1, ... in each node
READY_TIMEOUT = 10.0

# Run inside a node's namespace (argv: the UDP ports): forget the conntrack entries of those
# ports, so that the next datagram starts a new flow that meets the redirection rule (NAT is
# decided once per flow, and a flow opened by the peer makes this node's datagrams replies).
_FORGET_FLOWS = """\
import socket, sys
from pyroute2.conntrack import Conntrack
ports = {int(p) for p in sys.argv[1:]}
with Conntrack() as ct:
    for entry in list(ct.dump_entries()):
        t = entry.tuple_orig
        if t.proto == socket.IPPROTO_UDP and ports & {t.sport, t.dport}:
            ct.entry("del", tuple_orig=t)
"""


@dataclass
class SlowLink:
    lab: Lab
    rtt: float  # seconds added to a round trip between the two nodes
    tcp_ports: Sequence[int] = ()
    udp_ports: Sequence[int] = ()
    nodes: tuple[str, str] = ("node1", "node2")
    network: str | int = 1
    pids: dict[str, int] = field(default_factory=dict)

    def _peer(self, node: str) -> str:
        a, b = self.nodes
        return b if node == a else a

    def _forwards(self, node: str) -> list[tuple[str, int, int]]:
        """(protocol, local proxy port, peer port) for `node`."""
        ports = [("tcp", p) for p in self.tcp_ports] + [("udp", p) for p in self.udp_ports]
        return [(proto, FIRST_PORT + i, p) for i, (proto, p) in enumerate(ports)]

    def _nft(self, node: str, script: str, what: str) -> None:
        netns = self.lab.topology.host(node).netns
        run(
            ["nsenter", f"--net={netns_path(netns)}", "--", "nft", "-f", "-"],
            input=script,
            what=what,
        )

    def _ruleset(self, node: str) -> str:
        peer = self.lab.address(self._peer(node), self.network)
        rules = "".join(
            f"\t\tmeta skuid != {NOBODY} ip daddr {peer} {proto} dport {port} "
            f"counter redirect to :{lport}\n"
            for proto, lport, port in self._forwards(node)
        )
        return (
            f"table ip {TABLE}\nflush table ip {TABLE}\n"
            f"table ip {TABLE} {{\n\tchain out {{\n"
            f"\t\ttype nat hook output priority -100; policy accept;\n{rules}\t}}\n}}\n"
        )

    def start(self, node: str) -> int:
        """The redirection rules and a fresh proxy in `node`; the proxy's PID."""
        self.stop(node)
        self._nft(node, self._ruleset(node), f"redirecting {node}'s traffic to its delay proxy")
        for host in self.nodes:  # the peer's flows too: one it saw first is one flow here
            self._forget_flows(host)
        peer = self.lab.address(self._peer(node), self.network)
        argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        argv += [sys.executable, "-I", "-m", "hakit.lab.delay", "--delay", f"{self.rtt / 2:g}"]
        for proto, lport, port in self._forwards(node):
            argv += [f"--{proto}", f"{lport}:{peer}:{port}"]
        log = self.lab.dir / f"slowlink-{node}.log"
        with contextlib.suppress(FileNotFoundError):
            log.unlink()
        pid = self.lab.spawn(node, argv, log=log)
        self.pids[node] = pid
        deadline = time.monotonic() + READY_TIMEOUT
        while "ready:" not in _text(log):
            if time.monotonic() > deadline or not alive_pid(pid):
                self.stop(node)
                raise LabError(f"{node}: the delay proxy did not start: {_text(log)[-500:]}")
            time.sleep(0.05)
        return pid

    def _forget_flows(self, node: str) -> None:
        """Forget `node`'s UDP flows on the redirected ports (see `_FORGET_FLOWS`)."""
        if not self.udp_ports:
            return
        netns = self.lab.topology.host(node).netns
        argv = ["nsenter", f"--net={netns_path(netns)}", "--", sys.executable, "-I", "-c"]
        run([*argv, _FORGET_FLOWS, *map(str, self.udp_ports)], what=f"resetting {node}'s flows")

    def stop(self, node: str) -> None:
        """Stop `node`'s proxy (by PID) if it runs."""
        pid = self.pids.pop(node, None)
        if pid is None or not alive_pid(pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while alive_pid(pid) and time.monotonic() < deadline:
            time.sleep(0.02)

    def redirected(self, node: str) -> int:
        """Packets `node` sent through its proxy so far (the rules' counters)."""
        netns = self.lab.topology.host(node).netns
        out = run(
            ["nsenter", f"--net={netns_path(netns)}", "--", "nft", "list", "table", "ip", TABLE],
            what=f"reading {node}'s delay counters",
        )
        return sum(int(n) for n in re.findall(r"counter packets (\d+)", out))

    def remove(self) -> None:
        """Every proxy stopped and every table removed (nodes powered off are skipped)."""
        for node in self.nodes:
            self.stop(node)
            with contextlib.suppress(LabError):
                self._nft(node, f"table ip {TABLE}\ndelete table ip {TABLE}\n", "removing it")


def _text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
