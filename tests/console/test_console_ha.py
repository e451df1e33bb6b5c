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
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hakit.lab.errors import LabError
from hakit.lab.lab import Lab
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
STATE = "/srv/console-ha/state"  # the example's replicated folder
PASSWORD = "alice-password"

# the shipped example: what a user installs to make the console highly available
EXAMPLE = Path(__file__).resolve().parents[2] / "src" / "hakit" / "examples" / "console-ha"
NAME = EXAMPLE.name


def _state(lab: Lab, node: str) -> str:
    r = lab.exec(node, ["hakit", "state", "--json"], capture=True, check=False)
    if r.returncode != 0:
        return "unknown"
    mod = json.loads(r.stdout)["modules"].get(NAME, {}).get("nodes", {}).get(node)
    return f"{mod['state']} {mod['status']}" if mod else "unknown"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with lab_up(LAB, 2, 1, 1) as lab:
        lab.exec("node1", ["hakit", "module", "install", str(EXAMPLE), "--all"], capture=True)
        for node in ("node1", "node2"):
            wait_until(lambda node=node: _state(lab, node) != "unknown", 15, "loaded")  # type: ignore[misc]
        lab.exec("node1", ["hakit", "prim", NAME], capture=True)
        lab.exec("node2", ["hakit", "second", NAME], capture=True)
        wait_until(lambda: _state(lab, "node2") == "SECOND ready", 30, "console replicated")
        try:
            yield lab
        finally:
            for node in ("node1", "node2"):
                with contextlib.suppress(LabError):  # (a node may be powered off)
                    lab.exec(node, ["hakit", "stop", NAME], check=False, capture=True)


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
            row = f"[data-cluster=home] tr[data-module={NAME}]"
            page.wait_for_selector(f"{row} td[data-node=node1]:has-text('PRIM ready')")

            lab.poweroff("node1")  # the console's own primary
            wait_until(lambda: _state(lab, "node2") == "ALONE ready", 30, "console on node2")
            # the page reconnects to the console now on node2, still logged in
            try:
                page.wait_for_selector(f"{row} td[data-node=node2]:has-text('ALONE ready')")
            except playwright.TimeoutError:
                log = lab.host_path("node2", "/srv/console-ha/console.log")
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
