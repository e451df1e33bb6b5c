"""The `boot` policy: what a module does when its daemon starts."""

from __future__ import annotations

import itertools

import pytest

from hakit.core.boot import POLICIES, at_start


@pytest.mark.parametrize(
    ("policy", "rebooted", "was_running"),
    list(itertools.product(POLICIES, (False, True), (False, True))),
)
def test_a_daemon_restart_resumes_and_a_machine_restart_follows_the_policy(
    policy, rebooted, was_running
) -> None:
    decision = at_start(policy, rebooted, was_running)
    if not rebooted:
        expected = was_running  # an upgrade or a crash of the daemon: what ran runs again
    else:
        expected = {"on": True, "off": False, "auto": was_running}[policy]
    assert decision.start is expected
    if rebooted and (was_running or policy == "on"):
        assert f"boot: {policy}" in decision.why  # said in the timeline
