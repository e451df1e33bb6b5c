"""The replication guarantee with a real database: every committed row survives a failover.

PostgreSQL (Debian package) runs on the primary with its data directory replicated. A client on
the lab's client host inserts numbered rows through the VIP, one transaction each, and records
each number once PostgreSQL acknowledged its commit. The primary is then powered off (or its
hakit daemon killed with SIGKILL) in the middle of the load; PostgreSQL starts on the other
node from the replicated directory, and every acknowledged row must be there.
"""

from __future__ import annotations

import os
import shutil
import signal
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hakit.config.module import SCRIPTS
from hakit.lab.lab import Lab
from hakit.waiting import wait_until
from tests.lab.modules import LabModule, lab_up

PG_BIN = Path("/usr/lib/postgresql/15/bin")

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
    pytest.mark.skipif(not shutil.which("nft"), reason="the lab needs nftables (nft)"),
    pytest.mark.skipif(not (PG_BIN / "initdb").exists(), reason="PostgreSQL 15 not installed"),
]

LAB = "tpg"
VIP = "10.100.1.120"

START_PRIM = f"""#!/bin/sh
set -eu
# the lab shares /tmp between nodes: the socket goes to the node's private /srv
rm -f "$PGDATA/postmaster.pid"  # left by a power cut; the postmaster is not running here
exec runuser -u postgres -- {PG_BIN}/pg_ctl start -w -t 60 -D "$PGDATA" -l "$PGLOG" \\
    -o "-p $PGPORT -k $PGRUN -c listen_addresses='*'"
"""
STOP_PRIM = f"""#!/bin/sh
# graceful: fast shutdown; forced: immediate
mode=fast; [ "$3" = force ] && mode=immediate
runuser -u postgres -- {PG_BIN}/pg_ctl stop -w -t 60 -D "$PGDATA" -m $mode 2>&1 || true
pkill -9 -f "postgres -D $PGDATA" 2>/dev/null || true
exit 0
"""
CLIENT = """\
import subprocess, sys, time
vip, port, acked_path, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
end = time.monotonic() + seconds
i = 0
with open(acked_path, "w") as acked:
    while time.monotonic() < end:
        i += 1
        try:
            r = subprocess.run(
                ["psql", "-h", vip, "-p", port, "-U", "postgres", "-d", "postgres", "-qAt",
                 "-v", "ON_ERROR_STOP=1", "-c", f"insert into t values ({i})"],
                capture_output=True, timeout=10,
            )
        except subprocess.TimeoutExpired:  # e.g. a connection to the old primary: not acked
            continue
        if r.returncode == 0:  # the commit was acknowledged
            acked.write(f"{i}\\n")
            acked.flush()
        else:
            time.sleep(0.05)
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with lab_up(LAB, 2, 1, 1) as lab:
        yield lab


def sh(lab: Lab, host: str, script: str, check: bool = True) -> str:
    r = lab.exec(host, ["sh", "-c", script], capture=True, check=False)
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def facts_of(lab: Lab, host: str, script: str) -> str:
    """`script`'s output on `host` for a failure message; never raises (the host may be off)."""
    try:
        return f"{host}$ {script}\n" + sh(lab, host, script, check=False)
    except Exception as e:
        return f"{host}$ {script}: {e}"


def me(lab: Lab, node: str, module: str) -> str:
    return LabModule(lab, module).me(node)


def install(lab: Lab, tmp: Path, name: str, mode: str, port: int) -> str:
    data = f"/srv/{name}/data"
    folder = tmp / name
    (folder / "bin").mkdir(parents=True)
    (folder / "module.yaml").write_text(
        textwrap.dedent(
            f"""\
            kind: mirror
            nodes: [node1, node2]
            vips: [{{address: {VIP}/24, network: net1}}]
            scripts: {{start_timeout: 90, stop_timeout: 60}}
            replication:
              mode: {mode}
              port: {port + 100}
              dirs: [{{path: {data}, require: [PG_VERSION]}}]
            variables: {{PGDATA: {data}, PGLOG: /srv/{name}/pg.log, PGRUN: /srv/{name},
                        PGPORT: '{port}'}}
            """
        )
    )
    for s in SCRIPTS:
        p = folder / "bin" / s
        p.write_text({"start_prim": START_PRIM, "stop_prim": STOP_PRIM}.get(s, "#!/bin/sh\n"))
        p.chmod(0o755)
    for node in ("node1", "node2"):
        sh(lab, node, f"mkdir -p {data} && chown -R postgres: /srv/{name} && chmod 700 {data}")
    sh(
        lab,
        "node1",
        f"runuser -u postgres -- {PG_BIN}/initdb -D {data} -A trust >/dev/null && "
        f"echo 'host all all 0.0.0.0/0 trust' >> {data}/pg_hba.conf",
    )
    lab.exec("node1", ["hakit", "module", "install", str(folder), "--all"], capture=True)
    for node in ("node1", "node2"):
        wait_until(lambda node=node: me(lab, node, name) != "unknown", 10, "loaded")  # type: ignore[misc]
    return data


@pytest.mark.parametrize(
    ("mode", "failure"), [("sync", "poweroff"), ("semi", "poweroff"), ("sync", "kill-daemon")]
)
def test_every_acknowledged_commit_survives_the_failover(
    lab: Lab, tmp_path: Path, mode: str, failure: str
) -> None:
    name = f"pg{mode}{failure.replace('-', '')}"
    port = 5440 + len(list(tmp_path.parent.iterdir())) % 40
    install(lab, tmp_path, name, mode, port)
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
            ["python3", "-c", CLIENT, VIP, str(port), str(acked_file), "150"],
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
                    ("node2", f"tail -n 20 /srv/{name}/pg.log"),
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
        time.sleep(0.2)
