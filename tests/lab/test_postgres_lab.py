"""The replication guarantee with a real database: every committed row survives a failover.

PostgreSQL (Debian package, a cluster of its own made by `pg_createcluster`) runs on the
primary, installed from the `postgresql` template's package, its data directory replicated.
A client on the lab's client host inserts numbered rows through the VIP, one transaction each,
and records each number once PostgreSQL acknowledged its commit. The primary is then powered
off (or its hakit daemon killed with SIGKILL) in the middle of the load; PostgreSQL starts on
the other node from the replicated directory, and every acknowledged row must be there.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hakit import templates
from hakit.daemon.packages import package
from hakit.lab.lab import Lab
from hakit.waiting import wait_until
from tests.lab.modules import LabModule, lab_up, sh

PG_VERSION = "15"
PG_BIN = Path(f"/usr/lib/postgresql/{PG_VERSION}/bin")
ETC = f"/etc/postgresql/{PG_VERSION}"
PG_LOG = f"/var/log/postgresql/postgresql-{PG_VERSION}"

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
    pytest.mark.skipif(not shutil.which("nft"), reason="the lab needs nftables (nft)"),
    pytest.mark.skipif(not (PG_BIN / "initdb").exists(), reason="PostgreSQL 15 not installed"),
]

LAB = "tpg"
VIP = "10.100.1.120"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    private = ["/var/lib/postgresql", "/var/run/postgresql", "/var/log/postgresql"]
    with lab_up(LAB, 2, 1, 1, private=private) as lab:
        yield lab


def facts_of(lab: Lab, host: str, script: str) -> str:
    """`script`'s output on `host` for a failure message; never raises (the host may be off)."""
    try:
        return f"{host}$ {script}\n" + sh(lab, host, script, check=False)
    except Exception as e:
        return f"{host}$ {script}: {e}"


def me(lab: Lab, node: str, module: str) -> str:
    return LabModule(lab, module).me(node)


def install(lab: Lab, tmp: Path, name: str, mode: str, port: int) -> None:
    """The postgresql template's package installed on both nodes, for a new Debian cluster
    `name` made on node1 (its configuration in the shared /etc, its data node1's own)."""
    sh(
        lab,
        "node1",
        f"pg_createcluster {PG_VERSION} {name} -p {port} --start-conf manual >/dev/null && "
        f"echo \"listen_addresses = '*'\" >> {ETC}/{name}/postgresql.conf && "
        f"echo 'host all all 0.0.0.0/0 trust' >> {ETC}/{name}/pg_hba.conf",
    )
    data = f"/var/lib/postgresql/{PG_VERSION}/{name}"
    sh(lab, "node2", f"install -d -o postgres -g postgres -m 700 {data}")
    values = {"VIP": f"{VIP}/24", "PG_CLUSTER": name, "PGPORT": str(port), "MODE": mode}
    values["REPL_PORT"] = str(port + 100)
    folder = templates.render("postgresql", name, tmp, values)
    pkg = package(folder, tmp / f"{name}.hakit")
    lab.exec("node1", ["hakit", "module", "install", str(pkg), "--all"], capture=True)
    for node in ("node1", "node2"):
        wait_until(lambda node=node: me(lab, node, name) != "unknown", 10, "loaded")  # type: ignore[misc]


def drop(lab: Lab, name: str) -> None:
    """The test's Debian cluster gone: its configuration from the shared /etc, its data."""
    for node in ("node1", "node2"):
        sh(lab, node, f"rm -rf /var/lib/postgresql/{PG_VERSION}/{name}", check=False)
    shutil.rmtree(f"{ETC}/{name}", ignore_errors=True)


@pytest.mark.parametrize(
    ("mode", "failure"), [("sync", "poweroff"), ("semi", "poweroff"), ("sync", "kill-daemon")]
)
def test_every_acknowledged_commit_survives_the_failover(
    lab: Lab, tmp_path: Path, mode: str, failure: str
) -> None:
    name = f"pg{mode}{failure.replace('-', '')}"
    port = 5440 + len(list(tmp_path.parent.iterdir())) % 40
    try:
        install(lab, tmp_path, name, mode, port)
    except BaseException:
        drop(lab, name)
        raise
    psql = ["psql", "-h", VIP, "-p", str(port), "-U", "postgres", "-d", "postgres", "-qAt"]
    try:
        lab.exec("node1", ["hakit", "prim", name], capture=True)
        wait_until(lambda: me(lab, "node1", name) == "ALONE ready", 60, "node1 primary")
        lab.exec("node2", ["hakit", "second", name], capture=True)
        wait_until(lambda: me(lab, "node2", name) == "SECOND ready", 120, "node2 secondary")
        lab.exec("client1", [*psql, "-c", "create table t (id int primary key)"], capture=True)
        acked_file = tmp_path / "acked"
        client = lab.spawn(
            "client1",
            [
                sys.executable,
                "-m",
                "hakit.lab.ledger",
                str(acked_file),
                "150",
                "--",
                *psql,
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                "insert into t values ({i})",
            ],
            log=tmp_path / "client.log",
        )
        wait_until(
            lambda: acked_file.exists() and len(acked_file.read_text().split()) >= 30,
            30,
            "rows committed",
        )
        if failure == "poweroff":
            lab.poweroff("node1")
        else:
            os.kill(lab.daemon_pid("node1") or 0, signal.SIGKILL)
        try:
            wait_until(lambda: me(lab, "node2", name) == "ALONE ready", 90, "node2 takes over")
        except Exception:
            log = lab.exec("node2", ["hakit", "log", name], capture=True, check=False).stdout
            tails = f"/var/log/hakit/modules/{name}/scripts/*start_prim* /srv/{name}/pg.log"
            scripts = sh(lab, "node2", f"tail -n 20 {tails}", check=False)
            raise AssertionError(f"node2 did not take over:\n{log[-3000:]}\n{scripts}") from None
        # a few more commits on the new primary, then stop the client
        n = len(acked_file.read_text().split())
        try:
            wait_until(lambda: len(acked_file.read_text().split()) > n + 5, 30, "commits")
        except Exception:
            facts = "\n".join(
                facts_of(lab, h, c)
                for h, c in [
                    ("client1", "ip neigh"),
                    ("node1", "ip -br addr"),
                    ("node2", "ip -br addr"),
                    ("node2", f"tail -n 20 {PG_LOG}-{name}.log"),
                ]
            )
            client_log = (tmp_path / "client.log").read_text()[-2000:]
            raise AssertionError(f"no commits on node2:\n{client_log}\n{facts}") from None
        os.kill(client, signal.SIGTERM)
        wait_until(lambda: not Path(f"/proc/{client}").exists(), 10, "client ends")
        acked = [int(x) for x in acked_file.read_text().split()]
        rows = lab.exec("client1", [*psql, "-c", "select id from t"], capture=True).stdout
        present = {int(x) for x in rows.split()}
        missing = [i for i in acked if i not in present]
        assert not missing, f"{len(missing)} acknowledged rows lost: {missing[:20]}"
        assert len(acked) > 35
    finally:
        if failure == "poweroff":
            lab.poweron("node1")
        else:  # the killed daemon's node: power-cycle it (fenced replicator, PostgreSQL)
            lab.poweroff("node1")
            lab.poweron("node1")
        for node in ("node2", "node1"):
            lab.exec(node, ["hakit", "stop", name], capture=True, check=False)
            wait_until(
                lambda node=node: me(lab, node, name) in ("STOP not-ready", "unknown"),  # type: ignore[misc]
                90,
                "stopped",
            )
        lab.exec("node1", ["hakit", "module", "uninstall", name, "--all"], capture=True)
        drop(lab, name)
