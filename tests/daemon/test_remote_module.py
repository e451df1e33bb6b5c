"""A `module` checker on another cluster reads its state through the API of that cluster's
daemons, over mutual TLS and signed (real daemons on loopback addresses)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from pydantic import TypeAdapter

from hakit.adapters.probes import ProbeContext, RealProbes
from hakit.config.checkers import Checker
from hakit.waiting import wait_until
from tests.daemon.conftest import Cluster

MODULE = "kind: mirror\nnodes: [node1, node2]\nscripts: {start_timeout: 10, stop_timeout: 10}\n"


def test_a_module_checker_reads_another_clusters_module(
    loopback_cluster: Callable[[int], Cluster], tmp_path: Path
) -> None:
    c = loopback_cluster(2)
    folder = tmp_path / "db"
    folder.mkdir()
    (folder / "module.yaml").write_text(MODULE)
    n1 = c["node1"]
    assert n1.hakit("module", "install", str(folder)).returncode == 0
    wait_until(lambda: "db" in n1.state()["modules"], 10, "db loaded")
    key = n1.root / "etc" / "cluster.key"

    def probe(**kw: object) -> tuple[bool, str]:
        spec = {"name": "db", "type": "module", "module": "db", "timeout": 2.0}
        remote = {"name": "loop", "nodes": {"node1": "127.0.0.11"}, "port": c.api_port}
        remote["secret_file"] = str(key)
        spec["cluster"] = remote
        checker = TypeAdapter(Checker).validate_python(spec | kw)
        ctx = ProbeContext(bin_dir=tmp_path, env={})
        return asyncio.run(RealProbes().probe(checker, ctx))

    assert probe() == (
        False,
        "module db is STOP not-ready on node1, STOP not-ready on node2 (cluster loop)",
    )
    assert n1.hakit("prim", "db").returncode == 0
    wait_until(lambda: probe()[0], 15, "db primary, seen through the other cluster's API")
    assert probe() == (True, "module db is ALONE ready on node1 (cluster loop)")
    assert probe(module="nope") == (
        False,
        "module nope is not installed on node1 (cluster loop)",
    )
    wrong = tmp_path / "wrong.key"
    wrong.write_text("x" * 40)
    ok, detail = probe(
        cluster={
            "name": "loop",
            "nodes": {"node1": "127.0.0.11"},
            "port": c.api_port,
            "secret_file": str(wrong),
        }
    )
    assert not ok  # another secret: another CA, the TLS handshake fails
    assert detail.startswith("cluster loop does not answer (127.0.0.11: ")
