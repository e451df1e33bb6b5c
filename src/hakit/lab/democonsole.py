"""`hakit lab demo --console`: the web console on the demo's lab, reachable from this machine.

The console runs on the lab's first client (`hakit console serve`, its own state folder inside
that client), registered with the lab's cluster through an admin token made on node1, with one
user `admin` whose random password is printed. A forwarder (`hakit.lab.forward`) makes it
reachable at https://127.0.0.1:PORT/ on this machine, entering the client's network namespace
for its connections, so nothing of the lab appears in this machine's network. Both processes
belong to the lab: `hakit lab down` ends them.
"""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from hakit.lab.errors import LabError
from hakit.lab.lab import Lab
from hakit.lab.namespaces import netns_path
from hakit.waiting import wait_until

CONSOLE_PORT = 7380


@dataclass(frozen=True)
class DemoConsole:
    url: str
    user: str
    password: str
    log: Path


def start_console(lab: Lab, local_port: int = CONSOLE_PORT) -> DemoConsole:
    client = lab.clients[0] if lab.clients else None
    if client is None:
        raise LabError("the console needs a lab client to run on (`--clients 1`)")
    out = lab.exec(
        "node1",
        ["hakit", "token", "create", "console", "--role", "admin", "--json"],
        capture=True,
    )
    made = json.loads(out.stdout)
    password = secrets.token_urlsafe(12)
    lab.exec(
        client,
        ["hakit", "console", "user", "add", "admin", "--role", "admin", "--password-stdin"],
        input=password + "\n",
        capture=True,
    )
    nodes = ",".join(lab.address(n) for n in lab.nodes)
    register = ["hakit", "console", "cluster", "add", lab.name, "--nodes", nodes]
    register += ["--token", made["token"], "--ca", made["ca_fingerprint"]]
    lab.exec(client, register, capture=True)
    address = lab.address(client)
    log = lab.dir / "console.log"
    lab.spawn(client, ["hakit", "console", "serve", "--listen", f"{address}:7380"], log=log)
    wait_until(
        lambda: log.exists() and "hakit console: https://" in log.read_text(), 15, "console up"
    )
    netns = lab.describe()["hosts"][client]["netns"]
    fwd_log = lab.dir / "console-forward.log"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "hakit.lab.spawn",
            str(fwd_log),
            sys.executable,
            "-m",
            "hakit.lab.forward",
            str(netns_path(netns)),
            str(local_port),
            address,
            "7380",
        ],
        check=True,
        capture_output=True,
    )

    def listening() -> bool:
        try:
            socket.create_connection(("127.0.0.1", local_port), 0.5).close()
        except OSError:
            return False
        return True

    try:
        wait_until(listening, 5, f"the console's forwarder on 127.0.0.1:{local_port}")
    except Exception:
        tail = fwd_log.read_text()[-500:] if fwd_log.exists() else ""
        raise LabError(
            f"the console runs at https://{address}:7380/ inside {client}, but it could not be "
            f"forwarded to 127.0.0.1:{local_port} (taken? try --console-port): {tail}"
        ) from None
    return DemoConsole(f"https://127.0.0.1:{local_port}/", "admin", password, log)
