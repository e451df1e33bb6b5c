"""The console made highly available by hakit itself: a mirror module runs it on the primary,
its state folder replicated, behind a virtual IP. A power cut of the primary moves it to the
other node, and a browser that was logged in stays logged in (users, sessions and the
certificate are in the replicated folder).

Lab `cw2`: two nodes and a client; Chromium runs in the client's network namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hakit.lab.errors import LabError
from hakit.lab.lab import Lab
from hakit.lab.namespaces import hakit_argv
from hakit.waiting import wait_until
from tests.lab.modules import lab_up

playwright = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
    pytest.mark.skipif(not shutil.which("nft"), reason="the lab needs nftables (nft)"),
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium"),
]

LAB = "cw2"
VIP = "10.100.1.150"
STATE = "/srv/console/state"
PASSWORD = "alice-password"

MODULE = f"""\
kind: mirror
nodes: [node1, node2]
vips:
  - {{address: {VIP}/24, network: net1}}
failover: true
default_primary: alone
scripts: {{start_timeout: 30, stop_timeout: 20}}
replication:
  mode: sync
  port: 7362
  dirs:
    - path: {STATE}
variables:
  HAKIT_CMD: "{shlex.join(hakit_argv())}"
  CONSOLE_LISTEN: "{VIP}:7380"
"""
START_PRIM = f"""\
#!/bin/sh
# the console on the primary, on the replicated state folder
setsid $HAKIT_CMD console serve --state {STATE} --listen "$CONSOLE_LISTEN" \\
  >> /srv/console-serve.log 2>&1 < /dev/null &
echo $! > /srv/console.pid
for _ in $(seq 150); do
  python3 -c "import socket; socket.create_connection(('{VIP}', 7380), 0.2)" 2>/dev/null && exit 0
  sleep 0.1
done
exit 1
"""
STOP_PRIM = """\
#!/bin/sh
[ -f /srv/console.pid ] || exit 0
pid=$(cat /srv/console.pid); kill "$pid" 2>/dev/null
for _ in $(seq 100); do
  kill -0 "$pid" 2>/dev/null || { rm -f /srv/console.pid; exit 0; }
  sleep 0.1
done
kill -9 "$pid" 2>/dev/null; rm -f /srv/console.pid
"""


def _state(lab: Lab, node: str) -> str:
    r = lab.exec(node, ["hakit", "state", "--json"], capture=True, check=False)
    if r.returncode != 0:
        return "unknown"
    mod = json.loads(r.stdout)["modules"].get("console", {}).get("nodes", {}).get(node)
    return f"{mod['state']} {mod['status']}" if mod else "unknown"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    tmp = tmp_path_factory.mktemp("console-ha")
    with lab_up(LAB, 2, 1, 1) as lab:
        folder = tmp / "console"
        (folder / "bin").mkdir(parents=True)
        (folder / "module.yaml").write_text(MODULE)
        for name, text in (("start_prim", START_PRIM), ("stop_prim", STOP_PRIM)):
            (folder / "bin" / name).write_text(text)
            (folder / "bin" / name).chmod(0o755)
        for node in ("node1", "node2"):
            lab.exec(node, ["mkdir", "-p", STATE])
        lab.exec("node1", ["hakit", "module", "install", str(folder), "--all"], capture=True)
        for node in ("node1", "node2"):
            wait_until(lambda node=node: _state(lab, node) != "unknown", 15, "loaded")  # type: ignore[misc]
        lab.exec("node1", ["hakit", "prim", "console"], capture=True)
        lab.exec("node2", ["hakit", "second", "console"], capture=True)
        wait_until(lambda: _state(lab, "node2") == "SECOND ready", 30, "console replicated")
        try:
            yield lab
        finally:
            for node in ("node1", "node2"):
                with contextlib.suppress(LabError):  # (a node may be powered off)
                    lab.exec(node, ["hakit", "stop", "console"], check=False, capture=True)


def test_console_fails_over_with_its_sessions(lab: Lab, tmp_path: Path) -> None:
    made = json.loads(
        lab.exec(
            "node1",
            ["hakit", "token", "create", "console", "--role", "admin", "--json"],
            capture=True,
        ).stdout
    )
    # the console's state is written on the primary, into the replicated folder
    lab.exec(
        "node1",
        [
            "hakit",
            "console",
            "user",
            "add",
            "alice",
            "--role",
            "admin",
            "--state",
            STATE,
            "--password-stdin",
        ],
        input=PASSWORD + "\n",
    )
    nodes = f"{lab.address('node1')},{lab.address('node2')}"
    register = ["hakit", "console", "cluster", "add", "home", "--nodes", nodes, "--state", STATE]
    lab.exec("node1", [*register, "--token", made["token"], "--ca", made["ca_fingerprint"]])
    netns = lab.describe()["hosts"]["client1"]["netns"]
    chromium = tmp_path / "chromium"
    chromium.write_text(f'#!/bin/sh\nexec nsenter --net=/run/netns/{netns} {CHROMIUM} "$@"\n')
    chromium.chmod(0o755)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=["--no-sandbox"])
        try:
            page: Any = browser.new_context(ignore_https_errors=True).new_page()
            page.set_default_timeout(45_000)
            page.goto(f"https://{VIP}:7380/")
            page.fill("#user", "alice")
            page.fill("#password", PASSWORD)
            page.click("button[type=submit]")
            row = "[data-cluster=home] tr[data-module=console]"
            page.wait_for_selector(f"{row} td[data-node=node1]:has-text('PRIM ready')")

            lab.poweroff("node1")  # the console's own primary
            wait_until(lambda: _state(lab, "node2") == "ALONE ready", 30, "console on node2")
            # the page reconnects to the console now on node2, still logged in
            try:
                page.wait_for_selector(f"{row} td[data-node=node2]:has-text('ALONE ready')")
            except playwright.TimeoutError:
                log = lab.host_path("node2", "/srv/console-serve.log")
                raise AssertionError(
                    f"{page.url}\n{page.inner_text('body')[:1500]}\nnode2's console log:\n"
                    + (log.read_text()[-2000:] if log.exists() else "none")
                ) from None
            page.wait_for_selector("#live.on")
            page.reload()
            assert "/login" not in page.url
            page.wait_for_selector(f"{row} td[data-node=node2]:has-text('ALONE')")
            assert "alice (admin)" in page.inner_text("#who")
        finally:
            browser.close()
