"""One-direction cuts (asymmetric partitions): an nftables table of its own in the lab's
switch namespace, beside the symmetric cuts of `netfilter` (which it never touches).

`drop(lab, src, dst)` drops every frame `src` sends to `dst` (on one network or all) while
`dst`'s frames still reach `src`; `clear(lab)` lifts them all. The set is replaced as a whole
in one transaction, like `netfilter`'s, and disappears with the switch at `lab down`. Lab
state is not recorded in lab.json: these cuts are a campaign's, undone by it.
"""

from __future__ import annotations

from hakit.lab.lab import Lab
from hakit.lab.namespaces import netns_path, run

TABLE = "hakit_lab_oneway"
SET = "oneway"


def ruleset() -> str:
    return f"""\
table bridge {TABLE} {{
\tset {SET} {{
\t\ttype ifname . ifname
\t\tcomment "input port . output port pairs dropped in that direction only"
\t}}
\tchain forward {{
\t\ttype filter hook forward priority -1; policy accept;
\t\tiifname . oifname @{SET} counter drop
\t}}
}}
"""


def _nft(lab: Lab, script: str, what: str) -> None:
    netns = lab.topology.switch_netns
    run(["nsenter", f"--net={netns_path(netns)}", "--", "nft", "-f", "-"], input=script, what=what)


def pairs(lab: Lab, src: str, dst: str, network: int | None = None) -> list[tuple[str, str]]:
    topo = lab.topology
    ks = [topo.network(network)] if network is not None else range(1, topo.networks + 1)
    return [(topo.host(src).interface(k).port, topo.host(dst).interface(k).port) for k in ks]


def _set(lab: Lab, elems: list[tuple[str, str]]) -> None:
    # one transaction: (re)create the table (`add` then `delete`: idempotent whether or not
    # it exists, nft 1.0.6 has no `destroy`), then fill its set
    lines = [f"add table bridge {TABLE}", f"delete table bridge {TABLE}", ruleset()]
    if elems:
        items = ", ".join(f'"{i}" . "{o}"' for i, o in elems)
        lines.append(f"add element bridge {TABLE} {SET} {{ {items} }}")
    _nft(lab, "\n".join(lines) + "\n", "setting the lab's one-way cuts")


def drop(lab: Lab, src: str, dst: str, network: int | None = None) -> None:
    """Frames from `src` to `dst` are dropped (only this pair: the set is replaced)."""
    _set(lab, pairs(lab, src, dst, network))


def clear(lab: Lab) -> None:
    _set(lab, [])
