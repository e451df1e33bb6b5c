"""The shape of a lab, computed from (lab name, nodes, networks, clients): pure, no effects.

Names, addresses, interface names, MAC addresses, the `ip -batch` lines that build the
switch and each host, the `/etc/hosts` text and the cluster map written into every node all
come from here, so the effectful code in `namespaces`, `netfilter` and `lab` only executes
a plan.

Layout (lab `demo`, 2 nodes, 2 networks, 1 client)::

    netns hk.demo.sw       bridges net1, net2; ports node1-net1, node2-net1, client1-net1, ...
    netns hk.demo.node1    eth0 10.100.1.11/24 (net1), eth1 10.100.2.11/24 (net2)
    netns hk.demo.node2    eth0 10.100.1.12/24,        eth1 10.100.2.12/24
    netns hk.demo.client1  eth0 10.100.1.101/24,       eth1 10.100.2.101/24
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from hakit.lab.errors import LabError

NETNS_PREFIX = "hk"
LAB_NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,15}")
MAX_NODES = 32
MAX_NETWORKS = 8
MAX_CLIENTS = 32
PREFIXLEN = 24
NODE_HOST_BASE = 10  # node i is .(10+i)
CLIENT_HOST_BASE = 100  # client j is .(100+j)

# Private to every host: same absolute path on every node, different content (interface contract).
DEFAULT_PRIVATE: tuple[str, ...] = ("/etc/hakit", "/var/lib/hakit", "/var/log/hakit", "/srv")
# Private paths under these are emptied at power-on, as a reboot empties tmpfs.
VOLATILE_PREFIXES: tuple[str, ...] = ("/run", "/tmp", "/var/run")
# Never private: the kernel's views, and paths whose hiding would break the lab itself.
FORBIDDEN_UNDER: tuple[str, ...] = ("/proc", "/sys", "/dev", "/run/netns", "/run/hakit-lab")
FORBIDDEN_EXACT: tuple[str, ...] = ("/", "/etc", "/var", "/usr", "/run", "/bin", "/sbin", "/lib")

HostKind = Literal["node", "client"]


def validate_lab_name(name: str) -> str:
    if not LAB_NAME_RE.fullmatch(name):
        raise LabError(
            f"bad lab name {name!r}: expected a lowercase letter then up to 15 lowercase "
            "letters, digits or '-' (e.g. demo, pg-test)"
        )
    return name


def network_name(k: int) -> str:
    return f"net{k}"


def parse_network(value: str | int, networks: int) -> int:
    """`2`, `"2"` or `"net2"` -> 2, checked against the lab's number of networks."""
    text = str(value).strip()
    digits = text[3:] if text.startswith("net") else text
    if not digits.isdigit():
        raise LabError(f"bad network {value!r}: expected a number K or netK (e.g. 1 or net1)")
    k = int(digits)
    if not 1 <= k <= networks:
        have = ", ".join(network_name(i) for i in range(1, networks + 1))
        raise LabError(f"no network {value!r} in this lab: it has {have}")
    return k


def is_under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def normalize_private(paths: Iterable[str], *, protected: Iterable[str] = ()) -> tuple[str, ...]:
    """The default private paths plus `paths`, checked, normalised, deduplicated, shortest first.

    `protected` are paths that must stay visible inside the hosts (the lab root, the Python
    installation): a private path may not be one of them nor contain one.
    """
    protected = tuple(protected)
    out: list[str] = list(DEFAULT_PRIVATE)
    for raw in paths:
        if not raw.startswith("/"):
            raise LabError(f"--private {raw!r}: expected an absolute path (e.g. /var/lib/pgsql)")
        if any(part == ".." for part in raw.split("/")):
            raise LabError(f"--private {raw!r}: '..' is not allowed")
        path = posixpath.normpath(raw)
        if path.startswith("//"):
            path = "/" + path.lstrip("/")
        if path in FORBIDDEN_EXACT or any(is_under(path, f) for f in FORBIDDEN_UNDER):
            raise LabError(
                f"--private {raw!r}: this path cannot be private to a lab host "
                "(it is needed by the system or by the lab itself); choose a deeper path"
            )
        for keep in protected:
            if is_under(keep, path):
                raise LabError(
                    f"--private {raw!r}: it contains {keep}, which every lab host needs to see"
                )
        if path not in out:
            out.append(path)
    return tuple(sorted(out, key=lambda p: (p.count("/"), p)))


def is_volatile(path: str) -> bool:
    return any(is_under(path, p) for p in VOLATILE_PREFIXES)


@dataclass(frozen=True)
class Interface:
    """A host's attachment to one network: a veth pair, `name` in the host, `port` on the switch."""

    k: int
    network: str
    name: str
    port: str
    address: str
    mac: str

    @property
    def cidr(self) -> str:
        return f"{self.address}/{PREFIXLEN}"


@dataclass(frozen=True)
class Host:
    name: str
    kind: HostKind
    index: int
    netns: str
    interfaces: tuple[Interface, ...]

    @property
    def addresses(self) -> dict[str, str]:
        return {i.network: i.address for i in self.interfaces}

    def interface(self, k: int) -> Interface:
        return self.interfaces[k - 1]


def host_octet(kind: HostKind, index: int) -> int:
    return (NODE_HOST_BASE if kind == "node" else CLIENT_HOST_BASE) + index


def _host(lab: str, kind: HostKind, index: int, networks: int) -> Host:
    name = f"{kind}{index}"
    octet = host_octet(kind, index)
    interfaces = tuple(
        Interface(
            k=k,
            network=network_name(k),
            name=f"eth{k - 1}",
            port=f"{name}-{network_name(k)}",
            address=f"10.100.{k}.{octet}",
            # 02 = locally administered; then the IPv4 address, so a MAC names its host.
            mac=f"02:00:0a:64:{k:02x}:{octet:02x}",
        )
        for k in range(1, networks + 1)
    )
    return Host(name, kind, index, f"{NETNS_PREFIX}.{lab}.{name}", interfaces)


@dataclass(frozen=True)
class Topology:
    lab: str
    nodes: int
    networks: int
    clients: int
    private: tuple[str, ...] = DEFAULT_PRIVATE
    hosts: tuple[Host, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        validate_lab_name(self.lab)
        for what, value, low, high in (
            ("--nodes", self.nodes, 1, MAX_NODES),
            ("--networks", self.networks, 1, MAX_NETWORKS),
            ("--clients", self.clients, 0, MAX_CLIENTS),
        ):
            if not low <= value <= high:
                raise LabError(f"{what} {value}: expected {low}..{high}")
        hosts = [_host(self.lab, "node", i, self.networks) for i in range(1, self.nodes + 1)]
        hosts += [_host(self.lab, "client", j, self.networks) for j in range(1, self.clients + 1)]
        object.__setattr__(self, "hosts", tuple(hosts))

    # -- names -----------------------------------------------------------------------------
    @property
    def netns_prefix(self) -> str:
        return netns_prefix(self.lab)

    @property
    def switch_netns(self) -> str:
        return switch_netns(self.lab)

    @property
    def network_names(self) -> tuple[str, ...]:
        return tuple(network_name(k) for k in range(1, self.networks + 1))

    @property
    def node_names(self) -> tuple[str, ...]:
        return tuple(h.name for h in self.hosts if h.kind == "node")

    @property
    def client_names(self) -> tuple[str, ...]:
        return tuple(h.name for h in self.hosts if h.kind == "client")

    @property
    def all_netns(self) -> tuple[str, ...]:
        return (self.switch_netns, *(h.netns for h in self.hosts))

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        have = ", ".join(h.name for h in self.hosts)
        raise LabError(f"no host {name!r} in lab {self.lab}: it has {have}")

    def node(self, name: str) -> Host:
        h = self.host(name)
        if h.kind != "node":
            raise LabError(f"{name} is a client, not a node of lab {self.lab}")
        return h

    def network(self, value: str | int) -> int:
        return parse_network(value, self.networks)

    def address(self, host: str, network: str | int = 1) -> str:
        return self.host(host).interface(self.network(network)).address

    # -- what is written into the hosts ---------------------------------------------------
    def cluster_nodes(self) -> dict[str, dict[str, str]]:
        """The `nodes` argument of `render_cluster_yaml`: node -> {network: address}."""
        return {h.name: h.addresses for h in self.hosts if h.kind == "node"}

    def hosts_file(self) -> str:
        """`/etc/hosts` seen by every host of the lab: `node2` resolves to its net1 address."""
        lines = [
            "127.0.0.1\tlocalhost",
            "::1\tlocalhost ip6-localhost ip6-loopback",
            f"# hakit lab {self.lab}: HOST is its address on net1, HOST-netK on netK",
        ]
        for h in self.hosts:
            for i in h.interfaces:
                names = f"{h.name} {h.name}-{i.network}" if i.k == 1 else f"{h.name}-{i.network}"
                lines.append(f"{i.address}\t{names}")
        return "\n".join(lines) + "\n"

    # -- plans for `ip -batch` ----------------------------------------------------------------
    def switch_commands(self) -> list[str]:
        """Lines for `ip -n SWITCH -batch -`: bridges, and every veth pair with its host end
        created directly in the host's namespace (nothing ever appears in the root namespace)."""
        lines = ["link set lo up"]
        for k in range(1, self.networks + 1):
            # A dumb switch: no STP delay, multicast flooded like broadcast.
            lines.append(f"link add {network_name(k)} type bridge stp_state 0 mcast_snooping 0")
            lines.append(f"link set {network_name(k)} up")
        for h in self.hosts:
            for i in h.interfaces:
                peer = f"peer name {i.name} address {i.mac} netns {h.netns}"
                lines.append(f"link add {i.port} type veth {peer}")
                lines.append(f"link set {i.port} master {i.network}")
                lines.append(f"link set {i.port} up")
        return lines

    def host_commands(self, host: str) -> list[str]:
        """Lines for `ip -n HOST -batch -`: loopback, addresses, links up."""
        h = self.host(host)
        lines = ["link set lo up"]
        for i in h.interfaces:
            lines.append(f"addr add {i.cidr} broadcast + dev {i.name}")
            lines.append(f"link set {i.name} up")
        return lines

    def link_commands(self, host: str, state: Literal["up", "down"]) -> tuple[list[str], list[str]]:
        """(lines for the host's namespace, lines for the switch) setting both ends up/down."""
        h = self.host(host)
        return (
            [f"link set {i.name} {state}" for i in h.interfaces],
            [f"link set {i.port} {state}" for i in h.interfaces],
        )


def netns_prefix(lab: str) -> str:
    return f"{NETNS_PREFIX}.{lab}."


def switch_netns(lab: str) -> str:
    return f"{NETNS_PREFIX}.{lab}.sw"


def lab_of_netns(name: str) -> str | None:
    """`hk.demo.node1` -> `demo`; None for a namespace that is not a lab's."""
    parts = name.split(".")
    if len(parts) == 3 and parts[0] == NETNS_PREFIX and LAB_NAME_RE.fullmatch(parts[1]):
        return parts[1]
    return None


# -- cuts ---------------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Cut:
    """Hosts `a` and `b` cannot exchange frames on `network` (a < b in host order)."""

    a: str
    b: str
    network: str

    def involves(self, host: str) -> bool:
        return host in (self.a, self.b)


def _pair(topo: Topology, h1: str, h2: str) -> tuple[str, str]:
    order = [h.name for h in topo.hosts]
    topo.host(h1)
    topo.host(h2)
    if h1 == h2:
        raise LabError(f"cannot cut {h1} from itself: name two different hosts")
    a, b = sorted((h1, h2), key=order.index)
    return a, b


def _networks(topo: Topology, network: str | int | None) -> list[str]:
    if network is None:
        return list(topo.network_names)
    return [network_name(topo.network(network))]


def sort_cuts(topo: Topology, cuts: Iterable[Cut]) -> tuple[Cut, ...]:
    order = {h.name: n for n, h in enumerate(topo.hosts)}
    return tuple(sorted(set(cuts), key=lambda c: (order[c.a], order[c.b], c.network)))


def with_cut(
    topo: Topology, cuts: Iterable[Cut], h1: str, h2: str, network: str | int | None = None
) -> tuple[Cut, ...]:
    a, b = _pair(topo, h1, h2)
    return sort_cuts(topo, [*cuts, *(Cut(a, b, n) for n in _networks(topo, network))])


def without_cut(
    topo: Topology,
    cuts: Iterable[Cut],
    h1: str,
    h2: str | None = None,
    network: str | int | None = None,
) -> tuple[Cut, ...]:
    topo.host(h1)
    if h2 is not None:
        _pair(topo, h1, h2)
    nets = set(_networks(topo, network))
    return sort_cuts(
        topo,
        [
            c
            for c in cuts
            if not (c.involves(h1) and (h2 is None or c.involves(h2)) and c.network in nets)
        ],
    )


def isolating(topo: Topology, cuts: Iterable[Cut], host: str) -> tuple[Cut, ...]:
    """`cuts` plus cuts between `host` and every other host on every network."""
    topo.host(host)
    new = list(cuts)
    for other in topo.hosts:
        if other.name != host:
            a, b = _pair(topo, host, other.name)
            new += [Cut(a, b, n) for n in topo.network_names]
    return sort_cuts(topo, new)


def cut_elements(topo: Topology, cuts: Sequence[Cut]) -> list[tuple[str, str]]:
    """The (input port, output port) pairs the switch must drop: both directions of each cut."""
    out: list[tuple[str, str]] = []
    for c in cuts:
        k = topo.network(c.network)
        pa, pb = topo.host(c.a).interface(k).port, topo.host(c.b).interface(k).port
        out += [(pa, pb), (pb, pa)]
    return out
