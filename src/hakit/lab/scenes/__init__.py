"""The architecture scenes of `hakit lab demo --scene NAME` (docs/architectures.md): each a
recipe told on a lab of its own, checking every claim it prints (the lab tests run them)."""

from __future__ import annotations

from hakit.lab.lab import Lab
from hakit.lab.scenes.active_active import ActiveActive
from hakit.lab.scenes.base import Scene
from hakit.lab.scenes.farm_mirror import FarmMirror
from hakit.lab.scenes.n_minus_1 import NMinus1
from hakit.lab.scenes.vm import VirtualMachines

SCENES: dict[str, type[Scene]] = {
    s.name: s for s in (FarmMirror, ActiveActive, NMinus1, VirtualMachines)
}


def build_lab(lab: Lab, scene: type[Scene]) -> None:
    """The scene's lab: its nodes, one network, one client, its cluster.yaml, the daemons."""
    lab.up(scene.nodes, 1, 1, private=scene.private, daemon=False)
    for node in lab.nodes:
        path = lab.host_path(node, "/etc/hakit/cluster.yaml")
        path.write_text(scene.cluster(path.read_text()))
    lab.start_daemons(list(lab.nodes))


__all__ = ["SCENES", "Scene", "build_lab"]
