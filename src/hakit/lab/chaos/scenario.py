"""The lab of a chaos campaign (effects): the cluster, the witness, the module and its
workload for each scenario, and what the campaign reads of them from outside the nodes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from importlib import resources
from pathlib import Path

import yaml

from hakit.config.module import SCRIPTS
from hakit.lab.chaos.invariants import BOOTING
from hakit.lab.errors import LabError
from hakit.lab.lab import Lab
from hakit.lab.namespaces import netns_path, ns_id, pids_in
from hakit.waiting import WaitTimeout, wait_until

NODES = ("node1", "node2")
MODULE = "chaos"
FARM = "farm-web"
VIP = "10.100.1.160"
PORT = 8090
FARM_VIP = "10.100.1.200"
SOURCES = "10.100.1.150-10.100.1.159"  # the farm client's addresses: several buckets
WITNESS = ("10.100.1.101", "10.100.2.101")  # client1
WITNESS_PORT = 7355
DATA = f"/srv/{MODULE}/data"
RECORDS = f"{DATA}/records.log"
WORK = "/srv/chaos-client"  # in client1: the writer's and farm client's files, one folder each

START_PRIM = """\
mkdir -p {data}
nohup {python} -m hakit.lab.chaos.app {port} {records} "$HAKIT_NODE" >/dev/null 2>&1 &
echo $! > /srv/{module}/app.pid
for _ in $(seq 50); do
  {python} -c "import socket; socket.create_connection(('127.0.0.1', {port}), 0.2)" \\
    2>/dev/null && exit 0
  sleep 0.1
done
exit 1
"""
STOP_PRIM = """\
[ -f /srv/{module}/app.pid ] || exit 0
pid=$(cat /srv/{module}/app.pid); kill -9 "$pid" 2>/dev/null
for _ in $(seq 50); do
  kill -0 "$pid" 2>/dev/null || {{ rm -f /srv/{module}/app.pid; exit 0; }}
  sleep 0.1
done
exit 1
"""


class Scenario:
    """One campaign's cluster: `mirror`, `mirror-witness` or `farm` on a 2-node lab."""

    def __init__(self, lab: Lab, kind: str, work: Path) -> None:
        self.lab = lab
        self.kind = kind
        self.work = work  # on this machine, outside the nodes: ledgers, module folder
        self.module = FARM if kind == "farm" else MODULE
        self.vip = None if kind == "farm" else VIP  # the one VIP at most one node may hold
        self.witness_pid: int | None = None
        self.client_pid: int | None = None

    @property
    def client_dir(self) -> str:
        """The workload's folder in client1 (one per module: a soak runs two)."""
        return f"{WORK}/{self.module}"

    @property
    def ledger(self) -> Path:
        """The workload's log of acknowledgements (farm: of answers), on this machine."""
        return self.lab.host_path("client1", f"{self.client_dir}/ledger")

    @property
    def stopfile(self) -> Path:
        return self.lab.host_path("client1", f"{self.client_dir}/stop")

    # -- set-up --------------------------------------------------------------------------

    def build(self) -> None:
        """The lab (two nodes, two networks, client1), then the module and its workload."""
        self.lab.up(len(NODES), 2, 1)
        self.install()

    def install(self) -> None:
        """The module (its witness first, for mirror-witness), started, and its workload; on a
        lab that is up (a soak installs two scenarios' modules on the same lab)."""
        if self.kind == "mirror-witness":
            self._start_witness()
        folder = self._farm_folder() if self.kind == "farm" else self._mirror_folder()
        self.hakit("node1", "module", "install", str(folder), "--all")
        for node in NODES:
            wait_until(lambda n=node: self.state(n) != "unknown", 20, f"loaded on {node}")  # type: ignore[misc]
        if self.kind == "farm":
            self.hakit("node1", "start", FARM, "--all")
            for node in NODES:
                self.wait(node, "UP ready", 60)
        else:
            self.hakit("node1", "prim", MODULE)
            self.wait("node1", "ALONE ready", 60)
            self.hakit("node2", "second", MODULE)
            self.wait("node2", "SECOND ready", 120)
            self.wait("node1", "PRIM ready", 30)
        self.ledger.parent.mkdir(parents=True, exist_ok=True)
        self.start_workload()

    def _mirror_folder(self) -> Path:
        folder = self.work / MODULE
        (folder / "bin").mkdir(parents=True, exist_ok=True)
        cfg: dict[str, object] = {
            "kind": "mirror",
            "nodes": list(NODES),
            "vips": [{"address": f"{VIP}/24", "network": "net1"}],
            "failover": True,
            "default_primary": "alone",
            "scripts": {"start_timeout": 20, "stop_timeout": 20},
            "replication": {"mode": "sync", "port": 7390, "dirs": [{"path": DATA}]},
            "checkers": [
                {
                    "name": "app",
                    "type": "process",
                    "regex": f"hakit.lab.chaos.app {PORT} ",
                    "interval": 0.3,
                    "fall": 2,
                    "rise": 1,
                }
            ],
            "recovery": {"max": 3, "window": 60},
        }
        if self.kind == "mirror-witness":
            cfg["split_brain"] = {"witness": {"addresses": list(WITNESS), "ttl": 1.0, "grace": 0.5}}
        (folder / "module.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        fill = {"python": sys.executable, "port": PORT, "records": RECORDS, "module": MODULE}
        bodies = {"start_prim": START_PRIM, "stop_prim": STOP_PRIM}
        for s in SCRIPTS:
            body = bodies[s].format(data=DATA, **fill) if s in bodies else "exit 0\n"
            (folder / "bin" / s).write_text("#!/bin/sh\n" + body)
            (folder / "bin" / s).chmod(0o755)
        for node in NODES:
            self.lab.exec(node, ["mkdir", "-p", DATA])
        return folder

    def _farm_folder(self) -> Path:
        folder = self.work / FARM
        with resources.as_file(resources.files("hakit") / "examples" / FARM) as src:
            shutil.copytree(src, folder, dirs_exist_ok=True)
        cfg = yaml.safe_load((folder / "module.yaml").read_text())
        cfg["nodes"] = list(NODES)
        (folder / "module.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        first, last = (int(a.rsplit(".", 1)[1]) for a in SOURCES.split("-"))
        batch = "".join(f"addr add 10.100.1.{i}/24 dev eth0\n" for i in range(first, last + 1))
        self.lab.exec("client1", ["ip", "-batch", "-"], input=batch, capture=True)
        return folder

    def _start_witness(self) -> None:
        d = self.lab.host_path("client1", "/srv/witness")
        d.mkdir(parents=True, exist_ok=True)
        key = d / "cluster.key"
        key.write_bytes(self.lab.host_path("node1", "/etc/hakit/cluster.key").read_bytes())
        key.chmod(0o600)
        (d / "witness.yaml").write_text(
            f"listen: [{', '.join(WITNESS)}]\nport: {WITNESS_PORT}\nquarantine: 3\n"
            f"clusters:\n  {self.lab.name}:\n    secret_file: /srv/witness/cluster.key\n"
        )
        argv = ["env", "HAKIT_VAR=/srv/witness/var", "HAKIT_LOG=/srv/witness/log"]
        argv += ["hakit", "witness", "run", "--config", "/srv/witness/witness.yaml"]
        self.witness_pid = self.lab.spawn("client1", argv, log=d / "witness.out")
        state = d / "var" / "witness" / "state.json"
        wait_until(state.exists, 15, "the witness started")

    def start_workload(self) -> None:
        self.stopfile.unlink(missing_ok=True)
        py = sys.executable
        if self.kind == "farm":
            argv = [py, "-m", "hakit.lab.chaos.farmclient", FARM_VIP, f"{self.client_dir}/ledger"]
            argv += [f"{self.client_dir}/stop", "--sources", SOURCES]
        else:
            argv = [py, "-m", "hakit.lab.chaos.writer", f"http://{VIP}:{PORT}/append"]
            argv += [f"{self.client_dir}/ledger", f"{self.client_dir}/stop"]
        self.work.mkdir(parents=True, exist_ok=True)
        self.client_pid = self.lab.spawn("client1", argv, log=self.work / "client.out")

    def stop_workload(self, timeout: float = 30) -> None:
        """Ask the client to stop (it finishes the request in flight) and wait for it."""
        pid, self.client_pid = self.client_pid, None
        if pid is None:
            return
        self.stopfile.touch()
        try:
            wait_until(lambda: _gone(pid), timeout, "the workload client stopped")
        except WaitTimeout:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def close(self) -> None:
        self.stop_workload()
        if self.witness_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.witness_pid, signal.SIGKILL)
            self.witness_pid = None

    # -- what the campaign reads ---------------------------------------------------------

    def hakit(self, node: str, *args: str, check: bool = True) -> str:
        r = self.lab.exec(node, ["hakit", *args], capture=True, check=False)
        if check and r.returncode != 0:
            raise LabError(f"{node}$ hakit {' '.join(args)}: {(r.stdout + r.stderr).strip()}")
        return r.stdout + r.stderr

    def state(self, node: str) -> str:
        """`STATE status` of the module on `node` ("unknown": not loaded or no answer)."""
        try:
            r = self.lab.exec(
                node, ["hakit", "state", "--json"], capture=True, check=False, timeout=10
            )
        except LabError:
            return "unknown"
        with contextlib.suppress(ValueError, KeyError, TypeError):
            mod = json.loads(r.stdout)["modules"][self.module]["nodes"][node]
            return f"{mod['state']} {mod['status']}"
        return "unknown"

    def wait(self, node: str, expected: str, timeout: float) -> None:
        wait_until(lambda: self.state(node) == expected, timeout, f"{expected} on {node}")

    def phase(self, node: str) -> str:
        """The module's phase in `node`'s state file, cheap (no exec): "" when unreadable,
        BOOTING when written before the node's last power-on (its daemon has not decided yet:
        the file is what it reconciles, not what it claims)."""
        path = self.lab.host_path(node, f"/var/lib/hakit/modules/{self.module}/state.json")
        try:
            saved = json.loads(path.read_text())
            boot = (self.lab.dir / node / "boot_id").read_text().strip()
        except (OSError, ValueError):
            return ""
        if not isinstance(saved, dict):
            return ""
        if saved.get("machine_boot") not in (None, "", boot):
            return BOOTING
        return str(saved.get("phase") or "")

    def forget_addresses(self, node: str) -> None:
        """What a power cut does to a real server's RAM: the addresses its daemon added (VIPs)
        are gone when it boots again, only the configured ones come back. The lab's
        namespaces keep them: remove them (the node is off, its links down)."""
        netns = netns_path(self.lab.hosts()[node].netns)
        base = {self.lab.address(node, k) for k in range(1, len(self.lab.networks) + 1)}
        ip = ["nsenter", f"--net={netns}", "--", "ip"]
        shown = subprocess.run(
            [*ip, "-o", "-4", "addr", "show"], capture_output=True, text=True, check=True
        ).stdout
        for raw in shown.splitlines():
            words = raw.split()
            dev, addr = words[1], words[3]
            if dev != "lo" and addr.split("/")[0] not in base:
                subprocess.run([*ip, "addr", "del", addr, "dev", dev], check=False)

    def records(self, node: str) -> str:
        """The records file as the application sees it on `node` (through the mount)."""
        r = self.lab.exec(node, ["cat", RECORDS], capture=True, check=False)
        if r.returncode != 0:
            raise LabError(f"reading {RECORDS} on {node}: {r.stderr.strip()}")
        return r.stdout

    def pids(self, node: str) -> list[int]:
        """Every process of `node` (its network namespace)."""
        ident = ns_id(netns_path(self.lab.hosts()[node].netns))
        return pids_in([("net", ident)]) if ident is not None else []

    def heartbeat_pids(self, node: str) -> list[int]:
        """The node's heartbeat process (the daemon's child)."""
        out = []
        for pid in self.pids(node):
            with contextlib.suppress(OSError):
                if b"hakit.daemon.heartbeat" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    out.append(pid)
        return out

    def app_pids(self, node: str) -> list[int]:
        needle = b"nginx" if self.kind == "farm" else f"hakit.lab.chaos.app {PORT}".encode()
        out = []
        for pid in self.pids(node):
            with contextlib.suppress(OSError):
                if needle in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" "):
                    out.append(pid)
        return out

    def logs(self) -> dict[str, Path]:
        """Every log file of the nodes and the witness, on this machine."""
        out: dict[str, Path] = {}
        for node in NODES:
            for p in sorted(self.lab.host_path(node, "/var/log/hakit").glob("**/*")):
                if p.is_file():
                    out[f"{node}/{p.relative_to(self.lab.host_path(node, '/var/log/hakit'))}"] = p
        for p in sorted(self.lab.host_path("client1", "/srv/witness").glob("log/**/*")):
            if p.is_file():
                out[f"witness/{p.name}"] = p
        witness_out = self.lab.host_path("client1", "/srv/witness/witness.out")
        if witness_out.exists():
            out["witness/witness.out"] = witness_out
        return out


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True
