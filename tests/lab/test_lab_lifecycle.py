"""A lab's life: `down` leaves nothing, crashed or interrupted labs are cleaned up, failures
are reported. Each test builds its own small lab (no daemons unless stated)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hakit.lab.errors import LabError
from hakit.lab.lab import Lab
from hakit.lab.namespaces import RUNTIME_DIR, mounts_under, netns_list, netns_path, start_time
from hakit.lab.testing import can_ping, unavailable_reason, unique_name, wait_until
from hakit.lab.topology import netns_prefix

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason())),
]


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """A lab object (not built); whatever the test does, the lab is removed afterwards."""
    lab = Lab(unique_name(), root=tmp_path / "labs")
    try:
        yield lab
    finally:
        lab.down(missing_ok=True)


def leftovers(lab: Lab) -> list[str]:
    """Everything of `lab` still on the machine."""
    found = [n for n in netns_list() if n.startswith(netns_prefix(lab.name))]
    found += mounts_under(RUNTIME_DIR / lab.name)
    found += [str(p) for p in (RUNTIME_DIR / lab.name, lab.dir) if p.exists()]
    return found


def test_down_removes_processes_namespaces_mounts_and_files(lab: Lab) -> None:
    lab.up(nodes=2, networks=1, clients=1, daemon=False)
    pids = [lab.spawn(host, ["sleep", "300"]) for host in ("node1", "node2", "client1")]
    assert leftovers(lab)

    report = lab.down()

    assert set(pids) <= set(report.killed)
    assert [p for p in pids if start_time(p) is not None] == []
    assert leftovers(lab) == []
    assert lab.status() == "absent"
    with pytest.raises(LabError, match="no lab named"):
        lab.down()


def test_up_of_an_existing_lab_fails_and_says_how_to_remove_it(lab: Lab) -> None:
    lab.up(nodes=1, networks=1, clients=0, daemon=False)
    with pytest.raises(LabError, match=f"already exists.*hakit lab down {lab.name}"):
        Lab(lab.name, root=lab.root).up(nodes=2, daemon=False)
    assert lab.nodes == ("node1",)  # untouched


def test_a_lab_belongs_to_the_root_that_created_it(lab: Lab, tmp_path: Path) -> None:
    lab.up(nodes=1, networks=1, clients=0, daemon=False)
    other = Lab(lab.name, root=tmp_path / "elsewhere")
    with pytest.raises(LabError, match="belongs to"):
        other.up(nodes=1, daemon=False)
    with pytest.raises(LabError, match="belongs to"):
        other.down()
    assert lab.exists()


def test_two_labs_coexist_and_removing_one_keeps_the_other(lab: Lab, tmp_path: Path) -> None:
    lab.up(nodes=2, networks=1, clients=0, daemon=False)
    with Lab(unique_name(), root=tmp_path / "labs").up(2, 1, 0, daemon=False) as second:
        # Same addresses in both labs, different worlds.
        assert lab.address("node2") == second.address("node2")
        assert can_ping(second, "node1", "node2")
        lab.exec("node1", ["sh", "-c", "echo first > /etc/hakit/which"])
        assert second.exec("node1", ["cat", "/etc/hakit/which"], check=False).returncode == 1
        lab.down()
        assert can_ping(second, "node1", "node2")
        assert second.exec("node1", ["ls", "/etc/hakit"], capture=True).stdout.split() == [
            "cluster.key",
            "cluster.yaml",
        ]
    assert leftovers(second) == []


def test_a_lab_whose_record_is_lost_is_removed_by_down(lab: Lab) -> None:
    lab.up(nodes=2, networks=1, clients=0, daemon=False)
    sleeper = lab.spawn("node1", ["sleep", "300"])
    lab.record_path.unlink()
    assert lab.status() == "broken"
    assert lab.name in [x.name for x in Lab.all(root=lab.root)]
    assert lab.describe()["state"] == "broken"

    lab.down()

    assert start_time(sleeper) is None
    assert leftovers(lab) == []


def test_a_lab_whose_record_is_lost_is_replaced_by_up(lab: Lab) -> None:
    lab.up(nodes=2, networks=1, clients=0, daemon=False)
    sleeper = lab.spawn("node2", ["sleep", "300"])
    lab.record_path.unlink()

    lab.up(nodes=2, networks=2, clients=0, daemon=False)

    assert start_time(sleeper) is None
    assert lab.networks == ("net1", "net2")
    assert can_ping(lab, "node1", "node2", 2)


# at the lowest priority, so that on a loaded machine (two test workers) the Ctrl-C the test
# sends once the first namespace exists still finds the build under way
UP_SCRIPT = """
import os, sys
from hakit.lab.lab import Lab
os.nice(19)
Lab(sys.argv[1], root=sys.argv[2]).up(nodes=5, networks=2, clients=1, daemon=False)
print("UP-COMPLETED", flush=True)
"""


def start_up_in_background(lab: Lab) -> subprocess.Popen[str]:
    """`up` in its own process group, returned once it has started building."""
    proc = subprocess.Popen(
        [sys.executable, "-c", UP_SCRIPT, lab.name, str(lab.root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    switch = netns_path(f"{netns_prefix(lab.name)}sw")
    wait_until(switch.exists, 20, "the lab's first namespace", interval=0.002)
    return proc


def test_an_up_killed_midway_is_cleaned_by_the_next_up(lab: Lab) -> None:
    proc = start_up_in_background(lab)
    os.killpg(proc.pid, signal.SIGKILL)  # the command and the tools it runs die at once
    out, _ = proc.communicate(timeout=10)
    assert "UP-COMPLETED" not in out
    assert lab.status() == "broken"

    lab.up(nodes=2, networks=1, clients=0, daemon=False)

    assert can_ping(lab, "node1", "node2")
    assert [n for n in netns_list() if n.startswith(netns_prefix(lab.name))] == [
        f"hk.{lab.name}.{h}" for h in ("node1", "node2", "sw")
    ]


def test_an_interrupted_up_removes_what_it_built(lab: Lab) -> None:
    for _ in range(3):  # on a loaded machine the Ctrl-C can come after `up` finished: again
        proc = start_up_in_background(lab)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        out, _ = proc.communicate(timeout=30)
        if "UP-COMPLETED" not in out:
            break
        lab.down()
    assert proc.returncode != 0, out
    assert "Traceback" in out
    assert "UP-COMPLETED" not in out
    assert leftovers(lab) == []


def test_a_daemon_that_fails_is_reported_with_its_output(lab: Lab) -> None:
    with pytest.raises(LabError) as err:
        lab.up(
            nodes=2,
            networks=1,
            clients=0,
            daemon_command=["sh", "-c", "echo boom-on-$(hostname) >&2; exit 3"],
            daemon_timeout=10,
        )
    msg = str(err.value)
    assert "exited before opening its API socket" in msg
    node = msg.split(":", 1)[0]
    assert node in ("node1", "node2")
    assert f"boom-on-{node}" in msg
    assert f"hakit lab down {lab.name}" in msg
    assert lab.status() == "up"  # left up for inspection
    out = lab.host_path(node, "/var/log/hakit/daemon.out").read_text()
    assert f"boom-on-{node}" in out


def test_a_daemon_that_never_answers_times_out(lab: Lab) -> None:
    with pytest.raises(LabError, match=r"node1: .*did not open its API socket .* within 1 s"):
        lab.up(nodes=1, networks=1, clients=0, daemon_command=["sleep", "300"], daemon_timeout=1)
    pid = lab.hosts()["node1"].daemon_pid
    assert pid is not None
    lab.down()
    assert start_time(pid) is None
