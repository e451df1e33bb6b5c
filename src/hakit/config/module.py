"""Module configuration: `/etc/hakit/modules/NAME/module.yaml` (+ `bin/` scripts).

A module is hakit configured for one application. This file holds the models (field
descriptions feed `docs/config-reference.md`), the rules that relate a module to the cluster,
and the loader. `kind` selects the model: `mirror` (two nodes, active/passive) or `farm`
(N nodes, active/active behind one load-balanced virtual IP).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    IPvAnyAddress,
    StringConstraints,
)

from hakit.config.checkers import Checker, ModuleChecker, Recovery, VipChecker
from hakit.config.cloud import HealthProbe, check_cloud
from hakit.config.load import Marks, dotted, parse_yaml, read_text, validate
from hakit.config.model import Cluster, Frozen, Name, Regex
from hakit.config.rules import Problem
from hakit.config.vips import VirtualIp
from hakit.core.boot import Policy
from hakit.errors import ConfigError, ConfigIssue, HakitError

MODULE_FILE = "module.yaml"
SCRIPTS = (
    "prestart",
    "start_prim",
    "stop_prim",
    "start_second",
    "stop_second",
    "poststop",
    "transition",
)
FARM_SCRIPTS = ("prestart", "start_both", "stop_both", "poststop", "transition")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
ServiceName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9:_.@-]{0,254}$")]
SERVICES_DESCRIPTION = (
    "Operating system services the module runs (systemd units, or `/etc/init.d` scripts where "
    "systemd does not run), started in this order {where} after the start script and stopped "
    "in the reverse order before the stop script; their own start at boot is switched off "
    "when the module starts, and each is checked (an implied `process` checker "
    "`service-NAME` with `unit: NAME`, unless the module has a checker of that name)."
)


def _unique(values: tuple[str, ...]) -> tuple[str, ...]:
    twice = sorted({v for v in values if values.count(v) > 1})
    if twice:
        raise ValueError(f"listed twice: {', '.join(twice)}")
    return values


Services = Annotated[tuple[ServiceName, ...], AfterValidator(_unique)]
EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]


class Scripts(Frozen):
    """Time limits of the module's scripts (in `bin/`)."""

    start_timeout: float = Field(
        120.0, gt=0, le=3600, description="Seconds a start script may run before it is killed."
    )
    stop_timeout: float = Field(
        120.0,
        gt=0,
        le=3600,
        description=(
            "Seconds a stop script may run. Stop scripts are called twice: gracefully, then "
            "with `force` if the graceful call fails or times out."
        ),
    )


def _relative(value: str) -> str:
    parts = value.split("/")
    if value.startswith("/") or "\0" in value or any(p in ("", ".", "..") for p in parts):
        raise ValueError("a relative path without `.`, `..` or empty components")
    return value


def _absolute(value: str) -> str:
    parts = value.split("/")[1:]
    if not value.startswith("/") or value == "/" or any(p in ("", ".", "..") for p in parts):
        raise ValueError("an absolute path other than `/`, without `.`, `..` or a trailing `/`")
    return value


RelPath = Annotated[str, StringConstraints(max_length=4096), AfterValidator(_relative)]
AbsPath = Annotated[str, StringConstraints(max_length=4096), AfterValidator(_absolute)]


class ReplicatedDir(Frozen):
    """A directory whose content is replicated to the secondary in real time."""

    path: AbsPath = Field(
        description=(
            "Absolute path, the same on both nodes (any directory, not only a mount point; "
            "not `/`, not inside another replicated directory)."
        ),
    )
    exclude: tuple[RelPath, ...] = Field(
        (), description="Relative paths not replicated (with everything under them)."
    )
    exclude_regex: tuple[Regex, ...] = Field(
        (),
        description=(
            "Regular expressions (Python syntax, searched in the relative path, e.g. "
            "`\\.tmp$`); a matching path and everything under it is not replicated."
        ),
    )
    only: tuple[RelPath, ...] = Field(
        (),
        description=(
            '"Only these": when given, only these relative paths (and what is under them) '
            "are replicated."
        ),
    )
    only_regex: tuple[Regex, ...] = Field((), description='"Only these", as regular expressions.')
    require: tuple[RelPath, ...] = Field(
        (),
        description=(
            "Files that must exist in the directory before a node replicates it as primary "
            "(guards against serving an empty or unmounted directory, e.g. `PG_VERSION`); the "
            "secondary's copy may start empty."
        ),
    )


class Replication(Frozen):
    """Real-time synchronous replication of directories from the primary to the secondary."""

    dirs: tuple[ReplicatedDir, ...] = Field(min_length=1, description="Replicated directories.")
    mode: Literal["sync", "semi"] = Field(
        "sync",
        description=(
            "`sync`: the secondary acknowledges an operation once applied, an fsync once "
            "durable on its disk; `semi`: it acknowledges on receipt (faster on slow disks; "
            "an fsync then means the secondary *has* the data, not that it is on its disk)."
        ),
    )
    network: Name | None = Field(
        None,
        description=(
            "Cluster network carrying the replication stream (default: the first network the "
            "two nodes share). May differ from the heartbeat networks."
        ),
    )
    port: int = Field(
        7360,
        ge=1,
        le=65535,
        description="TCP port of the secondary's replication listener (one per module).",
    )
    resync_bandwidth: float = Field(
        0,
        ge=0,
        description=(
            "Cap on resynchronisation traffic in MB/s (0 = none). The application's own "
            "writes are never throttled."
        ),
    )


class WitnessRef(Frozen):
    """A witness (`hakit witness` on a third machine) that grants the primary role: when the two
    nodes lose each other, only the node holding its lease may be or become primary."""

    addresses: tuple[IPvAnyAddress, ...] = Field(
        min_length=1,
        description="Addresses of the witness (several: tried at once, the first answer wins).",
    )
    port: int = Field(7355, ge=1, le=65535, description="UDP port of the witness.")
    ttl: float = Field(
        1.0,
        ge=0.4,
        le=60,
        description=(
            "Seconds a lease lasts; the primary renews it every `ttl`/4. A primary that can "
            "reach neither the witness nor its peer stops serving when its lease ends."
        ),
    )
    grace: float = Field(
        0.5,
        ge=0,
        le=60,
        description=(
            "Seconds the witness waits after a lease ended (and after the other node first "
            "asked) before granting it to the other node: the time a primary that lost its "
            "lease has to release its VIPs."
        ),
    )


class EtcdLease(Frozen):
    """The lease of the primary role kept in the cluster's etcd (`etcd:` of `cluster.yaml`):
    when the two nodes lose each other, only the node holding it may be or become primary."""

    ttl: float = Field(
        1.0,
        ge=0.4,
        le=60,
        description=(
            "Seconds a node believes its lease after it sent its last renewal; the primary "
            "renews it every `ttl`/4. A primary that can reach neither etcd nor its peer stops "
            "serving when its lease ends."
        ),
    )
    grace: float = Field(
        0.5,
        ge=0,
        le=60,
        description=(
            "Seconds more etcd keeps the lease (its etcd TTL is `ttl + grace + 0.1` rounded up "
            "to whole seconds), and that the other node waits after it first asked before it "
            "takes a lease that expired: the time a primary that lost its lease has to "
            "release its VIPs."
        ),
    )


class SplitBrain(Frozen):
    """Protection against two primaries after a network split, and what happens when the two
    nodes meet again after both were primary."""

    keep: str = Field(
        "first-primary",
        description=(
            "Which node stays primary when the nodes meet again after both were primary: "
            "`first-primary` (the one primary for longer, i.e. not the one that took over "
            "during the split), `last-primary`, a node name, or `manual` (both stop being "
            "primary and wait for `hakit prim` on the node to keep). The other node becomes "
            "secondary; the files its resynchronisation overwrites are kept in a dated folder "
            "with a report, never discarded. With a witness or etcd the node holding the "
            "lease stays, whatever this says (the other's lease lapsed while it was frozen "
            "or stalled)."
        ),
    )
    witness: WitnessRef | None = Field(
        None, description="A witness that arbitrates (see [witness](witness.md))."
    )
    etcd: EtcdLease | None = Field(
        None,
        description=(
            "The cluster's etcd (`etcd:` of `cluster.yaml`) arbitrates, instead of a hakit "
            "witness (see [witness](witness.md#etcd))."
        ),
    )
    ping: tuple[IPvAnyAddress, ...] = Field(
        (),
        description=(
            "A simple ping witness for sites without a third machine: a node takes over from "
            "a peer it lost only if at least one of these addresses answers (e.g. the router "
            "that only one side of a split can reach)."
        ),
    )
    ping_timeout: float = Field(
        1.0, gt=0, le=30, description="Seconds to wait for an answer of the ping witness."
    )

    @property
    def lease(self) -> WitnessRef | EtcdLease | None:
        """The lease that arbitrates (a hakit witness or etcd), if any."""
        return self.witness or self.etcd

    fence_timeout: float = Field(
        60.0,
        gt=0,
        le=3600,
        description=(
            "Seconds the fencing script `bin/fence` (IPMI, cloud API, hypervisor…) may take; "
            "when it exists, it runs before a node takes over from a peer it cannot see, and "
            "the takeover happens only if it succeeds."
        ),
    )


def _on_off(value: object) -> object:
    """YAML reads a bare `on` / `off` as a boolean: take it as the word."""
    return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


BootPolicy = Annotated[Policy, BeforeValidator(_on_off)]

BOOT_DESCRIPTION = (
    "Whether the module starts when this node's machine starts: `auto` (again if it was "
    "running before the restart), `on` (always), `off` (never: an operator starts it). A "
    "restart of the daemon alone (an upgrade, a crash) always resumes what was running."
)


class MirrorModule(Frozen):
    """A mirror module: the application runs on one of two nodes, the primary."""

    kind: Literal["mirror"] = Field(description="`mirror` (active/passive on two nodes).")
    nodes: tuple[Name, Name] = Field(description="The two cluster nodes running this module.")
    heartbeat_networks: tuple[Name, ...] | None = Field(
        None,
        min_length=1,
        description=(
            "Networks whose heartbeats decide whether the other node is alive for this module "
            "(default: every network the two nodes share)."
        ),
    )
    vips: tuple[VirtualIp, ...] = Field((), description="Virtual IPs held by the primary.")
    failover: bool = Field(
        True,
        description=(
            "Take over automatically when the primary fails. Off: the secondary waits for an "
            "operator (`hakit prim`). Switchable at run time with `hakit failover on|off`."
        ),
    )
    default_primary: str = Field(
        "alone",
        description=(
            "Who is primary when both nodes run: `alone` (the node that was running alone "
            "stays primary), `lastprim` (the node that was primary last), or a node name (after "
            "the other node is back and synchronised, roles are swapped back to that node)."
        ),
    )
    failback_delay: float = Field(
        0,
        ge=0,
        le=86400,
        description=(
            "With `default_primary` a node name: seconds that node, back and a ready secondary, "
            "stays secondary before the roles are swapped back (0: at once). It must stay "
            "ready all that time; leaving and returning starts the delay again."
        ),
    )
    scripts: Scripts = Field(default_factory=Scripts, description="Script time limits.")
    services: Services = Field((), description=SERVICES_DESCRIPTION.format(where="on the primary"))
    boot: BootPolicy = Field("auto", description=BOOT_DESCRIPTION)
    replication: Replication | None = Field(
        None, description="Directories replicated to the secondary (none: no replication)."
    )
    split_brain: SplitBrain = Field(
        default_factory=SplitBrain, description="Split-brain protection and resolution."
    )
    checkers: tuple[Checker, ...] = Field(
        (), description="Failure detectors (see [checkers](checkers.md))."
    )
    recovery: Recovery = Field(
        default_factory=Recovery, description="Loop protection of automatic recoveries."
    )
    variables: dict[EnvName, str] = Field(
        default_factory=dict,
        description="Variables passed to every script in its environment.",
    )
    health_probe: HealthProbe | None = Field(
        None,
        description=(
            "An HTTP endpoint for cloud load balancers and monitors: 200 while this node "
            "serves the module, 503 otherwise (see [cloud](cloud.md))."
        ),
    )

    def peer_of(self, node: str) -> str:
        a, b = self.nodes
        return b if node == a else a


class FarmRule(Frozen):
    """Which client traffic to the farm's VIPs is load-balanced, and on what it is hashed."""

    protocol: Literal["tcp", "udp"] = Field(description="`tcp` or `udp`.")
    port: int | None = Field(
        None, ge=1, le=65535, description="Destination port (none: every port of the protocol)."
    )
    by: Literal["client-ip", "client-ip-port"] = Field(
        "client-ip",
        description=(
            "`client-ip`: session affinity, every connection of one client address goes to "
            "the same node; `client-ip-port`: each connection is placed on its own (evener "
            "with few clients, for stateless services)."
        ),
    )


class FarmModule(Frozen):
    """A farm module: the application runs on every node; one VIP load-balanced over them."""

    kind: Literal["farm"] = Field(description="`farm` (active/active on 2 or more nodes).")
    nodes: tuple[Name, ...] = Field(
        min_length=2, max_length=64, description="The cluster nodes running this module."
    )
    weights: dict[Name, int] = Field(
        default_factory=dict,
        description=(
            "Relative share of each node (default 1). `0`: a standby that takes traffic only "
            "when every node with a weight above 0 is gone."
        ),
    )
    heartbeat_networks: tuple[Name, ...] | None = Field(
        None,
        min_length=1,
        description=(
            "Networks whose heartbeats decide which nodes are alive for this module (default: "
            "every network of the cluster). A node is alive while it is heard on any of them."
        ),
    )
    vips: tuple[VirtualIp, ...] = Field(
        min_length=1,
        description=(
            "Virtual IPv4 addresses held by every UP node; each node accepts only its share "
            "of the new connections."
        ),
    )
    rules: tuple[FarmRule, ...] = Field(
        min_length=1,
        description=(
            "Load-balanced traffic. Other TCP/UDP traffic to the VIPs is dropped; ICMP is "
            "answered by one node (hashed on the client address)."
        ),
    )
    virtual_mac: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$",
        description=(
            "Unicast MAC every node answers ARP with for the VIPs and that no node ever sends "
            "from, so switches flood the VIPs' traffic to every node (default: `02:48` + the "
            "first VIP's four bytes). Must be a locally administered unicast address."
        ),
    )
    boot: BootPolicy = Field("auto", description=BOOT_DESCRIPTION)
    checkers: tuple[Checker, ...] = Field(
        (),
        description=(
            "Failure detectors (see [checkers](checkers.md)); a node joins the farm once its "
            "checkers pass and leaves it while one with an action fails."
        ),
    )
    recovery: Recovery = Field(
        default_factory=Recovery, description="Loop protection of automatic recoveries."
    )
    scripts: Scripts = Field(default_factory=Scripts, description="Script time limits.")
    services: Services = Field((), description=SERVICES_DESCRIPTION.format(where="on every node"))
    variables: dict[EnvName, str] = Field(
        default_factory=dict,
        description="Variables passed to every script in its environment.",
    )
    health_probe: HealthProbe | None = Field(
        None,
        description=(
            "An HTTP endpoint for cloud load balancers and monitors: 200 while this node "
            "serves the module, 503 otherwise (see [cloud](cloud.md))."
        ),
    )

    def weight(self, node: str) -> int:
        return self.weights.get(node, 1)

    @property
    def mac(self) -> str:
        if self.virtual_mac is not None:
            return self.virtual_mac
        ip = self.vips[0].address.ip.packed
        return ":".join(f"{b:02x}" for b in (0x02, 0x48, *ip))


ModuleConfig = MirrorModule | FarmModule


def check_farm(m: FarmModule, cluster: Cluster) -> list[Problem]:
    out: list[Problem] = []
    for i, n in enumerate(m.nodes):
        if n not in cluster.nodes:
            out.append(
                Problem(("nodes", i), n, f"not a cluster node; nodes: {', '.join(cluster.nodes)}")
            )
        elif n in m.nodes[:i]:
            out.append(Problem(("nodes", i), n, "listed twice"))
    for n, w in m.weights.items():
        if n not in m.nodes:
            out.append(Problem(("weights", n), n, f"not a node of this farm: {', '.join(m.nodes)}"))
        elif not 0 <= w <= 1000:
            out.append(Problem(("weights", n), str(w), "a weight from 0 to 1000"))
    if m.weights and all(m.weight(n) == 0 for n in m.nodes):
        out.append(Problem(("weights",), None, "at least one node needs a weight above 0"))
    if out:
        return out
    everywhere = [
        net for net in cluster.networks if all(net in cluster.nodes[n].addresses for n in m.nodes)
    ]
    for i, net in enumerate(m.heartbeat_networks or ()):
        if net not in cluster.networks:
            out.append(
                Problem(
                    ("heartbeat_networks", i),
                    net,
                    f"a cluster network: {', '.join(cluster.networks)}",
                )
            )
    node_addrs = {str(addr) for spec in cluster.nodes.values() for addr in spec.addresses.values()}
    seen: set[str] = set()
    for i, vip in enumerate(m.vips):
        ip = str(vip.address.ip)
        if vip.address.version != 4:
            out.append(
                Problem(("vips", i, "address"), str(vip.address), "an IPv4 address (farm VIPs)")
            )
        if vip.network is not None and vip.network not in everywhere:
            out.append(
                Problem(
                    ("vips", i, "network"),
                    vip.network,
                    "a network every farm node is on; such networks: "
                    + (", ".join(everywhere) or "none"),
                )
            )
        if vip.network is not None and vip.network in everywhere:
            out += _vip_in_subnet(i, vip, vip.network, m.nodes, cluster)
        if ip in node_addrs:
            out.append(Problem(("vips", i, "address"), str(vip.address), "is a node's own address"))
        if ip in seen:
            out.append(Problem(("vips", i, "address"), str(vip.address), "listed twice"))
        seen.add(ip)
    mac = bytes.fromhex(m.mac.replace(":", ""))
    if m.virtual_mac is not None and (mac[0] & 1 or not mac[0] & 2):
        out.append(
            Problem(
                ("virtual_mac",),
                m.virtual_mac,
                "a locally administered unicast MAC (second hex digit 2, 6, a or e)",
            )
        )
    seen_rules: set[tuple[str, int | None]] = set()
    for i, r in enumerate(m.rules):
        key = (r.protocol, r.port)
        if key in seen_rules:
            out.append(Problem(("rules", i), f"{r.protocol} {r.port or 'any'}", "listed twice"))
        seen_rules.add(key)
    return out


def check_against_cluster(m: ModuleConfig, cluster: Cluster) -> list[Problem]:
    own = check_farm(m, cluster) if isinstance(m, FarmModule) else check_mirror(m, cluster)
    return own + check_checkers(m, cluster) + check_cloud(m, cluster)


def check_checkers(m: ModuleConfig, cluster: Cluster) -> list[Problem]:
    out: list[Problem] = []
    seen: set[str] = set()
    for i, c in enumerate(m.checkers):
        if c.name in seen:
            out.append(Problem(("checkers", i, "name"), c.name, "listed twice"))
        seen.add(c.name)
        if m.kind == "farm" and c.when in ("primary", "secondary"):
            out.append(
                Problem(
                    ("checkers", i, "when"),
                    c.when,
                    "`before-start` or `every-node` (a farm has no primary or secondary)",
                )
            )
        if c.when == "before-start" and c.effective_action in ("restart", "stopstart"):
            out.append(
                Problem(
                    ("checkers", i, "action"),
                    c.effective_action,
                    "`wait`, `stop` or `none` for a `before-start` checker (the application is "
                    "not running yet: there is nothing to restart)",
                )
            )
        if isinstance(c, VipChecker):
            if not m.vips:
                out.append(Problem(("checkers", i, "type"), "vip", "a module with `vips`"))
            if c.effective_when(m.kind) in ("before-start", "secondary"):
                out.append(
                    Problem(
                        ("checkers", i, "when"),
                        c.when,
                        "where the node holds the VIPs: `primary` or `every-node`",
                    )
                )
        if isinstance(c, ModuleChecker):
            if c.node is not None and c.cluster is None and c.node not in cluster.nodes:
                out.append(
                    Problem(
                        ("checkers", i, "node"),
                        c.node,
                        f"a cluster node: {', '.join(cluster.nodes)}",
                    )
                )
            if c.action == "restart" or c.action == "stopstart":
                out.append(
                    Problem(
                        ("checkers", i, "action"),
                        c.action,
                        "`wait`, `stop` or `none`: restarting this module does not bring "
                        "another one back",
                    )
                )
    return out


def check_mirror(m: MirrorModule, cluster: Cluster) -> list[Problem]:
    out: list[Problem] = []
    a, b = m.nodes
    if a == b:
        out.append(Problem(("nodes",), f"[{a}, {b}]", "two different nodes"))
    for i, n in enumerate(m.nodes):
        if n not in cluster.nodes:
            out.append(
                Problem(("nodes", i), n, f"not a cluster node; nodes: {', '.join(cluster.nodes)}")
            )
    if out:
        return out
    shared = [n for n in cluster.networks_of(a) if n in cluster.nodes[b].addresses]
    for i, net in enumerate(m.heartbeat_networks or ()):
        if net not in shared:
            out.append(
                Problem(
                    ("heartbeat_networks", i),
                    net,
                    f"not a network shared by {a} and {b}; shared: {', '.join(shared) or 'none'}",
                )
            )
    if m.split_brain.keep not in ("first-primary", "last-primary", "manual", *m.nodes):
        out.append(
            Problem(
                ("split_brain", "keep"),
                m.split_brain.keep,
                f"expected first-primary, last-primary, manual, {a} or {b}",
            )
        )
    w = m.split_brain.witness
    hb = cluster.heartbeat
    on_nodes = [a for a in w.addresses if a in _node_ips(cluster)] if w else []
    if w is not None and on_nodes and w.port == hb.port:
        out.append(
            Problem(
                ("split_brain", "witness", "port"),
                str(w.port),
                f"the witness runs on a cluster node ({on_nodes[0]}) whose heartbeat port "
                f"(heartbeat.port, UDP) is {hb.port}: choose another witness port",
            )
        )
    lease, which = m.split_brain.lease, "witness" if w is not None else "etcd"
    if w is not None and m.split_brain.etcd is not None:
        out.append(
            Problem(
                ("split_brain", "etcd"),
                "etcd",
                "a module has one arbiter: `split_brain.witness` or `split_brain.etcd`, not both",
            )
        )
    if m.split_brain.etcd is not None and cluster.etcd is None:
        out.append(
            Problem(
                ("split_brain", "etcd"),
                "etcd",
                "cluster.yaml has no `etcd:` section (endpoints, ca, cert, key): see "
                "docs/witness.md#etcd",
            )
        )
    if lease is not None and lease.grace < 1.5 * hb.interval + 0.1:
        out.append(
            Problem(
                ("split_brain", which, "grace"),
                f"{lease.grace:g}",
                f"at least 1.5 × heartbeat.interval + 0.1 s = {1.5 * hb.interval + 0.1:g} s: "
                "the two nodes may notice their separation that far apart, and the primary "
                "must have released its VIPs before the other is granted the role",
            )
        )
    if lease is not None and hb.timeout + lease.grace < 6 * hb.interval + 0.1:
        out.append(
            Problem(
                ("split_brain", which, "grace"),
                f"{lease.grace:g}",
                f"heartbeat.timeout + grace must be at least 6 × heartbeat.interval + 0.1 s = "
                f"{6 * hb.interval + 0.1:g} s (timeout {hb.timeout:g} s): a primary whose "
                "witness does not answer stays primary while its peer vouches for it, and a "
                "peer that stops hearing it withdraws that within 2 intervals (+1 to hear it), "
                "long enough before it may be granted the role (docs/mirror.md#split-brain)",
            )
        )
    if m.failback_delay and m.default_primary not in m.nodes:
        out.append(
            Problem(
                ("failback_delay",),
                f"{m.failback_delay:g}",
                "applies only with `default_primary` a node name (the server to go back to)",
            )
        )
    if m.default_primary not in ("alone", "lastprim", *m.nodes):
        out.append(
            Problem(
                ("default_primary",),
                m.default_primary,
                f"expected alone, lastprim, {a} or {b}",
            )
        )
    if m.replication is not None:
        r = m.replication
        if r.network is not None and r.network not in shared:
            out.append(
                Problem(
                    ("replication", "network"),
                    r.network,
                    f"not a network shared by {a} and {b}; shared: {', '.join(shared) or 'none'}",
                )
            )
        for taken, what in ((cluster.api.port, "API"), (cluster.api.join_port, "join")):
            if r.port == taken:
                field = "port" if what == "API" else "join_port"
                out.append(
                    Problem(
                        ("replication", "port"),
                        str(r.port),
                        f"is the cluster's {what} port (api.{field}, TCP on every node "
                        "address): choose another port",
                    )
                )
        paths = [d.path for d in r.dirs]
        for i, d in enumerate(r.dirs):
            for j, other in enumerate(paths):
                if j != i and (d.path == other or d.path.startswith(other.rstrip("/") + "/")):
                    out.append(
                        Problem(
                            ("replication", "dirs", i, "path"),
                            d.path,
                            f"overlaps replicated directory {other}",
                        )
                    )
    node_addrs = {str(addr) for spec in cluster.nodes.values() for addr in spec.addresses.values()}
    seen: set[str] = set()
    for i, vip in enumerate(m.vips):
        ip = str(vip.address.ip)
        if vip.network is not None and vip.network not in shared:
            out.append(
                Problem(
                    ("vips", i, "network"),
                    vip.network,
                    f"not a network shared by {a} and {b}; shared: {', '.join(shared) or 'none'}",
                )
            )
        if vip.network is not None and vip.network in shared:
            out += _vip_in_subnet(i, vip, vip.network, m.nodes, cluster)
        if ip in node_addrs:
            out.append(Problem(("vips", i, "address"), str(vip.address), "is a node's own address"))
        if ip in seen:
            out.append(Problem(("vips", i, "address"), str(vip.address), "listed twice"))
        seen.add(ip)
    return out


def _node_ips(cluster: Cluster) -> set[IPAddress]:
    return {addr for spec in cluster.nodes.values() for addr in spec.addresses.values()}


def _vip_in_subnet(
    i: int, vip: VirtualIp, net: str, nodes: tuple[str, ...], cluster: Cluster
) -> list[Problem]:
    """A VIP placed by `network` must be reachable there: inside the network's `subnet` when
    the cluster declares it, else its own prefix must hold both nodes' addresses on `net`
    (a host prefix, /32 or /128, without a declared subnet cannot be checked). A VIP placed by
    `interface` is not checked: the interface may carry any subnet."""
    subnet = cluster.networks[net].subnet
    fix = (
        f"use an address of {net}'s subnet, or name the `interface` that carries the VIP's "
        "subnet instead of `network`"
    )
    ip = vip.address.ip
    if subnet is not None:
        if ip.version != subnet.version or ip not in subnet:
            return [
                Problem(
                    ("vips", i, "address"),
                    str(vip.address),
                    f"outside network {net}'s subnet {subnet}: clients on {net} cannot reach "
                    f"it; {fix}",
                )
            ]
        return []
    own = vip.address.network
    if own.prefixlen == own.max_prefixlen:
        return []
    for node in nodes:
        addr = cluster.nodes[node].addresses.get(net) if node in cluster.nodes else None
        if addr is None:
            continue  # reported by the checks of `nodes` and `network`
        if addr.version != own.version or addr not in own:
            return [
                Problem(
                    ("vips", i, "address"),
                    str(vip.address),
                    f"outside network {net}'s subnet: {node}'s address on {net} is {addr}, "
                    f"not in the VIP's subnet {own}; clients on {net} cannot reach it; {fix} "
                    f"(or declare networks.{net}.subnet)",
                )
            ]
    return []


@dataclass(frozen=True)
class ModuleFile:
    name: str
    dir: Path
    config: ModuleConfig

    @property
    def bin(self) -> Path:
        return self.dir / "bin"


MODULE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}\Z")


def load_module(directory: Path, cluster: Cluster | None, name: str | None = None) -> ModuleFile:
    """Load and check a module folder against the cluster (None: the module alone, where there
    is no cluster configuration); `ConfigError` lists every problem."""
    name = name or directory.name
    path = directory / MODULE_FILE
    file = str(path)
    if not MODULE_NAME.match(name):
        raise ConfigError(
            [
                ConfigIssue(
                    str(directory),
                    None,
                    "",
                    repr(name),
                    "module name: a letter, then letters, digits, '_' or '-' (at most 32)",
                )
            ]
        )
    missing = (
        f"file not found: a module folder holds its {MODULE_FILE} (and bin/ with its "
        "scripts); `hakit module check FOLDER` checks one, docs/mirror.md and docs/farm.md "
        "describe them"
    )
    data, marks = parse_yaml(read_text(path, missing), file)
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind not in ("mirror", "farm"):
        raise ConfigError(
            [
                ConfigIssue(
                    file,
                    marks.line(("kind",)),
                    "kind",
                    None if kind is None else repr(kind),
                    ("required: " if kind is None else "expected ") + "`mirror` or `farm`",
                )
            ]
        )
    config: ModuleConfig = validate(
        FarmModule if kind == "farm" else MirrorModule, data, marks, file
    )
    problems = check_against_cluster(config, cluster) if cluster is not None else []
    scripts = FARM_SCRIPTS if isinstance(config, FarmModule) else SCRIPTS
    bin_dir = directory / "bin"
    if bin_dir.exists() and not bin_dir.is_dir():
        problems.append(Problem((), None, f"{bin_dir} must be a folder of scripts"))
    elif bin_dir.is_dir():
        for p in sorted(bin_dir.iterdir()):
            if p.name in scripts and not p.is_file():
                problems.append(Problem((), None, f"script {p} is not a regular file"))
            elif p.name in scripts and not p.stat().st_mode & 0o100:
                problems.append(
                    Problem((), None, f"script {p} is not executable: run `chmod +x {p}`")
                )
    _raise(problems, file, marks)
    return ModuleFile(name=name, dir=directory, config=config)


def load_installed(modules: Path, cluster: Cluster, exclude: str = "") -> list[ModuleFile]:
    """The modules installed in `modules` that load (broken ones are reported elsewhere)."""
    out: list[ModuleFile] = []
    if not modules.is_dir():
        return out
    for d in sorted(modules.iterdir()):
        if d.name == exclude or d.name.startswith(".") or not (d / MODULE_FILE).is_file():
            continue
        try:
            out.append(load_module(d, cluster))
        except (HakitError, OSError):
            continue
    return out


def _raise(problems: list[Problem], file: str, marks: Marks) -> None:
    if problems:
        raise ConfigError(
            [
                ConfigIssue(
                    file, marks.line(p.loc) if p.loc else None, dotted(p.loc), p.value, p.expected
                )
                for p in problems
            ]
        )
