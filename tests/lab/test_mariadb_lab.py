"""The shipped `mariadb` template with a real MariaDB: every acknowledged commit survives.

The template is rendered as a user would (`hakit.templates.render`, the Debian layout: datadir
/var/lib/mysql, /etc/mysql/my.cnf, socket and pid file in /run/mysqld — private to each lab
node), packaged, and the package installed on both nodes. The datadir is initialised with
mariadb-install-db on node1 only. A client on the lab's client host inserts numbered rows
through the VIP, one transaction each, and records each number once MariaDB acknowledged its
commit. The primary is then powered off, or its hakit daemon killed with SIGKILL, in the middle
of the load; mariadbd starts on node2 from the replicated datadir (InnoDB's crash recovery), and
every acknowledged row must be there. When mariadbd itself is killed (SIGKILL), the module's
checker restarts it on node1 (no failover), and again no acknowledged row is lost.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hakit.daemon.packages import package
from hakit.lab.lab import Lab
from hakit.templates import render
from hakit.waiting import wait_until
from tests.lab.modules import LabModule, lab_up, sh

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
    pytest.mark.skipif(not shutil.which("nft"), reason="the lab needs nftables (nft)"),
    pytest.mark.skipif(
        not (shutil.which("mariadbd") and shutil.which("mariadb-install-db")),
        reason="MariaDB not installed (Debian package mariadb-server)",
    ),
]

LAB = "tmdb"
VIP = "10.100.1.150"
DATADIR = "/var/lib/mysql"  # the template's defaults, made private to each node below
PRIVATE = [DATADIR, "/run/mysqld", "/var/log/mysql"]
SOCKET = "/run/mysqld/mysqld.sock"
USER, PASSWORD = "app", "app-secret"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with lab_up(LAB, 2, 1, 1, private=PRIVATE) as lab:
        yield lab


def me(lab: Lab, node: str, module: str) -> str:
    return LabModule(lab, module).me(node)


def sql(lab: Lab, host: str, port: int, query: str) -> str:
    """`query` through the VIP as the application's user; its rows, tab-separated."""
    argv = ["mariadb", "--no-defaults", "-h", VIP, "-P", str(port), "-u", USER]
    r = lab.exec(host, [*argv, f"-p{PASSWORD}", "-N", "-B", "app", "-e", query], capture=True)
    return r.stdout


def install(lab: Lab, tmp: Path, name: str, port: int, **values: str) -> None:
    """Render the template, initialise the datadir on node1, install the package everywhere."""
    values = {"VIP": f"{VIP}/24", "PORT": str(port), "REPL_PORT": str(port + 4000), **values}
    folder = render("mariadb", name, tmp, values)
    pkg = package(folder, tmp / f"{name}.hakit")
    for node in ("node1", "node2"):  # the lab lives for the file: the last case's data go
        sh(lab, node, f"find {DATADIR} -mindepth 1 -delete")
    sh(
        lab,
        "node1",
        f"mariadb-install-db --defaults-file=/etc/mysql/my.cnf --user=mysql --datadir={DATADIR}"
        " --skip-test-db >/dev/null",
    )
    lab.exec("node1", ["hakit", "module", "install", str(pkg), "--all"], capture=True)
    for node in ("node1", "node2"):
        wait_until(lambda node=node: me(lab, node, name) != "unknown", 10, "loaded")  # type: ignore[misc]


def tails(lab: Lab, node: str, name: str) -> str:
    """The module's timeline and the last script logs and error log on `node`, for a message."""
    try:
        log = lab.exec(node, ["hakit", "log", name], capture=True, check=False).stdout
        files = f"/var/log/hakit/modules/{name}/scripts/*start_prim* /var/log/mysql/error.log"
        return f"{node}:\n{log[-3000:]}\n" + sh(lab, node, f"tail -n 25 {files}", check=False)
    except Exception as e:  # the node may be off
        return f"{node}: {e}"


@pytest.mark.parametrize("failure", ["poweroff", "kill-daemon", "kill-mariadbd"])
def test_every_acknowledged_commit_survives_the_failover(
    lab: Lab, tmp_path: Path, failure: str
) -> None:
    name = f"mdb{failure.replace('-', '')}"
    port = 3310 + len(list(tmp_path.parent.iterdir())) % 40
    install(lab, tmp_path, name, port)
    try:
        lab.exec("node1", ["hakit", "prim", name], capture=True)
        try:
            wait_until(lambda: me(lab, "node1", name) == "ALONE ready", 60, "node1 primary")
        except Exception:
            raise AssertionError(f"node1 did not start:\n{tails(lab, 'node1', name)}") from None
        # the application's user and table, made once on the first primary (replicated with it)
        sh(
            lab,
            "node1",
            f'mariadb --socket={SOCKET} -e "create database app; '
            f"create user '{USER}'@'%' identified by '{PASSWORD}'; "
            f"grant all on app.* to '{USER}'@'%'; "
            'create table app.t (id int primary key) engine=InnoDB"',
        )
        lab.exec("node2", ["hakit", "second", name], capture=True)
        wait_until(lambda: me(lab, "node2", name) == "SECOND ready", 120, "node2 secondary")
        acked_file = tmp_path / "acked"
        client = lab.spawn(
            "client1",
            [
                sys.executable,
                "-m",
                "hakit.lab.ledger",
                str(acked_file),
                "120",
                "--",
                "mariadb",
                "--no-defaults",
                "-h",
                VIP,
                "-P",
                str(port),
                "-u",
                USER,
                f"-p{PASSWORD}",
                "--connect-timeout=3",
                "app",
                "-e",
                "insert into t values ({i})",
            ],
            log=tmp_path / "client.log",
        )
        wait_until(
            lambda: acked_file.exists() and len(acked_file.read_text().split()) >= 30,
            30,
            "rows committed",
        )
        serving = "node2"
        if failure == "poweroff":
            lab.poweroff("node1")
        elif failure == "kill-daemon":
            os.kill(lab.daemon_pid("node1") or 0, signal.SIGKILL)
        else:  # the checker sees mariadbd gone and restarts it on node1: no failover
            os.kill(int(sh(lab, "node1", "cat /run/mysqld/mysqld.pid")), signal.SIGKILL)
            serving = "node1"
        if serving == "node2":
            try:
                wait_until(lambda: me(lab, "node2", name) == "ALONE ready", 90, "node2 takes over")
            except Exception:
                raise AssertionError(
                    f"node2 did not take over:\n{tails(lab, 'node2', name)}"
                ) from None
        n = len(acked_file.read_text().split())
        try:
            wait_until(lambda: len(acked_file.read_text().split()) > n + 5, 45, "commits")
        except Exception:
            client_log = (tmp_path / "client.log").read_text()[-2000:]
            raise AssertionError(
                f"no commits on {serving}:\n{client_log}\n{tails(lab, serving, name)}"
            ) from None
        if failure == "kill-mariadbd":
            timeline = lab.exec("node1", ["hakit", "log", name], capture=True).stdout
            assert "custom checker mariadb failed" in timeline, timeline
            assert "application restarted" in timeline, timeline
            assert me(lab, "node2", name) == "SECOND ready"
        os.kill(client, signal.SIGTERM)
        wait_until(lambda: not Path(f"/proc/{client}").exists(), 10, "client ends")
        acked = [int(x) for x in acked_file.read_text().split()]
        present = {int(x) for x in sql(lab, "client1", port, "select id from t").split()}
        missing = [i for i in acked if i not in present]
        assert not missing, f"{len(missing)} acknowledged rows lost: {missing[:20]}"
        assert len(acked) > 35
    finally:
        if failure == "poweroff":
            lab.poweron("node1")
        elif failure == "kill-daemon":  # power-cycle its node (fenced replicator, mariadbd)
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
        time.sleep(0.2)


def test_non_durable_settings_are_refused_with_the_reason(lab: Lab, tmp_path: Path) -> None:
    """A user's `innodb_flush_log_at_trx_commit=2` would lose the last second of acknowledged
    commits at a failover: the module does not start, on either node, and says why."""
    name = "mdbrefused"
    install(lab, tmp_path, name, 3309, EXTRA_ARGS="--innodb_flush_log_at_trx_commit=2")
    try:
        r = lab.exec("node1", ["hakit", "prim", name], capture=True, check=False)
        wait_until(lambda: me(lab, "node1", name) == "STOP not-ready", 30, "node1 stopped")
        timeline = lab.exec("node1", ["hakit", "log", name], capture=True).stdout
        assert "prestart exited 1" in timeline, r.stdout + r.stderr + timeline
        logs = f"/var/log/hakit/modules/{name}/scripts/*prestart*"
        said = sh(lab, "node1", f"cat {logs}")
        assert "REFUSED: innodb_flush_log_at_trx_commit=2" in said, said
        assert not sh(lab, "node1", "ls /run/mysqld").strip()  # no pid file, no socket
        assert me(lab, "node2", name) == "STOP not-ready"
    finally:
        lab.exec("node1", ["hakit", "module", "uninstall", name, "--all"], capture=True)
