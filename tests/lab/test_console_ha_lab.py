"""The console made highly available by hakit itself (src/hakit/examples/console-ha): the
console runs on the primary behind a VIP with its whole state replicated. After a power cut of
the primary, the console answers on the VIP from the other node with the same certificate, the
same users, and the browser's session still valid — nothing to set up again."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hakit.lab.lab import Lab
from hakit.waiting import wait_until
from tests.lab.modules import LabModule, lab_up

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
    pytest.mark.skipif(not shutil.which("nft"), reason="the lab needs nftables (nft)"),
]

LAB = "cha"
EXAMPLE = Path(__file__).resolve().parents[2] / "src" / "hakit" / "examples" / "console-ha"
VIP = "10.100.1.150"
STATE = {"HAKIT_CONSOLE_STATE": "/srv/console-ha/state"}

# A browser's view, run on client1: the certificate's fingerprint, a login, then /api/me with
# the session cookie (kept in a file between two runs, as a browser keeps it).
CLIENT = r"""
import hashlib, json, ssl, sys, httpx
url, jar, action = sys.argv[1], sys.argv[2], sys.argv[3]
pem = ssl.get_server_certificate((url.split("//")[1].split(":")[0], 7380), timeout=3)
out = {"cert": hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()}
with httpx.Client(base_url=url, verify=False, timeout=5, trust_env=False) as c:
    if action == "login":
        r = c.post("/login", data={"user": "admin", "password": "s3cret-pass"},
                   headers={"Origin": url})
        out["login"] = r.headers.get("location")
        open(jar, "w").write(r.cookies.get("hakit_session") or "")
    c.cookies.set("hakit_session", open(jar).read())
    me = c.get("/api/me")
    out["me"] = [me.status_code, me.json().get("user") if me.status_code == 200 else me.text]
print(json.dumps(out))
"""


class Console(LabModule):
    def remove(self) -> None:
        for node in ("node1", "node2"):
            self.lab.exec(node, ["hakit", "stop", self.name], check=False, capture=True)
        self.lab.exec("node1", ["hakit", "module", "uninstall", self.name, "--all"], check=False)


@pytest.fixture
def lab() -> Iterator[Lab]:
    with lab_up(LAB, 2, 1, 1) as lab:
        yield lab


def browser(lab: Lab, action: str) -> dict[str, object]:
    r = lab.exec(
        "client1",
        [sys.executable, "-c", CLIENT, f"https://{VIP}:7380", "/tmp/console-ha.jar", action],
        capture=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def test_the_console_fails_over_with_its_users_sessions_and_certificate(lab: Lab) -> None:
    m = Console(lab, "console-ha")
    try:
        lab.exec("node1", ["hakit", "module", "install", str(EXAMPLE), "--all"], capture=True)
        m.cmd("node1", "prim")
        m.cmd("node2", "second")
        m.wait("node1", "PRIM ready", 30)
        m.wait("node2", "SECOND ready", 30)
        add = lab.exec(
            "node1",
            ["hakit", "console", "user", "add", "admin", "--role", "admin", "--password-stdin"],
            input="s3cret-pass\n",
            env=STATE,
            capture=True,
            check=False,
        )
        assert add.returncode == 0, add.stdout + add.stderr
        before = browser(lab, "login")
        assert before["login"] == "/", before
        assert before["me"] == [200, "admin"]

        lab.poweroff("node1")  # power cut of the console's host
        m.wait("node2", "ALONE ready", 30)

        def answers() -> dict[str, object] | None:
            try:
                return browser(lab, "me")
            except (AssertionError, ValueError):
                return None

        after = wait_until(answers, 30, "the console on the VIP from node2")
        assert after is not None
        assert after["cert"] == before["cert"], "the same certificate: browsers keep trusting it"
        assert after["me"] == [200, "admin"], "the session survived the failover"
        again = browser(lab, "login")  # and the user can log in there
        assert again["me"] == [200, "admin"]
        assert "console-ha" in m.log("node2")
    finally:
        lab.poweron("node1")
        m.remove()
