"""The etcd witness's lease rules: what one node may write into etcd for one module. Pure.

The hakit witness (core/witness.py) keeps its leases in its own memory and decides alone. With
etcd, the state lives in etcd's keys and each node decides for itself, over a linearizable read
of them, then writes its decision with a transaction that holds only if nothing changed since
the read. Under `PREFIX/MODULE/`:

- `holder`: the node name, attached to that node's etcd lease (etcd deletes it when the lease
  expires: its TTL after the last keepalive *arrived*);
- `last`: who was granted last and whether it released (`{"node": …, "released": …}`), not
  attached to any lease: tells a released lease (free at once) from an expired one;
- `latest`: the node granted while it served alone (its copy is the only current one);
- `contenders/NODE`: one per node asking for a lease it is refused, attached to that node's
  lease (forgotten when it stops asking); the smallest create revision asked first.

The rules are those of the hakit witness, with etcd's lease in place of its clock:
- the etcd lease lasts `ceil(ttl + grace + MARGIN)` seconds from the last keepalive etcd
  received; the node believes it only `ttl` seconds from when it *sent* that keepalive, so the
  holder's grace has run out by the time etcd deletes `holder` and another node can create it;
- a node takes a lease that expired (not released) only once its own first request of the
  contest is `grace` old (the time the holder needs to notice the separation too), at once if it
  was released, never held, or held last by itself;
- among contenders, the one that asked first wins; a copy outdated by another node served alone
  is refused unless forced.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Holder:
    node: str
    lease: int  # etcd lease id the key is attached to
    revision: int  # mod revision of the key


@dataclass(frozen=True)
class State:
    """What one linearizable range of `PREFIX/MODULE/` found."""

    holder: Holder | None
    last: tuple[str, bool] | None  # (node, released)
    last_revision: int  # 0: absent
    latest: str | None
    latest_revision: int
    contenders: tuple[tuple[str, int], ...]  # (node, create revision), any order


@dataclass(frozen=True)
class Grant:
    """Write `holder` (and `last`, `latest`) in a transaction that holds if `State` did not
    change; the transaction's own read of `holder` then says whether we hold it."""

    latest: str | None  # the `latest` to leave: a node name, or None (delete)
    reason: str


@dataclass(frozen=True)
class Refuse:
    holder: str
    reason: str
    register: bool  # record this node as a contender (its first request of the contest)


MARGIN = 0.1  # s: etcd's leader and the node measure the lease with different clocks


def etcd_ttl(ttl: float, grace: float) -> int:
    """etcd's lease TTL (whole seconds): the node's ttl, the holder's grace and a safety margin
    (`MARGIN`: 0.1 s is 100 ppm of clock-rate difference over 1000 s), rounded up."""
    return max(1, math.ceil(ttl + grace + MARGIN - 1e-9))


def believed(ttl: float, grace: float, etcd: int) -> float:
    """How long after sending a keepalive a node may believe a lease whose etcd TTL is `etcd`
    (what etcd said it granted: never less than asked, etcd may raise it to its minimum)."""
    return max(0.0, min(ttl, etcd - grace - MARGIN))


def encode_last(node: str, released: bool) -> bytes:
    return json.dumps({"node": node, "released": released}, separators=(",", ":")).encode()


def decode_last(value: bytes) -> tuple[str, bool] | None:
    try:
        data = json.loads(value)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    node, released = data.get("node"), data.get("released")
    if not isinstance(node, str) or not isinstance(released, bool):
        return None
    return node, released


def decide(
    state: State,
    node: str,
    module: str,
    lease: int,
    *,
    asked_for: float | None,  # seconds since this node's first request of the contest, or None
    grace: float,
    alone: bool,
    force: bool,
) -> Grant | Refuse:
    """An `acquire` (or `renew`) by `node`, whose current etcd lease is `lease`."""
    h = state.holder
    mine = [rev for n, rev in state.contenders if n == node]
    if h is not None and h.node != node:
        return Refuse(h.node, f"held by {h.node}", register=not mine)
    keep = _latest(state, node, alone, force)
    if h is not None:  # ours: renewed (perhaps moved onto our current etcd lease)
        same = h.lease == lease
        return Grant(keep, "renewed" if same else "granted (held by this node before)")
    if state.latest is not None and state.latest != node and not force:
        return Refuse(
            "",
            f"{state.latest} served {module} without {node} and was granted the lease then: "
            f"the copy on {node} is outdated (`hakit primforce {module}` on {node} gives up "
            f"what {state.latest} wrote alone)",
            register=False,
        )
    earlier = sorted(
        (rev, n) for n, rev in state.contenders if n != node and (not mine or rev < mine[0])
    )
    if earlier:
        return Refuse("", f"{earlier[0][1]} asked first", register=not mine)
    if state.last is None:
        return Grant(keep, "granted (never held)")
    last, released = state.last
    if released:
        return Grant(keep, f"granted ({last} released it)")
    if last == node:
        return Grant(keep, "granted (this node held it last)")
    waited = asked_for if mine else None
    if waited is None or waited < grace:
        return Refuse(
            "",
            f"{last}'s lease expired: waiting for its grace of {grace:g} s",
            register=not mine,
        )
    return Grant(keep, f"granted ({last}'s lease expired)")


def _latest(state: State, node: str, alone: bool, force: bool) -> str | None:
    """The `latest` mark once `node` is granted: itself if it serves alone or is forced, gone
    if it was the mark and has a ready secondary again, else unchanged."""
    if alone or force:
        return node
    return None if state.latest == node else state.latest
