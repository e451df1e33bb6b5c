"""The nginx-farm and apache-farm templates with the real web servers, as a user installs them.

Each template is rendered and packaged in the test process, the *package* is installed on two
lab nodes, and its `services:` start Debian's nginx / apache2 through their `/etc/init.d`
scripts (no systemd runs here: the fallback of adapters/services.py). Each node has its own
copy of the server's configuration (pid and run files under its private /srv) and its own page
saying who it is. A client then asks the VIP: every request answered once, by one node; the
power cut of a node moves its share to the other in about a second, and its web server's death
is noticed by the HTTP checker, which restarts it.
"""

from __future__ import annotations

import contextlib
import json
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
from hakit.lab.namespaces import netns_path, ns_id, pids_in
from hakit.waiting import wait_until
from tests.lab.modules import LabModule, lab_up

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
    pytest.mark.skipif(not shutil.which("nft"), reason="the lab needs nftables (nft)"),
]

LAB = "twebt"
NODES = ("node1", "node2")
SERVERS = {
    # template: (service, its configuration folder, its program)
    "nginx-farm": ("nginx", "/etc/nginx", "/usr/sbin/nginx"),
    "apache-farm": ("apache2", "/etc/apache2", "/usr/sbin/apache2"),
}
VIPS = {"nginx-farm": "10.100.1.221", "apache-farm": "10.100.1.231"}


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    # the nodes' own boot links too: switching a service's start at boot off (services:)
    # must not change the machine's
    private = ["/etc/nginx", "/etc/apache2", "/var/www/html"]
    private += [f"/etc/rc{level}.d" for level in "2345"]
    with lab_up(LAB, 2, 1, 1, private=private) as lab:
        yield lab


def own_configuration(lab: Lab, template: str) -> None:
    """Each node's copy of the server's configuration, its run files in the node's /srv, and
    a page that says who serves it (what hakit.lab.webclient reads)."""
    service, etc, _ = SERVERS[template]
    for node in NODES:
        own = lab.host_path(node, etc)
        shutil.copytree(etc, own, symlinks=True, dirs_exist_ok=True)
        run = f"/srv/{service}"
        if service == "nginx":
            conf = own / "nginx.conf"
            text = conf.read_text().replace("pid /run/nginx.pid;", f"pid {run}/nginx.pid;")
            conf.write_text(text.replace("/var/log/nginx/", f"{run}/"))
        else:
            envvars = own / "envvars"
            text = envvars.read_text()
            for old in (
                "/var/run/apache2$SUFFIX",
                "/var/lock/apache2$SUFFIX",
                "/var/log/apache2$SUFFIX",
            ):
                text = text.replace(old, run)
            envvars.write_text(text)
        lab.exec(node, ["install", "-d", "-m", "755", run])
        (lab.host_path(node, "/var/www/html") / "index.html").write_text(f"served by {node}\n")


def clients(lab: Lab, vip: str, n: int) -> dict[str, object]:
    argv = [sys.executable, "-m", "hakit.lab.webclient", vip, "--count", str(n), "--timeout", "2"]
    out: dict[str, object] = json.loads(lab.exec("client1", argv, capture=True).stdout)
    return out


def server_pid(lab: Lab, template: str, node: str) -> int:
    """The PID in the server's pid file on `node` (0 when there is none)."""
    service = SERVERS[template][0]
    pidfile = lab.host_path(node, f"/srv/{service}/{service}.pid")
    try:
        return int(pidfile.read_text().split()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return 0


def kill_server(lab: Lab, program: str, node: str) -> None:
    """SIGKILL every process of `program` in `node` (its master and its workers)."""
    netns = netns_path(lab.topology.host(node).netns)
    ident = ns_id(netns)
    assert ident is not None
    for pid in pids_in([("net", ident)]):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/exe") == program:
                os.kill(pid, signal.SIGKILL)


def alive_other(lab: Lab, template: str, old: int) -> bool:
    """node2's server runs again, as another process than `old`."""
    pid = server_pid(lab, template, "node2")
    return pid not in (0, old) and Path(f"/proc/{pid}").exists()


@pytest.mark.parametrize("template", sorted(SERVERS))
def test_a_web_farm_template_serves_every_request_once_and_survives_a_node(
    lab: Lab, tmp_path: Path, template: str
) -> None:
    service, _, program = SERVERS[template]
    if not Path(program).exists():
        pytest.skip(f"{service} is not installed")
    name = template.replace("-farm", "web")
    vip = VIPS[template]
    own_configuration(lab, template)
    given = {"VIP": f"{vip}/24", "NODES": ",".join(NODES), "BY": "client-ip-port"}
    folder = templates.render(template, name, tmp_path, given)
    pkg = package(folder, tmp_path / f"{name}.hakit")
    lab.exec("node1", ["hakit", "module", "install", str(pkg), "--all"], capture=True)
    m = LabModule(lab, name)
    m.loaded(NODES)
    try:
        for node in NODES:
            m.cmd(node, "start")
        for node in NODES:
            m.wait(node, "UP ready", 60)
        r = clients(lab, vip, 200)
        assert r["failed"] == 0, r["errors"]
        served = r["served"]
        assert isinstance(served, dict)
        assert sum(served.values()) == 200
        assert set(served) == set(NODES)  # both nodes took their share

        # the web server dies on node2: the checker sees it, the service is started again
        killed = server_pid(lab, template, "node2")
        kill_server(lab, program, "node2")
        wait_until(lambda: alive_other(lab, template, killed), 30, f"{service} back on node2")
        m.wait("node2", "UP ready", 60)

        # node2's power is cut: node1 answers everything
        lab.poweroff("node2")
        wait_until(lambda: "node2" not in str(clients(lab, vip, 20)["served"]), 10, "node1 alone")
        r = clients(lab, vip, 100)
        assert r["failed"] == 0, r["errors"]
        assert r["served"] == {"node1": 100}
    finally:
        if lab.hosts()["node2"].power != "on":
            lab.poweron("node2")
        m.cmd("node1", "stop", "--all", check=False)
        for node in NODES:
            wait_until(
                lambda node=node: m.me(node) in ("STOP not-ready", "unknown"),  # type: ignore[misc]
                60,
                "stopped",
            )
        lab.exec("node1", ["hakit", "module", "uninstall", name, "--all"], check=False)
    # stopped everywhere: the services are stopped too
    for node in NODES:
        out = lab.exec(node, [f"/etc/init.d/{service}", "status"], capture=True, check=False)
        assert out.returncode != 0, out.stdout
