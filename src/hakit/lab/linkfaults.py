"""Faults on the lab's links beyond symmetric cuts: one direction dropped (asymmetric
partitions), one service's traffic of a host dropped (e.g. only the witness unreachable), and
random packet loss between hosts — an nftables table of its own in the lab's switch namespace,
beside the symmetric cuts of `netfilter` (which it never touches).

`apply(lab, Faults(...))` replaces every such fault at once, in one transaction; `clear(lab)`
lifts them all. The table disappears with the switch at `lab down`. Lab state is not recorded
in lab.json: these faults are a campaign's, undone by it.
"""

from __future__ import annotations

from dataclasses import dataclass

from hakit.lab.lab import Lab
from hakit.lab.namespaces import netns_path, run

TABLE = "hakit_lab_linkfaults"

Pair = tuple[str, str]  # (input port, output port) of the switch


@dataclass(frozen=True)
class Faults:
    oneway: tuple[Pair, ...] = ()  # frames entering at the first port, leaving at the second
    ports: tuple[tuple[str, int], ...] = ()  # (a host's switch port, a TCP/UDP port): dropped
    # both ways (the host's packets to that port, and from it)
    lossy: tuple[Pair, ...] = ()  # frames between these ports dropped at random …
    loss: int = 0  # … this percentage of them


def ruleset(f: Faults) -> str:
    loss = max(0, min(100, f.loss))
    return f"""\
table bridge {TABLE} {{
\tset oneway {{
\t\ttype ifname . ifname
\t\tcomment "input port . output port pairs dropped in that direction only"
\t}}
\tset ports {{
\t\ttype ifname . inet_service
\t\tcomment "a host's switch port . a service port: that traffic dropped both ways"
\t}}
\tset lossy {{
\t\ttype ifname . ifname
\t\tcomment "input port . output port pairs losing {loss} % of their frames at random"
\t}}
\tchain forward {{
\t\ttype filter hook forward priority -1; policy accept;
\t\tiifname . oifname @oneway counter drop
\t\tmeta l4proto {{ tcp, udp }} iifname . th dport @ports counter drop
\t\tmeta l4proto {{ tcp, udp }} oifname . th sport @ports counter drop
\t\tiifname . oifname @lossy numgen random mod 100 < {loss} counter drop
\t}}
}}
"""


def _nft(lab: Lab, script: str, what: str) -> None:
    netns = lab.topology.switch_netns
    run(["nsenter", f"--net={netns_path(netns)}", "--", "nft", "-f", "-"], input=script, what=what)


def pairs(lab: Lab, src: str, dst: str, network: int | None = None) -> list[Pair]:
    """The (input, output) switch ports of what `src` sends `dst` (one network or all)."""
    topo = lab.topology
    ks = [topo.network(network)] if network is not None else range(1, topo.networks + 1)
    return [(topo.host(src).interface(k).port, topo.host(dst).interface(k).port) for k in ks]


def host_ports(lab: Lab, host: str) -> list[str]:
    """The switch ports of `host`, one per network."""
    topo = lab.topology
    return [topo.host(host).interface(k).port for k in range(1, topo.networks + 1)]


def apply(lab: Lab, f: Faults) -> None:
    # one transaction: (re)create the table (`add` then `delete`: idempotent whether or not
    # it exists, nft 1.0.6 has no `destroy`), then fill its sets
    lines = [f"add table bridge {TABLE}", f"delete table bridge {TABLE}", ruleset(f)]
    for name, elems in (("oneway", f.oneway), ("lossy", f.lossy)):
        if elems:
            items = ", ".join(f'"{i}" . "{o}"' for i, o in elems)
            lines.append(f"add element bridge {TABLE} {name} {{ {items} }}")
    if f.ports:
        items = ", ".join(f'"{i}" . {p}' for i, p in f.ports)
        lines.append(f"add element bridge {TABLE} ports {{ {items} }}")
    _nft(lab, "\n".join(lines) + "\n", "setting the lab's link faults")


def drop(lab: Lab, src: str, dst: str, network: int | None = None) -> None:
    """Frames from `src` to `dst` are dropped, the other direction kept (only this pair)."""
    apply(lab, Faults(oneway=tuple(pairs(lab, src, dst, network))))


def cut_port(lab: Lab, host: str, port: int) -> None:
    """`host`'s traffic to and from service `port` (TCP or UDP) is dropped, on every network."""
    apply(lab, Faults(ports=tuple((p, port) for p in host_ports(lab, host))))


def lose(lab: Lab, a: str, b: str, percent: int) -> None:
    """`percent` % of the frames between `a` and `b`, both ways, every network, dropped."""
    both = (*pairs(lab, a, b), *pairs(lab, b, a))
    apply(lab, Faults(lossy=both, loss=percent))


def clear(lab: Lab) -> None:
    apply(lab, Faults())
