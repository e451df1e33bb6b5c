"""A new `cluster.yaml` for a running daemon: checked as `hakit config check` would, then
written and taken live when it can be (`hakit config apply`, `add-node`, `remove-node`, SIGHUP).

The check is the whole of `config check` on this node — the file itself, its secret (which
must be the one this daemon runs with: rotating the key is another procedure), and every
installed module loaded against the new configuration — plus what only a running daemon can
tell: whether it can take the change live (`config.changes`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hakit.adapters.statefile import write_file
from hakit.config.changes import ClusterChange, compare
from hakit.config.clashes import check_installed
from hakit.config.load import ClusterFile, load_cluster_text
from hakit.config.model import Cluster
from hakit.errors import ConfigError
from hakit.paths import Paths

CONFIG_MODE = 0o644


def heartbeat_peers(cfg: Cluster, local: str) -> dict[str, dict[str, str]]:
    """Each peer's address on every network it shares with `local` (the heartbeat process's
    `peers`)."""
    nets = cfg.networks_of(local)
    return {
        p: {n: str(cfg.nodes[p].addresses[n]) for n in nets if n in cfg.nodes[p].addresses}
        for p in cfg.peers_of(local)
    }


@dataclass(frozen=True)
class Candidate:
    """A configuration checked on this node."""

    node: str
    cluster: ClusterFile | None
    change: ClusterChange | None
    problems: tuple[str, ...]
    modules: dict[str, list[str]] = field(default_factory=dict)  # installed -> its nodes

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        change = self.change
        return {
            "node": self.node,
            "ok": self.ok,
            "problems": list(self.problems),
            "changes": change.summary() if change else "",
            "live": bool(change and change.live),
            "restart": list(change.restart) if change else [],
            "modules": self.modules,
        }


def check_candidate(paths: Paths, running: ClusterFile, local: str, text: str) -> Candidate:
    """Everything `hakit config check` checks, for `text` as this node's `cluster.yaml`."""
    path = paths.cluster_config
    try:
        cf = load_cluster_text(text, path)
    except ConfigError as e:
        return Candidate(local, None, None, tuple(str(i) for i in e.issues))
    problems: list[str] = []
    if cf.secret != running.secret:
        problems.append(
            f"{path}: secret_file: the secret is not the one this daemon runs with; a new "
            "secret is installed on every node and the daemons restarted (docs/security.md)"
        )
    change = compare(running.config, cf.config, local)
    problems += [f"{path}: {r}" for r in change.refused]
    good, bad = check_installed(paths.modules, cf.config)
    problems += [f"module {b}" for b in bad]
    modules = {m.name: list(m.config.nodes) for m in good}
    return Candidate(local, cf, change, tuple(problems), modules)


def write_config(path: Path, text: str) -> None:
    """Replace `cluster.yaml` by `text` atomically and durably (its mode kept)."""
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = CONFIG_MODE
    write_file(path, text.encode(), mode, what="configuration", why="the daemon reads it")
