"""Network cuts: an nftables table in the lab's switch namespace (bridge family, forward hook).

The switch drops every frame whose (input port, output port) pair is in the set `cuts`, so a
cut is symmetric, covers ARP and broadcast (the bridge filters each flooded copy per output
port) and leaves every other pair of hosts untouched. The set is replaced as a whole in one
nftables transaction (`flush set` + `add element`), so changes are atomic and idempotent
(nft 1.0.6 has no `destroy element`: deleting an absent element is an error).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from hakit.lab.namespaces import netns_path, run

TABLE = "hakit_lab"
SET = "cuts"


def ruleset() -> str:
    return f"""\
table bridge {TABLE} {{
\tset {SET} {{
\t\ttype ifname . ifname
\t\tcomment "input port . output port pairs that cannot talk (hakit lab cut)"
\t}}
\tchain forward {{
\t\ttype filter hook forward priority 0; policy accept;
\t\tiifname . oifname @{SET} counter drop
\t}}
}}
"""


def _quote(name: str) -> str:
    return '"' + name + '"'


def set_script(pairs: Sequence[tuple[str, str]]) -> str:
    """One nft transaction making the set exactly `pairs`."""
    lines = [f"flush set bridge {TABLE} {SET}"]
    if pairs:
        elems = ", ".join(f"{_quote(i)} . {_quote(o)}" for i, o in pairs)
        lines.append(f"add element bridge {TABLE} {SET} {{ {elems} }}")
    return "\n".join(lines) + "\n"


def _nft(netns: str, script: str, what: str) -> None:
    run(
        ["nsenter", f"--net={netns_path(netns)}", "--", "nft", "-f", "-"],
        input=script,
        what=what,
    )


def install(netns: str) -> None:
    _nft(netns, ruleset(), "installing the lab's nftables table in its switch")


def apply(netns: str, pairs: Sequence[tuple[str, str]]) -> None:
    _nft(netns, set_script(pairs), "updating the lab's network cuts")


def current(netns: str) -> list[tuple[str, str]]:
    """The pairs in the switch's set now (observed state, for checks and repair)."""
    nft = ["nft", "-j", "list", "set", "bridge", TABLE, SET]
    out = run(
        ["nsenter", f"--net={netns_path(netns)}", "--", *nft],
        what="reading the lab's network cuts",
    )
    pairs: list[tuple[str, str]] = []
    for item in json.loads(out).get("nftables", []):
        for elem in item.get("set", {}).get("elem", []):
            i, o = elem["concat"]
            pairs.append((str(i), str(o)))
    return pairs
