"""Rules that relate several fields of a configuration, including the timing budget.

Pure functions over a validated model, each problem with the path of the field to blame.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from urllib.parse import urlsplit

from hakit.config.model import MIN_PULSES_PER_TIMEOUT, Cluster


@dataclass(frozen=True)
class Problem:
    loc: tuple[str | int, ...]
    value: str | None
    expected: str


def check_timing(config: Cluster) -> list[Problem]:
    """The heartbeat timing budget (see docs/architecture.md, "Timing budget")."""
    hb = config.heartbeat
    needed = MIN_PULSES_PER_TIMEOUT * hb.interval
    if hb.timeout + 1e-9 < needed:
        return [
            Problem(
                ("heartbeat", "timeout"),
                f"{hb.timeout:g}",
                f"must be at least {MIN_PULSES_PER_TIMEOUT} × heartbeat.interval "
                f"({needed:g} s with interval {hb.interval:g} s), so that "
                f"{MIN_PULSES_PER_TIMEOUT - 1} lost heartbeats in a row never lose a peer",
            )
        ]
    return []


def check_topology(config: Cluster) -> list[Problem]:
    out: list[Problem] = []
    owner: dict[str, tuple[str, str]] = {}
    for node, spec in config.nodes.items():
        if not spec.addresses:
            out.append(Problem(("nodes", node, "addresses"), "{}", "at least one network address"))
        for net, addr in spec.addresses.items():
            loc = ("nodes", node, "addresses", net)
            if net not in config.networks:
                out.append(
                    Problem(
                        loc,
                        None,
                        f"unknown network {net!r}; declared networks: {', '.join(config.networks)}",
                    )
                )
            subnet = config.networks[net].subnet if net in config.networks else None
            if subnet is not None and (addr.version != subnet.version or addr not in subnet):
                out.append(
                    Problem(loc, str(addr), f"must be inside network {net}'s subnet {subnet}")
                )
            key = str(addr)
            if key in owner:
                other = owner[key]
                out.append(
                    Problem(
                        loc,
                        key,
                        f"address already used by node {other[0]} on network {other[1]}; "
                        "every address must be unique",
                    )
                )
            else:
                owner[key] = (node, net)
    for net in config.networks:
        members = [n for n, s in config.nodes.items() if net in s.addresses]
        if len(members) < min(2, len(config.nodes)):
            out.append(
                Problem(
                    ("networks", net),
                    None,
                    f"only {len(members)} node(s) have an address on this network; "
                    "a network needs at least 2 nodes (or remove it)",
                )
            )
    for a, b in combinations(config.nodes, 2):
        shared = set(config.nodes[a].addresses) & set(config.nodes[b].addresses)
        if not shared and config.nodes[a].addresses and config.nodes[b].addresses:
            out.append(
                Problem(
                    ("nodes", b, "addresses"),
                    None,
                    f"node {b} shares no network with node {a}; they could never exchange "
                    "heartbeats",
                )
            )
    return out


def check_ports(config: Cluster) -> list[Problem]:
    out = []
    if config.api.port == config.heartbeat.port:
        out.append(
            Problem(("api", "port"), str(config.api.port), "must differ from heartbeat.port")
        )
    if config.api.join_port in (config.api.port, config.heartbeat.port):
        out.append(
            Problem(
                ("api", "join_port"),
                str(config.api.join_port),
                "must differ from api.port and heartbeat.port",
            )
        )
    return out


def check_cluster(config: Cluster) -> list[Problem]:
    return check_timing(config) + check_topology(config) + check_ports(config) + check_etcd(config)


def check_etcd(config: Cluster) -> list[Problem]:
    """`etcd.endpoints` are `https://HOST:PORT`, each once; `etcd.prefix` is an absolute key."""
    out: list[Problem] = []
    if config.etcd is None:
        return out
    seen: dict[str, int] = {}
    for i, url in enumerate(config.etcd.endpoints):
        loc = ("etcd", "endpoints", i)
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            parts, port = None, None
        if parts is None or parts.scheme != "https" or not parts.hostname or port is None:
            out.append(Problem(loc, url, "expected https://HOST:PORT (TLS is required)"))
        elif parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
            out.append(Problem(loc, url, "expected https://HOST:PORT, without path or user"))
        elif url.rstrip("/") in seen:
            out.append(
                Problem(loc, url, f"already listed as etcd.endpoints[{seen[url.rstrip('/')]}]")
            )
        seen.setdefault(url.rstrip("/"), i)
    prefix = config.etcd.prefix
    if prefix and (not prefix.startswith("/") or len(prefix) > 200 or not prefix.isprintable()):
        out.append(
            Problem(
                ("etcd", "prefix"),
                prefix,
                "expected a key starting with / (200 characters at most)",
            )
        )
    return out
