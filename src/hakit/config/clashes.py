"""Ports and VIPs that the modules of one node would fight over, found before anything runs.

Each mirror module that replicates listens, while secondary, on TCP `replication.port` at the
node's address on its replication network; a module with a `health_probe` listens on TCP
`health_probe.port` at each of its `bind` addresses on every node of the module. Two modules
with the same port on one node and the same address (or a wildcard address of the same family,
`0.0.0.0` or `::`) cannot both listen: the second fails at run time. `port_clashes` compares a new
module with the installed ones (`hakit module check`, `hakit module install`, the daemon's
install endpoint), and so does it for VIPs (one address, one module). A module's ports against
the cluster's own (API, heartbeat) are checked with the module itself
(`config.module.check_mirror`). `port_clashes` is pure; `refuse_clashes` loads the installed
modules.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from hakit.config.model import Cluster
from hakit.config.module import (
    MODULE_FILE,
    MODULE_NAME,
    FarmModule,
    MirrorModule,
    ModuleConfig,
    ModuleFile,
    load_installed,
    load_module,
)
from hakit.errors import HakitError


@dataclass(frozen=True)
class Listener:
    node: str
    protocol: str  # "tcp" | "udp"
    address: str
    port: int
    what: str  # "replication listener of module web", for messages


def replication_network(m: MirrorModule, cluster: Cluster, node: str) -> str | None:
    """The network carrying `m`'s replication on `node` (as the mirror runner picks it)."""
    if m.replication is None or node not in cluster.nodes:
        return None
    if m.replication.network is not None:
        return m.replication.network
    peer = m.peer_of(node)
    theirs = cluster.nodes[peer].addresses if peer in cluster.nodes else {}
    shared = [n for n in cluster.nodes[node].addresses if n in theirs]
    return shared[0] if shared else None


def module_ports(name: str, m: ModuleConfig, cluster: Cluster) -> list[Listener]:
    """What module `name` listens on, per node: its replication listener (mirror) and its
    health probe."""
    out = []
    if m.health_probe is not None:
        for node in m.nodes:
            here = cluster.nodes[node].addresses if node in cluster.nodes else {}
            for bound in m.health_probe.addresses(here):
                what = f"health probe of module {name}"
                out.append(Listener(node, "tcp", str(bound), m.health_probe.port, what))
    if isinstance(m, FarmModule) or m.replication is None:
        return out
    for node in m.nodes:
        net = replication_network(m, cluster, node)
        addr = cluster.nodes[node].addresses.get(net) if net and node in cluster.nodes else None
        if addr is not None:
            what = f"replication listener of module {name}"
            out.append(Listener(node, "tcp", str(addr), m.replication.port, what))
    return out


def _clash(a: Listener, b: Listener) -> bool:
    if (a.node, a.protocol, a.port) != (b.node, b.protocol, b.port):
        return False
    x, y = ipaddress.ip_address(a.address), ipaddress.ip_address(b.address)
    return x == y or (x.version == y.version and (x.is_unspecified or y.is_unspecified))


def port_clashes(
    name: str, m: ModuleConfig, installed: Iterable[tuple[str, ModuleConfig]], cluster: Cluster
) -> list[str]:
    """Replication ports module `name` would share with the modules already installed (other
    names; a module of the same name is the one being replaced). Two modules naming the same
    witness share it: not a clash."""
    mine = module_ports(name, m, cluster)
    out = []
    for other_name, other in installed:
        if other_name == name:
            continue
        theirs = {v.address.ip for v in other.vips}
        for v in m.vips:
            if v.address.ip in theirs:
                out.append(f"VIP {v.address} is already used by module {other_name}")
        for a in mine:
            for b in module_ports(other_name, other, cluster):
                if _clash(a, b):
                    out.append(
                        f"module {name} and module {other_name} both use TCP port {a.port} on "
                        f"{a.node} ({_where(a, b)}) for the {a.what} and the "
                        f"{b.what}: the second could not listen; give module {name} another "
                        f"{_field(a)}"
                    )
    return out


def _where(a: Listener, b: Listener) -> str:
    return a.address if a.address == b.address else f"{a.address} and {b.address}"


def _field(a: Listener) -> str:
    return "health_probe.port" if a.what.startswith("health probe") else "replication.port"


def refuse_clashes(mf: ModuleFile, modules: Path, cluster: Cluster) -> None:
    """`HakitError` listing every clash of `mf` with the modules installed in `modules`."""
    installed = [(o.name, o.config) for o in load_installed(modules, cluster, exclude=mf.name)]
    problems = port_clashes(mf.name, mf.config, installed, cluster)
    if problems:
        raise HakitError(f"module {mf.name}: " + "; ".join(problems))


def check_installed(modules: Path, cluster: Cluster) -> tuple[list[ModuleFile], list[str]]:
    """Every module installed in `modules`, as the daemon will load it against `cluster`, and
    their clashes: (the modules that load, one `NAME: problem` line for each that does not).
    What `hakit config check` reports and what a node checks before it takes a new
    `cluster.yaml`."""
    folders = sorted(d for d in modules.iterdir() if d.is_dir()) if modules.is_dir() else []
    good: list[ModuleFile] = []
    bad: list[str] = []
    for d in folders:
        if not MODULE_NAME.match(d.name) or not (d / MODULE_FILE).is_file():
            continue
        try:
            mf = load_module(d, cluster)
            refuse_clashes(mf, modules, cluster)
        except HakitError as e:
            bad.append(f"{d.name}: {e}")
        else:
            good.append(mf)
    return good, bad
