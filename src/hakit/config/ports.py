"""Every port the cluster uses (`hakit config ports`), and firewall rules that let exactly the
cluster's own traffic reach them. Pure: from the cluster and the installed modules.

- heartbeats: UDP `heartbeat.port` on every node address, from the other nodes;
- the node API: TCP `api.port` on every node address, from the other nodes;
- the join listener: TCP `api.join_port` on every node address, while a token is outstanding,
  from the node being added (its address is in cluster.yaml once `add-node` ran);
- replication: TCP `replication.port` of each mirror module that replicates, on each of its two
  nodes (the secondary listens) at its address on the replication network, from the other node;
- a witness: UDP `split_brain.witness.port` on the witness's addresses, from the module's nodes
  (on another machine, unless one of its addresses is a node's);
- the etcd witness: TCP to each of `etcd.endpoints`, from the nodes of the modules that use it
  (`split_brain.etcd`);
- a module's health probe: TCP `health_probe.port` on each of its nodes, from anyone (cloud
  load balancers, monitors): the one port open to all, read-only and bounded.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from hakit.config.clashes import module_ports
from hakit.config.model import Cluster
from hakit.config.module import MirrorModule, ModuleFile

TABLE = "hakit_ports"


@dataclass(frozen=True)
class PortUse:
    what: str
    protocol: str  # "udp" | "tcp"
    port: int
    listen: tuple[tuple[str, str], ...]  # (host, address) listening
    sources: tuple[tuple[str, str], ...]  # (host, address) that must reach it
    auth: str
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "what": self.what,
            "protocol": self.protocol,
            "port": self.port,
            "listen": [{"host": h, "address": a} for h, a in self.listen],
            "from": [{"host": h, "address": a} for h, a in self.sources],
            "authentication": self.auth,
            "note": self.note,
        }


def _all(cluster: Cluster, nodes: Iterable[str] | None = None) -> tuple[tuple[str, str], ...]:
    names = list(cluster.nodes) if nodes is None else [n for n in nodes if n in cluster.nodes]
    return tuple((n, str(a)) for n in names for a in cluster.nodes[n].addresses.values())


def cluster_ports(cluster: Cluster, modules: Sequence[ModuleFile]) -> list[PortUse]:
    every = _all(cluster)
    uses = [
        PortUse(
            "heartbeats",
            "udp",
            cluster.heartbeat.port,
            every,
            every,
            "HMAC of the cluster secret, replay-proof",
        ),
        PortUse(
            "node API",
            "tcp",
            cluster.api.port,
            every,
            every,
            "mutual TLS 1.3 + signed requests",
            "--node/--all, config apply",
        ),
        PortUse(
            "join",
            "tcp",
            cluster.api.join_port,
            every,
            every,
            "TLS 1.3 (CA fingerprint) + one-time token",
            "open while a token is outstanding",
        ),
    ]
    for mf in modules:
        m = mf.config
        hp = m.health_probe
        if hp is not None:
            on = tuple(
                (n, a)
                for n in m.nodes
                if n in cluster.nodes
                for a in hp.addresses(cluster.nodes[n].addresses)
            )
            uses.append(
                PortUse(
                    f"health probe of module {mf.name}",
                    "tcp",
                    hp.port,
                    on,
                    (),
                    "none: read-only, bounded (docs/security.md)",
                    "from anyone: load balancers, monitors",
                )
            )
        if not isinstance(m, MirrorModule):
            continue
        for listener in module_ports(mf.name, m, cluster):
            peer = m.peer_of(listener.node)
            uses.append(
                PortUse(
                    f"replication of module {mf.name}",
                    "tcp",
                    listener.port,
                    ((listener.node, listener.address),),
                    _all(cluster, [peer]),
                    "mutual TLS 1.3 (the module's nodes)",
                    f"{listener.node} listens while it is the secondary",
                )
            )
        w = m.split_brain.witness
        if w is not None:
            owner = {str(a): n for n, a in every}
            uses.append(
                PortUse(
                    f"witness of module {mf.name}",
                    "udp",
                    w.port,
                    tuple((owner.get(str(a), "witness"), str(a)) for a in w.addresses),
                    _all(cluster, m.nodes),
                    "HMAC of the cluster secret, replay-proof",
                    "`hakit witness`",
                )
            )
        if m.split_brain.etcd is not None and cluster.etcd is not None:
            owner = {str(a): n for n, a in every}
            by_port: dict[int, list[str]] = {}
            for url in cluster.etcd.endpoints:
                parts = urlsplit(url)
                if parts.hostname and parts.port:
                    by_port.setdefault(parts.port, []).append(parts.hostname)
            for port, hosts in sorted(by_port.items()):
                uses.append(
                    PortUse(
                        f"etcd witness of module {mf.name}",
                        "tcp",
                        port,
                        tuple((owner.get(h, "etcd"), h) for h in hosts),
                        _all(cluster, m.nodes),
                        "mutual TLS (etcd's CA; the nodes' client certificates)",
                        "the cluster's etcd (`etcd.endpoints`)",
                    )
                )
    return _merged(uses)


def _merged(uses: list[PortUse]) -> list[PortUse]:
    """One entry per (what, protocol, port): a module's replication on its two nodes."""
    out: dict[tuple[str, str, int], PortUse] = {}
    for u in uses:
        key = (u.what, u.protocol, u.port)
        if key in out:
            o = out[key]
            note = o.note if o.note == u.note else "the secondary listens"
            out[key] = PortUse(
                u.what,
                u.protocol,
                u.port,
                o.listen + u.listen,
                tuple(dict.fromkeys(o.sources + u.sources)),
                u.auth,
                note,
            )
        else:
            out[key] = u
    return list(out.values())


def _family(address: str) -> str:
    return "ip6" if ipaddress.ip_address(address).version == 6 else "ip"


def _elements(addresses: Iterable[str]) -> str:
    return ", ".join(dict.fromkeys(addresses))


def nftables(uses: Sequence[PortUse], node: str, cluster: str) -> str:
    """An `nft -f` script for `node`: its table `inet hakit_ports` accepts each of hakit's ports
    from the other hosts that must reach it (the node's own traffic comes over `lo`) and drops
    it from anyone else; all other traffic is left to the host's own rules. Loading it again
    replaces it (one transaction)."""
    lines = [
        "#!/usr/sbin/nft -f",
        f"# hakit cluster {cluster}, node {node}: `hakit config ports --nftables`",
        "# hakit's ports reachable from the cluster's nodes only; other traffic untouched.",
        "# If this host's own input chain drops by default, accept the same ports there too.",
        f"table inet {TABLE}",
        f"delete table inet {TABLE}",
        f"table inet {TABLE} {{",
        "    chain input {",
        "        type filter hook input priority filter - 1; policy accept;",
        '        iif "lo" accept',
    ]
    mine = [u for u in uses if any(h == node for h, _ in u.listen)]
    for u in mine:
        dests = [a for h, a in u.listen if h == node]
        if not u.sources:  # open to anyone: said, never dropped below
            lines.append(f'        {u.protocol} dport {u.port} accept comment "{u.what}"')
            continue
        for fam in ("ip", "ip6"):
            here = [a for a in dests if _family(a) == fam]
            srcs = [a for h, a in u.sources if _family(a) == fam and h != node]
            if not here or not srcs:
                continue
            lines.append(
                f"        {fam} daddr {{ {_elements(here)} }} {fam} saddr {{ {_elements(srcs)} }} "
                f'{u.protocol} dport {u.port} accept comment "{u.what}"'
            )
    for proto in ("udp", "tcp"):
        ports = sorted({u.port for u in mine if u.protocol == proto and u.sources})
        if ports:
            lines.append(
                f"        {proto} dport {{ {', '.join(map(str, ports))} }} drop "
                'comment "hakit ports: not from a cluster node"'
            )
    lines += ["    }", "}"]
    return "\n".join(lines) + "\n"


def firewalld(uses: Sequence[PortUse], node: str, cluster: str, zone: str | None) -> str:
    """`firewall-cmd` commands for `node`: one rich rule per (source, port), permanent, in
    `zone` (default: the default zone), then a reload."""
    z = f" --zone={zone}" if zone else ""
    lines = [f"# hakit cluster {cluster}, node {node}: `hakit config ports --firewalld`"]
    for u in uses:
        if not any(h == node for h, _ in u.listen):
            continue
        lines.append(f"# {u.what}: {u.protocol.upper()} {u.port}")
        if not u.sources:
            lines.append(f"firewall-cmd --permanent{z} --add-port={u.port}/{u.protocol}")
        for h, src in u.sources:
            if h == node:
                continue  # its own traffic arrives on the loopback interface
            fam = "ipv6" if _family(src) == "ip6" else "ipv4"
            lines.append(
                f'firewall-cmd --permanent{z} --add-rich-rule=\'rule family="{fam}" source '
                f'address="{src}" port port="{u.port}" protocol="{u.protocol}" accept\''
            )
    lines.append("firewall-cmd --reload")
    return "\n".join(lines) + "\n"
