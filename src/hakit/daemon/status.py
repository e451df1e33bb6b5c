"""The node's status document: the JSON of `hakit state --json` and `GET /v1/state`.

Contract (PRODUCT.md): `{"cluster", "node", "nodes": {NODE: {"alive", "networks": {NET: bool}}},
"modules": {}}`; hakit adds fields, never renames these.
"""

from __future__ import annotations

import time
from typing import Any

from hakit.config.model import Cluster


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
            "since": p["since"],
            "clock_offset": p.get("clock_offset"),
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
