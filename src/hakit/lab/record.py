"""`lab.json`: what a lab is (its parameters) and what state it is in (power, daemons, cuts).

The topology (names, addresses) is recomputed from the parameters; it is also written out in
full for people reading the file. Writes are atomic (temporary file + rename).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hakit.lab.errors import LabError
from hakit.lab.topology import Cut, Topology

VERSION = 1
LabState = Literal["creating", "up"]
Power = Literal["on", "off"]


@dataclass
class HostState:
    power: Power = "on"
    daemon_pid: int | None = None
    daemon_started: int | None = None  # start time in clock ticks: (pid, started) is the identity


@dataclass
class LabRecord:
    name: str
    nodes: int
    networks: int
    clients: int
    private: tuple[str, ...]
    daemon: bool
    root: str  # directory holding lab.json and the hosts' private files
    state: LabState = "creating"
    creator_pid: int = 0
    created_at: str = ""
    hosts: dict[str, HostState] = field(default_factory=dict)
    cuts: tuple[Cut, ...] = ()
    daemon_command: tuple[str, ...] = ("hakit", "daemon")

    def topology(self) -> Topology:
        return Topology(self.name, self.nodes, self.networks, self.clients, self.private)

    def to_json(self) -> dict[str, Any]:
        topo = self.topology()
        return {
            "version": VERSION,
            "name": self.name,
            "state": self.state,
            "creator_pid": self.creator_pid,
            "created_at": self.created_at,
            "root": self.root,
            "nodes": self.nodes,
            "networks": self.networks,
            "clients": self.clients,
            "private": list(self.private),
            "daemon": self.daemon,
            "daemon_command": list(self.daemon_command),
            "switch_netns": topo.switch_netns,
            "hosts": {
                h.name: {
                    "kind": h.kind,
                    "netns": h.netns,
                    "addresses": h.addresses,
                    "interfaces": {i.network: i.name for i in h.interfaces},
                    "ports": {i.network: i.port for i in h.interfaces},
                    "power": self.hosts.get(h.name, HostState()).power,
                    "daemon_pid": self.hosts.get(h.name, HostState()).daemon_pid,
                    "daemon_started": self.hosts.get(h.name, HostState()).daemon_started,
                }
                for h in topo.hosts
            },
            "cuts": [[c.a, c.b, c.network] for c in self.cuts],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LabRecord:
        if data.get("version") != VERSION:
            raise ValueError(f"unknown version {data.get('version')!r}")
        state = data["state"]
        if state not in ("creating", "up"):
            raise ValueError(f"unknown state {state!r}")
        hosts: dict[str, HostState] = {}
        for name, h in data["hosts"].items():
            power = h.get("power", "on")
            if power not in ("on", "off"):
                raise ValueError(f"unknown power {power!r}")
            hosts[str(name)] = HostState(power, h.get("daemon_pid"), h.get("daemon_started"))
        return cls(
            name=str(data["name"]),
            nodes=int(data["nodes"]),
            networks=int(data["networks"]),
            clients=int(data["clients"]),
            private=tuple(str(p) for p in data["private"]),
            daemon=bool(data["daemon"]),
            root=str(data["root"]),
            state=state,
            creator_pid=int(data.get("creator_pid", 0)),
            created_at=str(data.get("created_at", "")),
            hosts=hosts,
            cuts=tuple(Cut(str(a), str(b), str(n)) for a, b, n in data.get("cuts", [])),
            daemon_command=tuple(str(a) for a in data.get("daemon_command", ["hakit", "daemon"])),
        )


def load(path: Path) -> LabRecord | None:
    """The record at `path`; None if there is none; LabError if it is unreadable."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        return LabRecord.from_json(json.loads(text))
    except (ValueError, KeyError, TypeError, LabError) as e:
        raise LabError(f"{path} is not a valid lab record ({e})") from e


def save(path: Path, record: LabRecord) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record.to_json(), indent=2) + "\n")
    os.replace(tmp, path)
