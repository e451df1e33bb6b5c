"""Mirror modules with replicated directories in a real lab (daemons, FUSE, namespaces).

Each test installs its own module replicating its own directory of the nodes' private /srv.
"""

from __future__ import annotations

import os
import shutil
import textwrap
from collections.abc import Iterator
from itertools import count
from pathlib import Path
from typing import Any

import pytest

from hakit.config.module import SCRIPTS
from hakit.lab.lab import Lab
from hakit.waiting import wait_until
from tests.lab.modules import LabModule, lab_up, removed_after

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
    pytest.mark.skipif(not shutil.which("nft"), reason="the lab needs nftables (nft)"),
]

LAB = "trepl"
_ids = count(1)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with lab_up(LAB, 2, 1, 1) as lab:
        yield lab


class Replicated(LabModule):
    def __init__(self, lab: Lab, tmp: Path, bandwidth: float = 0, mode: str = "sync") -> None:
        n = next(_ids)
        super().__init__(lab, f"data{n}")
        self.dir = f"/srv/{self.name}"
        folder = tmp / self.name
        (folder / "bin").mkdir(parents=True)
        (folder / "module.yaml").write_text(
            textwrap.dedent(
                f"""\
                kind: mirror
                nodes: [node1, node2]
                scripts: {{start_timeout: 20, stop_timeout: 20}}
                replication:
                  mode: {mode}
                  port: {7400 + n}
                  resync_bandwidth: {bandwidth}
                  dirs:
                    - path: {self.dir}
                      exclude: [scratch]
                      require: [.hakit-ok]
                """
            )
        )
        for s in SCRIPTS:
            p = folder / "bin" / s
            p.write_text("#!/bin/sh\nexit 0\n")
            p.chmod(0o755)
        for node in ("node1", "node2"):
            lab.exec(node, ["mkdir", "-p", self.dir])
            lab.exec(node, ["touch", f"{self.dir}/.hakit-ok"])
        lab.exec("node1", ["hakit", "module", "install", str(folder), "--all"], capture=True)
        for node in ("node1", "node2"):
            wait_until(lambda node=node: self.name in self.state(node)["modules"], 10, "loaded")  # type: ignore[misc]

    def wait(self, node: str, expected: str, timeout: float = 30) -> None:
        super().wait(node, expected, timeout)

    def sh(self, node: str, script: str, check: bool = True) -> str:
        r = self.lab.exec(node, ["sh", "-c", script], capture=True, check=False)
        if check:
            assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout + r.stderr

    def tree(self, node: str) -> dict[str, str]:
        """Relative path -> sha256 of every file (read inside the node)."""
        out = self.sh(
            node,
            f"cd {self.dir} && find . -path ./scratch -prune -o -type f -print0 | "
            "sort -z | xargs -0 -r sha256sum",
        )
        return {line[66:]: line[:64] for line in out.splitlines()}

    def first_start(self) -> None:
        self.cmd("node1", "prim")
        self.wait("node1", "ALONE ready")
        self.cmd("node2", "second")
        self.wait("node2", "SECOND ready", 60)
        self.wait("node1", "PRIM ready")

    def remove(self) -> None:
        for node in ("node2", "node1"):
            self.lab.exec(node, ["hakit", "stop", self.name], check=False, capture=True)
            wait_until(lambda node=node: self.me(node) in ("STOP not-ready", "unknown"), 60, "stop")  # type: ignore[misc]
        self.lab.exec("node2", ["hakit", "module", "uninstall", self.name, "--all"], capture=True)
        for node in ("node1", "node2"):
            mounts = self.sh(node, "cat /proc/self/mountinfo")
            assert f" {self.dir} " not in mounts, f"{self.dir} still mounted on {node}"


@pytest.fixture
def make(lab: Lab, tmp_path: Path) -> Iterator[Any]:
    with removed_after(lambda **options: Replicated(lab, tmp_path, **options)) as factory:
        yield factory


def test_writes_on_the_primary_are_on_the_secondary_which_is_read_only(make: Any) -> None:
    m = make()
    m.sh("node1", f"echo before > {m.dir}/before.txt")  # exists before replication starts
    m.first_start()
    m.sh(
        "node1",
        f"cd {m.dir} && mkdir -p a/b && echo hello > a/b/f && ln -s f a/b/l && "
        "dd if=/dev/urandom of=big bs=1M count=8 status=none && mv big a/big && "
        "mkdir -p scratch && echo x > scratch/tmp && sync",
    )
    assert m.tree("node2") == m.tree("node1")
    assert "before.txt" in "".join(m.tree("node2"))
    assert m.sh("node2", f"readlink {m.dir}/a/b/l").strip() == "f"
    assert "No such file" in m.sh("node2", f"cat {m.dir}/scratch/tmp", check=False)  # excluded
    refused = m.sh("node2", f"echo x > {m.dir}/intruder", check=False)
    assert "Read-only file system" in refused
    verify = m.lab.exec("node2", ["hakit", "verify", m.name], capture=True, check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "replicas identical" in verify.stdout


def test_failover_keeps_the_data_and_the_old_primary_resyncs_only_changes(make: Any) -> None:
    m = make()
    m.sh("node1", f"cd {m.dir} && for i in $(seq 20); do head -c 1M /dev/urandom > f$i; done")
    m.first_start()
    m.sh("node1", f"echo acknowledged > {m.dir}/committed && sync {m.dir}/committed")
    m.lab.poweroff("node1")
    m.wait("node2", "ALONE ready", 30)
    assert m.sh("node2", f"cat {m.dir}/committed").strip() == "acknowledged"
    # changes while node1 is away: one block in two files, one new file
    m.sh(
        "node2",
        f"cd {m.dir} && printf X | dd of=f3 bs=1 seek=5000 conv=notrunc status=none && "
        "printf Y | dd of=f7 bs=1 seek=700000 conv=notrunc status=none && echo new > g",
    )
    m.lab.poweron("node1")  # its daemon resumes the module: it joins as secondary
    m.wait("node1", "SECOND ready", 90)
    assert m.tree("node1") == m.tree("node2")
    log = m.log("node2")
    how = [line for line in log.splitlines() if "resynchronising node1" in line][-1]
    assert "activity" in how or "it was writing" in how, how  # not a full comparison
    sent = [line for line in log.splitlines() if "synchronised:" in line][-1]
    # two 64 KiB blocks and a small file, not 20 MiB
    assert "KiB sent" in sent or " B sent" in sent, sent


def test_a_secondary_stopped_during_resync_is_inconsistent(make: Any) -> None:
    m = make(bandwidth=2)  # 2 MB/s: the 30 MiB copy takes long enough to interrupt
    m.sh("node1", f"cd {m.dir} && for i in $(seq 30); do head -c 1M /dev/urandom > f$i; done")
    m.cmd("node1", "prim")
    m.wait("node1", "ALONE ready")
    m.cmd("node2", "second")
    wait_until(
        lambda: (
            (m.state("node2")["modules"][m.name].get("replication") or {}).get("progress")
            is not None
        ),
        30,
        "resync progress on node2",
    )
    progress = m.state("node2")["modules"][m.name]["replication"]["progress"]
    assert progress["files_total"] >= 30
    m.cmd("node2", "stop")
    m.wait("node2", "STOP not-ready", 30)
    m.cmd("node1", "stop")
    m.wait("node1", "STOP not-ready", 30)
    refused = m.cmd("node2", "prim", check=False)
    assert "inconsistent" in refused
    m.cmd("node2", "primforce")
    m.wait("node2", "ALONE ready", 30)


def test_split_brain_without_witness_keeps_the_rejoining_sides_files(make: Any) -> None:
    m = make()
    m.first_start()
    m.sh("node1", f"echo base > {m.dir}/shared.txt && sync")
    m.lab.cut("node1", "node2")
    try:
        m.wait("node2", "ALONE ready")  # took over: both are primary now
        m.wait("node1", "ALONE ready")
        m.sh("node1", f"echo node1 > {m.dir}/shared.txt && echo one > {m.dir}/from-node1.txt")
        m.sh("node2", f"echo node2 > {m.dir}/shared.txt && echo two > {m.dir}/from-node2.txt")
    finally:
        m.lab.heal("node1", "node2")
    m.wait("node2", "SECOND ready", 60)
    m.wait("node1", "PRIM ready")
    assert m.tree("node1") == m.tree("node2")
    assert m.sh("node2", f"cat {m.dir}/shared.txt {m.dir}/from-node1.txt") == "node1\none\n"
    assert "from-node2.txt" not in m.tree("node2")
    kept = m.state("node2")["modules"][m.name]["replication"]["diverged_copy_kept"]
    folder = kept["folder"]
    assert kept["entries"] >= 2
    base = f"{folder}/{m.dir.lstrip('/')}"
    assert m.sh("node2", f"cat {base}/shared.txt {base}/from-node2.txt") == "node2\ntwo\n"
    report = m.sh("node2", f"cat {folder}/REPORT.txt")
    assert "split brain resolved by policy keep: first-primary in favour of node1" in report
    log = m.log("node2")
    assert f"kept in {folder}" in log
    assert "SPLIT BRAIN" in m.log("node1")
