"""What a new `cluster.yaml` changes for one node's running daemon, and how it can take it.

A daemon takes a new cluster configuration *live* (no restart, its modules keep running) when
only other nodes change: nodes added, removed or given other addresses, networks described
differently. What the daemon itself is built on — its own addresses (heartbeat sockets, API
listeners), the heartbeat timing and ports, the API ports, the etcd it asks for leases — is
taken at its next restart. A new
cluster name is another cluster, and no node can remove itself: those are refused. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass

from hakit.config.model import Cluster


@dataclass(frozen=True)
class ClusterChange:
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    readdressed: tuple[str, ...] = ()  # other nodes with other addresses
    networks: tuple[str, ...] = ()  # networks added, removed or described differently
    restart: tuple[str, ...] = ()  # fields this daemon takes only when it restarts
    refused: tuple[str, ...] = ()  # why this node cannot take the configuration at all

    @property
    def empty(self) -> bool:
        return not (
            self.added
            or self.removed
            or self.readdressed
            or self.networks
            or self.restart
            or self.refused
        )

    @property
    def live(self) -> bool:
        """The daemon takes it without restarting (nothing refused, nothing of its own)."""
        return not self.restart and not self.refused

    def summary(self) -> str:
        """One line: `node3 added; node4 removed` (or `no change`)."""
        parts = []
        for what, names in (
            ("added", self.added),
            ("removed", self.removed),
            ("readdressed", self.readdressed),
        ):
            if names:
                parts.append(f"{', '.join(names)} {what}")
        if self.networks:
            parts.append(f"network(s) {', '.join(self.networks)} changed")
        if self.restart:
            parts.append(f"{', '.join(self.restart)} changed")
        return "; ".join(parts) or "no change"


def _addresses(c: Cluster, node: str) -> dict[str, str]:
    return {n: str(a) for n, a in c.nodes[node].addresses.items()}


def compare(old: Cluster, new: Cluster, local: str) -> ClusterChange:
    """How `new` differs from `old` (what `local`'s daemon runs with), for `local`."""
    refused = []
    if new.cluster != old.cluster:
        refused.append(
            f"the cluster name changes from {old.cluster} to {new.cluster}: that is another "
            "cluster (its nodes would not hear each other); keep the name"
        )
    if local not in new.nodes:
        refused.append(
            f"{local} is not in it: a node cannot remove itself (run `hakit cluster "
            f"remove-node {local}` on another member)"
        )
    restart = []
    if new.heartbeat != old.heartbeat:
        restart += [
            f"heartbeat.{f}"
            for f in type(new.heartbeat).model_fields
            if getattr(new.heartbeat, f) != getattr(old.heartbeat, f)
        ]
    if new.api != old.api:
        restart += [
            f"api.{f}"
            for f in type(new.api).model_fields
            if getattr(new.api, f) != getattr(old.api, f)
        ]
    if new.etcd != old.etcd:  # the daemon's etcd witness is built once, with its TLS files
        if new.etcd is None or old.etcd is None:
            restart.append("etcd")
        else:
            restart += [
                f"etcd.{f}"
                for f in type(new.etcd).model_fields
                if getattr(new.etcd, f) != getattr(old.etcd, f)
            ]
    if (
        local in new.nodes
        and local in old.nodes
        and _addresses(new, local) != _addresses(old, local)
    ):
        restart.append(f"nodes.{local}.addresses")
    others = [n for n in new.nodes if n != local]
    return ClusterChange(
        added=tuple(n for n in others if n not in old.nodes),
        removed=tuple(n for n in old.nodes if n not in new.nodes and n != local),
        readdressed=tuple(
            n for n in others if n in old.nodes and _addresses(new, n) != _addresses(old, n)
        ),
        networks=tuple(
            n
            for n in {**old.networks, **new.networks}
            if old.networks.get(n) != new.networks.get(n)
        ),
        restart=tuple(restart),
        refused=tuple(refused),
    )
