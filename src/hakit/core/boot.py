"""Whether a module starts when its daemon starts: the module's `boot` policy, whether the
machine restarted since the module's state was saved, and whether the module was running then.

A daemon restart on the same machine boot (an upgrade, a crash, `systemctl restart hakit`)
always resumes what was running: the application must stay up through a rolling upgrade.
After a restart of the machine (a new kernel boot id) the policy decides.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Policy = Literal["on", "off", "auto"]
POLICIES: tuple[Policy, ...] = ("on", "off", "auto")


@dataclass(frozen=True)
class AtStart:
    start: bool
    why: str  # for the timeline; empty when nothing worth saying happens


# (policy, machine restarted, was running) -> decision; the same machine boot: resume
TABLE: dict[tuple[Policy, bool, bool], AtStart] = {
    **{
        (p, False, True): AtStart(
            True, "resuming: the module was started before the daemon stopped"
        )
        for p in POLICIES
    },
    **{(p, False, False): AtStart(False, "") for p in POLICIES},
    ("auto", True, True): AtStart(
        True, "the machine restarted; boot: auto, and it was running: starting it"
    ),
    ("auto", True, False): AtStart(False, ""),
    ("on", True, True): AtStart(True, "the machine restarted; boot: on: starting it"),
    ("on", True, False): AtStart(
        True, "the machine restarted; boot: on: starting it (it was stopped before)"
    ),
    ("off", True, True): AtStart(
        False, "the machine restarted; boot: off: it stays stopped until an operator starts it"
    ),
    ("off", True, False): AtStart(False, ""),
}


def at_start(policy: Policy, rebooted: bool, was_running: bool) -> AtStart:
    return TABLE[(policy, rebooted, was_running)]
