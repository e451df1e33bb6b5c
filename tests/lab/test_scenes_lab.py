"""The architectures of docs/architectures.md, as `hakit lab demo --scene NAME` tells them: each
scene runs on a lab of its own and checks every claim it prints (a claim that does not hold
is a DemoFailed naming the step), so running it is the architecture's test.

- farm-mirror: a web farm on three servers and a mirrored application on two; a power cut of
  the server that has both: the farm's share moves, the application restarts with its data.
- active-active: two applications, each preferring its own server; failure, return, failback
  after failback_delay with the data written meanwhile.
- n-1: two applications sharing one backup (max_primaries: 1); two power cuts at once, the
  backup runs both and says it is over capacity; both fail back.
- vm: two KVM guests cross-replicated on two hosts; `hakit swap` of one, a power cut of the
  host running both: every write each guest acknowledged is on the disk it boots from.
"""

from __future__ import annotations

import io
import os
import shutil

import pytest
from rich.console import Console

from hakit.lab.lab import Lab
from hakit.lab.scenes import SCENES, build_lab

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
    pytest.mark.skipif(not shutil.which("nft"), reason="the lab needs nftables (nft)"),
]

# what each scene must have said, besides finishing: a few of the claims it checked
SAID = {
    "farm-mirror": ["node2 took over with the data", "every connection served again"],
    "active-active": [
        "appa back on node1",
        "with what node2 wrote",
        "failback to node1, the default primary, in 3 s",
    ],
    "n-1": ["more than its max_primaries 1", "appa on node1 again", "appb on node2 again"],
    "vm": ["on node1 before the swap", "on node2 before its power cut", "nothing lost"],
}


@pytest.mark.parametrize("scene", list(SCENES))
def test_the_scene_tells_and_checks_its_architecture(scene: str) -> None:
    story = SCENES[scene]
    if why := story.missing():
        pytest.skip(why)
    lab = Lab(f"tsc{scene.replace('-', '')[:5]}")
    lab.down(missing_ok=True)
    out = io.StringIO()
    try:
        build_lab(lab, story)
        told = story(lab, Console(file=out, width=120, color_system=None))
        try:
            told.run()
        finally:
            told.close()
    finally:
        print(out.getvalue())
        lab.down(missing_ok=True)
    text = out.getvalue()
    for claim in SAID[scene]:
        assert claim in text, claim


def test_the_demo_command_offers_every_scene() -> None:
    from hakit.cli.lab import demo

    choices = next(p for p in demo.params if p.name == "scene").type.choices  # type: ignore[attr-defined]
    assert list(choices) == ["tour", *SCENES]
