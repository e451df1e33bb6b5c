"""The node's status document: the JSON of `hakit state --json` and `GET /v1/state`.

Contract (PRODUCT.md): `{"cluster", "node", "nodes": {NODE: {"alive", "networks": {NET: bool}}},
"modules": {}}`; hakit adds fields, never renames these.
"""

from __future__ import annotations

import time
from typing import Any

from hakit import __version__
from hakit.config.model import Cluster
from hakit.core import farm as fm
from hakit.core import mirror as mm
from hakit.wire.heartbeat import VERSION as HEARTBEAT_VERSION
from hakit.wire.heartbeat import module_payloads


def build_status(
    config: Cluster,
    local: str,
    snapshot: dict[str, Any] | None,
    daemon: dict[str, Any],
    now: float | None = None,
) -> dict[str, Any]:
    now = time.time() if now is None else now
    nodes: dict[str, Any] = {}
    peers = (snapshot or {}).get("peers", {})
    local_nets = (snapshot or {}).get("local_networks", {})
    for name in config.nodes:
        nets = config.networks_of(name)
        if name == local:
            nodes[name] = {
                "alive": True,
                "state": "self",
                "networks": {n: bool(local_nets.get(n, False)) for n in nets},
                "last_heard": None,
                "since": daemon.get("started_at"),
                "release": __version__,
                "protocol": HEARTBEAT_VERSION,
            }
            continue
        p = peers.get(name)
        if p is None:
            nodes[name] = {
                "alive": False,
                "state": "unknown",
                "networks": dict.fromkeys(nets, False),
                "last_heard": None,
                "since": None,
            }
            continue
        heard = [t for t in p["last_heard"].values() if t is not None]
        last = max(heard) if heard else None
        nodes[name] = {
            "alive": bool(p["alive"]),
            "state": p["state"],
            "networks": {n: bool(p["networks"].get(n, False)) for n in nets},
            "last_heard": last,
            "last_heard_ago": None if last is None else round(max(0.0, now - last), 3),
            "last_heard_by_network": p["last_heard"],
            "heartbeats_by_network": p.get("heard"),  # accepted, counted since we started
            "heartbeat_gaps_by_network": p.get("gaps"),  # histograms (hakit.latency)
            "since": p["since"],
            "clock_offset": p.get("clock_offset"),
            # what its heartbeats say: protocol 1 (hakit 0.1) carries no release
            "release": p.get("release") or ("0.1" if p.get("protocol") == 1 else None),
            "protocol": p.get("protocol"),
        }
    stats = dict((snapshot or {}).get("stats", {}))
    return {
        "cluster": config.cluster,
        "node": local,
        "at": now,
        "nodes": nodes,
        "modules": {},
        "networks": {n: {"description": net.description} for n, net in config.networks.items()},
        "heartbeat": {
            "port": config.heartbeat.port,
            "interval": config.heartbeat.interval,
            "timeout": config.heartbeat.timeout,
            "network_problems": (snapshot or {}).get("network_problems", {}),
            **stats,
        },
        "daemon": daemon,
    }


def heard_modules(
    peers: dict[str, Any],
    installed: dict[str, tuple[str, tuple[str, ...]]],
    known: set[str],
) -> dict[str, Any]:
    """The modules this node does not run, as the other nodes' heartbeats describe them: those
    installed here for other nodes (`installed`: name -> (kind, nodes)) and any other module a
    peer publishes; `known` (the modules this node runs or has in error) are left out.

    Each one: `{"kind", "here": False, "installed_here", "nodes": {NODE: {"state", "status",
    "reachable", "running"}}}` — a node of the module that publishes nothing for it is STOP."""
    heard: dict[str, dict[str, object]] = {}  # module -> node -> its publication
    alive: dict[str, bool] = {}
    for node, p in peers.items():
        alive[node] = bool(p.get("alive"))
        if not alive[node]:
            continue
        for name, wire in module_payloads(p.get("payload") or "").items():
            heard.setdefault(name, {})[node] = wire
    out: dict[str, Any] = {}
    for name in sorted((set(installed) | set(heard)) - known):
        pubs = heard.get(name, {})
        kind = installed[name][0] if name in installed else _kind_of(next(iter(pubs.values())))
        nodes = installed[name][1] if name in installed else tuple(sorted(pubs))
        out[name] = {
            "kind": kind,
            "here": False,
            "installed_here": name in installed,
            "nodes": {n: _heard_state(kind, pubs.get(n), alive.get(n, False)) for n in nodes},
        }
    return out


def _kind_of(wire: object) -> str:
    return "farm" if isinstance(wire, dict) and wire.get("k") == "farm" else "mirror"


def _heard_state(kind: str, wire: object, alive: bool) -> dict[str, Any]:
    state, status = "STOP", "not-ready"
    if wire is not None:
        if kind == "farm":
            pub = fm.from_wire(wire)
            if pub is not None:
                state, status = pub.state, pub.status
        else:
            info = mm.peer_from_wire(True, wire)
            if info.present:
                state, status = mm.Mirror("", "", "", phase=info.phase).display()
    return {"state": state, "status": status, "reachable": alive, "running": wire is not None}
