"""`Lab`: a multi-node hakit cluster on this machine, its life cycle and its faults.

Used by `hakit lab`, by the test suite and by the demo::

    lab = Lab("demo").up(nodes=2, networks=2, clients=1)
    lab.exec("node1", ["hakit", "state", "--json"], capture=True).stdout
    lab.cut("node1", "node2", network=1)
    lab.poweroff("node1")
    lab.down()

Every host is a network namespace `hk.LAB.HOST` plus persistent mount and UTS namespaces
(files under /run/hakit-lab/LAB/) in which /etc/hakit, /var/lib/hakit, /var/log/hakit, /srv
and any `private` path are bind mounts of the host's own directories under ROOT/LAB/HOST/fs/.
The bridges live in a switch namespace `hk.LAB.sw`; nothing of the lab appears in the root
network namespace. See docs/lab.md.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from hakit.lab import netfilter
from hakit.lab.errors import LabError
from hakit.lab.mountpoints import GLOBAL_LOCK, ensure_mountpoint, release_if_last
from hakit.lab.namespaces import (
    RUNTIME_DIR,
    alive,
    check_environment,
    create_host_namespaces,
    ensure_runtime_mount,
    enter_argv,
    host_command,
    host_env,
    ip_batch,
    kill_all,
    locked,
    mounts_under,
    netns_add,
    netns_delete,
    netns_list,
    netns_path,
    ns_id,
    pids_in,
    run,
    start_time,
    umount_all_under,
)
from hakit.lab.record import HostState, LabRecord, load, save
from hakit.lab.topology import (
    Cut,
    HostKind,
    Topology,
    cut_elements,
    is_under,
    is_volatile,
    isolating,
    lab_of_netns,
    netns_prefix,
    normalize_private,
    switch_netns,
    validate_lab_name,
    with_cut,
    without_cut,
)

DEFAULT_ROOT = Path("/var/lib/hakit-lab")
ROOT_ENV = "HAKIT_LAB_ROOT"
DAEMON_TIMEOUT = 15.0
EXEC_TIMEOUT = 60.0
SOCKET = "/var/lib/hakit/hakit.sock"  # the daemon's API socket, as seen inside a node
DAEMON_OUT = "/var/log/hakit/daemon.out"  # the daemon's stdout and stderr, inside a node
MARKER = ".hakit-lab"  # marks a directory as a lab's, so `down` only ever removes labs
# Files of the machine replaced inside every lab host (if the machine has them).
BOOT_ID = "/proc/sys/kernel/random/boot_id"  # each host's own, new at every power-on
FILE_BINDS = ("/etc/hosts", "/etc/hostname", BOOT_ID)


def default_root() -> Path:
    return Path(os.environ.get(ROOT_ENV) or DEFAULT_ROOT)


@dataclass(frozen=True)
class HostInfo:
    name: str
    kind: HostKind
    netns: str
    addresses: dict[str, str]
    power: str
    daemon_pid: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "power": self.power,
            "addresses": self.addresses,
            "netns": self.netns,
            "daemon_pid": self.daemon_pid,
        }


@dataclass(frozen=True)
class DownReport:
    found: bool
    killed: tuple[int, ...]
    survivors: tuple[int, ...]
    netns: tuple[str, ...]


class Lab:
    """One lab, by name. Creating the object does nothing; `up()` builds the lab."""

    def __init__(self, name: str, *, root: str | Path | None = None) -> None:
        self.name = validate_lab_name(name)
        self.root = (Path(root) if root is not None else default_root()).absolute()
        self.dir = self.root / name
        self.record_path = self.dir / "lab.json"
        self.run_dir = RUNTIME_DIR / name

    def __repr__(self) -> str:
        return f"Lab({self.name!r}, root={str(self.root)!r})"

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down(missing_ok=True)

    # -- discovery -------------------------------------------------------------------------

    @classmethod
    def all(cls, root: str | Path | None = None) -> list[Lab]:
        """Labs with a record under `root`, and any lab leftovers on this machine."""
        base = Path(root) if root is not None else default_root()
        names: set[str] = set()
        with contextlib.suppress(FileNotFoundError):
            names |= {p.parent.name for p in base.glob("*/lab.json")}
        names |= {n for n in map(lab_of_netns, netns_list()) if n is not None}
        with contextlib.suppress(FileNotFoundError):
            names |= {p.name for p in RUNTIME_DIR.iterdir() if p.is_dir()}
        labs = []
        for name in sorted(n for n in names if _valid_name(n)):
            owner = _owner(name)  # a lab made under another root is shown from there
            ok = owner is not None and owner.name == name and (owner / "lab.json").exists()
            labs.append(cls(name, root=owner.parent if ok and owner else base))
        return labs

    def record(self) -> LabRecord:
        """The lab's record; LabError if the lab does not exist (or is not fully up)."""
        rec = load(self.record_path)
        if rec is None:
            raise LabError(
                f"no lab named {self.name} (under {self.root}): `hakit lab list` shows the labs"
            )
        return rec

    def _up_record(self) -> LabRecord:
        rec = self.record()
        if rec.state != "up" or not netns_path(switch_netns(self.name)).exists():
            raise LabError(
                f"lab {self.name} is not up (half-created or crashed): remove it with "
                f"`hakit lab down {self.name}`"
            )
        return rec

    def status(self) -> str:
        """`up`, `creating` (an `up` is running), `broken` (leftovers), or `absent`."""
        try:
            rec = load(self.record_path)
        except LabError:
            return "broken"
        if rec is None:
            return "broken" if self._leftovers() else "absent"
        if rec.state == "creating":
            return "creating" if alive_pid(rec.creator_pid) else "broken"
        return "up" if netns_path(switch_netns(self.name)).exists() else "broken"

    def exists(self) -> bool:
        return self.status() == "up"

    @property
    def topology(self) -> Topology:
        return self.record().topology()

    @property
    def nodes(self) -> tuple[str, ...]:
        return self.topology.node_names

    @property
    def clients(self) -> tuple[str, ...]:
        return self.topology.client_names

    @property
    def networks(self) -> tuple[str, ...]:
        return self.topology.network_names

    def address(self, host: str, network: str | int = 1) -> str:
        """The address of `host` on network `network` (1, "1" or "net1")."""
        return self.topology.address(host, network)

    def hosts(self) -> dict[str, HostInfo]:
        rec = self.record()
        out = {}
        for h in rec.topology().hosts:
            st = rec.hosts.get(h.name, HostState())
            pid = st.daemon_pid if alive(st.daemon_pid, st.daemon_started) else None
            out[h.name] = HostInfo(h.name, h.kind, h.netns, h.addresses, st.power, pid)
        return out

    def cuts(self) -> tuple[Cut, ...]:
        return self.record().cuts

    def daemon_pid(self, node: str) -> int | None:
        """PID of the node's hakit daemon if it is running."""
        return self.hosts()[self.topology.node(node).name].daemon_pid

    def describe(self) -> dict[str, Any]:
        """The lab as `hakit lab list --json` shows it."""
        status = self.status()
        if status not in ("up", "creating"):
            return {
                "state": status,
                "root": str(self.dir),
                "netns": [n for n in netns_list() if n.startswith(netns_prefix(self.name))],
                "hint": f"remove it with `hakit lab down {self.name}`",
            }
        rec = self.record()
        topo = rec.topology()
        return {
            "state": status,
            "root": str(self.dir),
            "nodes": list(topo.node_names),
            "clients": list(topo.client_names),
            "networks": list(topo.network_names),
            "private": list(rec.private),
            "daemon": rec.daemon,
            "hosts": {n: h.to_json() for n, h in self.hosts().items()},
            "cuts": [{"hosts": [c.a, c.b], "network": c.network} for c in rec.cuts],
        }

    def host_path(self, host: str, path: str) -> Path:
        """Where the file that `host` sees at absolute `path` is, seen from this machine."""
        topo = self.topology
        topo.host(host)
        return self._host_path(topo, host, path)

    def _host_path(self, topo: Topology, host: str, path: str) -> Path:
        path = os.path.normpath(path)
        if path == "/etc/hosts":
            return self.dir / "hosts"
        if path == "/etc/hostname":
            return self.dir / host / "hostname"
        if path == BOOT_ID:
            return self.dir / host / "boot_id"
        for p in sorted(topo.private, key=len, reverse=True):
            if is_under(path, p):
                return self._fs(host) / path.lstrip("/")
        return Path(path)

    def _new_boot(self, host: str) -> None:
        """A new kernel boot id for `host` (written in place: its bind mount shows it)."""
        (self.dir / host / "boot_id").write_text(str(uuid.uuid4()) + "\n")

    def _fs(self, host: str) -> Path:
        return self.dir / host / "fs"

    def _ns_files(self, host: str) -> tuple[Path, Path]:
        return self.run_dir / f"{host}.mnt", self.run_dir / f"{host}.uts"

    # -- up ----------------------------------------------------------------------------------

    def up(
        self,
        nodes: int,
        networks: int = 2,
        clients: int = 1,
        *,
        private: Iterable[str] = (),
        daemon: bool = True,
        daemon_timeout: float = DAEMON_TIMEOUT,
        daemon_command: Sequence[str] = ("hakit", "daemon"),
        cluster: bool = True,
    ) -> Lab:
        """Build the lab; with `daemon`, start `daemon_command` (`hakit daemon`) on every node
        and wait (at most `daemon_timeout` s) for their API sockets. A failure while building
        removes what was built; a daemon that does not start leaves the lab up for inspection
        (LabError naming the node, with the end of its daemon.out). Without `cluster`, the
        nodes get no cluster.yaml and no daemon: they are bootstrapped as real servers are
        (`hakit cluster init`, `add-node`, `join`), then `start_daemons`."""
        check_environment()
        import hakit

        protected = [str(self.root), sys.prefix, sys.base_prefix, str(RUNTIME_DIR)]
        protected.append(str(Path(hakit.__file__).resolve().parent.parent))
        paths = [os.path.realpath(p) if p.startswith("/") else p for p in private]
        private_paths = normalize_private(paths, protected=protected)
        topo = Topology(self.name, nodes, networks, clients, private_paths)
        with locked(_lab_lock(self.name), f"hakit lab up {self.name}"):
            try:
                rec = load(self.record_path)
            except LabError:
                rec = None  # unreadable: leftovers of a crash
            if rec is not None and rec.state == "up" and netns_path(topo.switch_netns).exists():
                raise LabError(
                    f"lab {self.name} already exists: use it, or remove it first with "
                    f"`hakit lab down {self.name}`"
                )
            self._check_owner()
            with locked(_global_lock(), f"hakit lab up {self.name}"):
                if self._leftovers():
                    self._destroy()
                if self.dir.exists() and any(self.dir.iterdir()):
                    raise LabError(
                        f"{self.dir} exists and is not a lab's directory: choose another lab "
                        f"name or another {ROOT_ENV}"
                    )
                try:
                    self._build(topo, daemon, tuple(daemon_command), cluster)
                except BaseException as e:
                    self._destroy()
                    if isinstance(e, OSError):
                        raise LabError(f"building lab {self.name}: {e} (nothing was left)") from e
                    raise
            if daemon and cluster:
                self._start_daemons(list(topo.node_names), daemon_timeout)
        return self

    def _build(
        self, topo: Topology, daemon: bool, daemon_command: tuple[str, ...], cluster: bool
    ) -> None:
        ensure_runtime_mount()
        self.run_dir.mkdir(mode=0o700)
        (self.run_dir / "owner").write_text(str(self.dir) + "\n")
        self.root.mkdir(parents=True, exist_ok=True)
        self.dir.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.dir, 0o700)
        (self.dir / MARKER).write_text(f"hakit lab {self.name}\n")
        rec = LabRecord(
            name=self.name,
            nodes=topo.nodes,
            networks=topo.networks,
            clients=topo.clients,
            private=topo.private,
            daemon=daemon,
            root=str(self.dir),
            state="creating",
            creator_pid=os.getpid(),
            created_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            hosts={h.name: HostState() for h in topo.hosts},
            daemon_command=daemon_command,
        )
        save(self.record_path, rec)

        # Files: mount points on this machine, each host's private directories, /etc/hosts.
        tops = [p for p in topo.private if not any(q != p and is_under(p, q) for q in topo.private)]
        for p in tops:
            ensure_mountpoint(p)
        (self.dir / "hosts").write_text(topo.hosts_file())
        for h in topo.hosts:
            (self.dir / h.name).mkdir(mode=0o700)
            (self.dir / h.name / "hostname").write_text(h.name + "\n")
            self._new_boot(h.name)
            for p in topo.private:
                d = self._fs(h.name) / p.lstrip("/")
                d.mkdir(parents=True, exist_ok=True)
                _copy_owner_and_mode(Path(p), d)

        # Network: namespaces, the switch and its cables, addresses, the cut filter.
        for ns in topo.all_netns:
            netns_add(ns)
        ip_batch(topo.switch_netns, topo.switch_commands(), f"building lab {self.name}'s switch")
        for h in topo.hosts:
            ip_batch(h.netns, topo.host_commands(h.name), f"configuring {h.name}'s network")
        netfilter.install(topo.switch_netns)

        # Mount and UTS namespaces: hostname, /sys, private bind mounts.
        for h in topo.hosts:
            binds = [[str(self._fs(h.name) / p.lstrip("/")), p] for p in topo.private]
            binds += [
                [str(self._host_path(topo, h.name, f)), f] for f in FILE_BINDS if os.path.isfile(f)
            ]
            mnt, uts = self._ns_files(h.name)
            create_host_namespaces(
                h.netns,
                mnt,
                uts,
                {
                    "hostname": h.name,
                    "drop": ["/run/netns", str(RUNTIME_DIR)],
                    "scratch": str(RUNTIME_DIR),
                    "binds": binds,
                },
            )

        if cluster:
            self._write_cluster_config(topo)
        rec.state = "up"
        save(self.record_path, rec)

    def _write_cluster_config(self, topo: Topology) -> None:
        try:
            from hakit.config.starter import new_secret, render_cluster_yaml
        except ImportError as e:
            raise LabError(f"cannot write the cluster configuration: {e}") from e
        text = render_cluster_yaml(self.name, topo.cluster_nodes())
        secret = new_secret()
        for node in topo.node_names:
            etc = self._fs(node) / "etc/hakit"
            (etc / "cluster.yaml").write_text(text)
            fd = os.open(etc / "cluster.key", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secret)
            os.chmod(etc / "cluster.key", 0o600)

    # -- daemons -----------------------------------------------------------------------------

    def start_daemons(self, nodes: Sequence[str], timeout: float = DAEMON_TIMEOUT) -> None:
        """Start the daemon on `nodes` whose daemon does not run (what `systemctl start hakit`
        does on a server), and wait for their API sockets."""
        self._up_record()
        with locked(_lab_lock(self.name), f"hakit lab daemon {self.name}"):
            rec = self._up_record()
            topo = rec.topology()
            for n in nodes:
                if topo.host(n).kind != "node":
                    raise LabError(f"{n} is not a node of lab {self.name}")
            idle = [
                n for n in nodes if not alive(rec.hosts[n].daemon_pid, rec.hosts[n].daemon_started)
            ]
            if idle:
                self._start_daemons(idle, timeout)

    def _start_daemons(self, nodes: Sequence[str], timeout: float) -> None:
        rec = self._up_record()
        topo = rec.topology()
        command = " ".join(rec.daemon_command)
        for node in nodes:
            pid = self._spawn(
                topo,
                node,
                rec.daemon_command,
                self._host_path(topo, node, DAEMON_OUT),
                banner=f"hakit lab {self.name}: starting `{command}` on {node}",
                extra_env={"PYTHONUNBUFFERED": "1"},
            )
            rec.hosts[node] = HostState("on", pid, start_time(pid))
        save(self.record_path, rec)
        self._wait_daemons(topo, rec, nodes, timeout)

    def _wait_daemons(
        self, topo: Topology, rec: LabRecord, nodes: Sequence[str], timeout: float
    ) -> None:
        deadline = time.monotonic() + timeout
        pending = list(nodes)
        while pending:
            for node in list(pending):
                if _socket_ready(self._host_path(topo, node, SOCKET)):
                    pending.remove(node)
                    continue
                st = rec.hosts[node]
                if not alive(st.daemon_pid, st.daemon_started):
                    self._daemon_failed(topo, node, "exited before opening its API socket")
            if pending and time.monotonic() > deadline:
                self._daemon_failed(
                    topo, pending[0], f"did not open its API socket {SOCKET} within {timeout:g} s"
                )
            if pending:
                time.sleep(0.05)

    def _daemon_failed(self, topo: Topology, node: str, reason: str) -> None:
        out = self._host_path(topo, node, DAEMON_OUT)
        try:
            text = out.read_text(errors="replace")
        except OSError:
            text = ""
        last_run = text.rsplit("=== hakit lab", 1)[-1].split("\n", 1)[-1]
        tail = "\n".join(last_run.rstrip("\n").splitlines()[-20:]) or "(empty)"
        raise LabError(
            f"{node}: the hakit daemon {reason}.\n"
            f"--- end of {DAEMON_OUT} on {node} ({out}) ---\n{tail}\n---\n"
            f"Lab {self.name} is left up for inspection "
            f"(`hakit lab exec {self.name} {node} -- sh`); "
            f"remove it with `hakit lab down {self.name}`."
        )

    def _spawn(
        self,
        topo: Topology,
        host: str,
        argv: Sequence[str],
        log: Path,
        *,
        banner: str | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> int:
        h = topo.host(host)
        mnt, uts = self._ns_files(host)
        log.parent.mkdir(parents=True, exist_ok=True)
        if banner is not None:
            now = datetime.datetime.now().isoformat(timespec="seconds")
            with open(log, "a") as f:
                f.write(f"=== {banner} at {now} ===\n")
        out = run(
            [
                sys.executable,
                "-I",
                "-m",
                "hakit.lab.spawn",
                str(log),
                *enter_argv(h.netns, mnt, uts),
                *host_command(argv),
            ],
            what=f"starting {argv[0]} on {host}",
            env=host_env(dict(extra_env or {})),
        )
        return int(out.strip())

    # -- commands inside hosts -----------------------------------------------------------------

    def exec_argv(self, host: str, argv: Sequence[str], wd: str | None = None) -> list[str]:
        """The command line that runs `argv` inside `host` (`hakit` runs as this Python's
        `-m hakit`, or the HAKIT_INSTALLED one). `wd`: working directory inside the host if it
        exists there, else /."""
        rec = self._up_record()
        topo = rec.topology()
        h = topo.host(host)
        if rec.hosts.get(host, HostState()).power == "off":
            raise LabError(
                f"{host} is powered off: `hakit lab poweron {self.name} {host}` first "
                f"(its files are under {self.dir / host})"
            )
        if not argv:
            raise LabError("no command given: e.g. `hakit lab exec LAB node1 -- hakit state`")
        inside = "/"
        if wd is not None and self._host_path(topo, host, wd).is_dir():
            inside = wd
        mnt, uts = self._ns_files(h.name)
        return [*enter_argv(h.netns, mnt, uts, inside), *host_command(argv)]

    def exec(
        self,
        host: str,
        argv: Sequence[str],
        *,
        check: bool = True,
        capture: bool = False,
        timeout: float | None = EXEC_TIMEOUT,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside `host` and wait (at most `timeout` s). With `check`, a non-zero
        exit is a LabError carrying the command's stderr (when captured)."""
        full = self.exec_argv(host, argv)
        cmd = " ".join(argv)
        try:
            proc = subprocess.run(
                full,
                input=input,
                stdin=subprocess.DEVNULL if input is None else None,
                capture_output=capture,
                text=True,
                timeout=timeout,
                env=host_env(dict(env or {})),
            )
        except subprocess.TimeoutExpired as e:
            raise LabError(f"{host}: `{cmd}` did not finish within {timeout:g} s") from e
        if check and proc.returncode != 0:
            detail = f": {proc.stderr.strip()}" if capture and proc.stderr.strip() else ""
            raise LabError(f"{host}: `{cmd}` exited with {proc.returncode}{detail}")
        return proc

    def spawn(self, host: str, argv: Sequence[str], log: str | Path | None = None) -> int:
        """Start `argv` in the background inside `host`, detached (own session, stdin from
        /dev/null, output appended to `log`, a path on this machine, or discarded); its PID."""
        self.exec_argv(host, argv)  # checks: lab up, host exists and is powered on
        topo = self.topology
        return self._spawn(topo, host, argv, Path(log) if log is not None else Path(os.devnull))

    # -- faults ------------------------------------------------------------------------------

    def poweroff(self, host: str) -> list[int]:
        """Cut the power of `host`: SIGKILL every process in its namespaces (by PID) and take
        its links down at both ends. Its files stay as they are. Returns the PIDs killed."""
        self._up_record()  # a missing lab fails here, before a lock file is created for it
        with locked(_lab_lock(self.name), f"hakit lab poweroff {self.name} {host}"):
            rec = self._up_record()
            topo = rec.topology()
            h = topo.host(host)
            mnt, uts = self._ns_files(host)
            ids = [("net", ns_id(netns_path(h.netns))), ("mnt", ns_id(mnt)), ("uts", ns_id(uts))]
            wanted = [(kind, i) for kind, i in ids if i is not None]
            in_host, in_switch = topo.link_commands(host, "down")
            # Like a real power cut, nothing may react to the others dying: unplug the node
            # first, freeze every process, then kill them all.
            ip_batch(topo.switch_netns, in_switch, f"taking {host}'s switch ports down")
            for pid in pids_in(wanted):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGSTOP)
            killed, survivors = kill_all(lambda: pids_in(wanted), timeout=5.0)
            ip_batch(h.netns, in_host, f"taking {host}'s links down")
            rec.hosts[host] = HostState("off")
            save(self.record_path, rec)
            if survivors:
                raise LabError(
                    f"{host}: processes {survivors} did not die within 5 s of SIGKILL "
                    "(uninterruptible sleep?); its links are down"
                )
            return killed

    def poweron(self, host: str, *, daemon_timeout: float = DAEMON_TIMEOUT) -> None:
        """Power `host` back on: links up, volatile private paths (/run/..., /tmp/...) emptied,
        and, on a node of a lab with daemons, `hakit daemon` started (and waited for)."""
        self._up_record()
        with locked(_lab_lock(self.name), f"hakit lab poweron {self.name} {host}"):
            rec = self._up_record()
            topo = rec.topology()
            h = topo.host(host)
            st = rec.hosts.get(host, HostState())
            if st.power == "off":
                for p in topo.private:
                    if is_volatile(p):
                        _empty_dir(self._fs(host) / p.lstrip("/"))
                self._new_boot(host)
            in_host, in_switch = topo.link_commands(host, "up")
            ip_batch(topo.switch_netns, in_switch, f"taking {host}'s switch ports up")
            ip_batch(h.netns, in_host, f"taking {host}'s links up")
            rec.hosts[host] = HostState("on", st.daemon_pid, st.daemon_started)
            save(self.record_path, rec)
            configured = self._host_path(topo, host, "/etc/hakit/cluster.yaml").exists()
            idle = not alive(st.daemon_pid, st.daemon_started)
            if rec.daemon and h.kind == "node" and idle and configured:
                self._start_daemons([host], daemon_timeout)

    def cut(self, host1: str, host2: str, network: str | int | None = None) -> tuple[Cut, ...]:
        """No frame passes between the two hosts on `network` (default: every network)."""
        return self._set_cuts(lambda t, c: with_cut(t, c, host1, host2, network))

    def heal(
        self, host1: str, host2: str | None = None, network: str | int | None = None
    ) -> tuple[Cut, ...]:
        """Remove the cuts between the two hosts (`host2` None: every cut of `host1`)."""
        return self._set_cuts(lambda t, c: without_cut(t, c, host1, host2, network))

    def isolate(self, host: str) -> tuple[Cut, ...]:
        """Cut `host` from every other host on every network."""
        return self._set_cuts(lambda t, c: isolating(t, c, host))

    def _set_cuts(self, change: Any) -> tuple[Cut, ...]:
        self._up_record()
        with locked(_lab_lock(self.name), f"changing the cuts of lab {self.name}"):
            rec = self._up_record()
            topo = rec.topology()
            cuts: tuple[Cut, ...] = change(topo, rec.cuts)
            netfilter.apply(topo.switch_netns, cut_elements(topo, cuts))
            rec.cuts = cuts
            save(self.record_path, rec)
            return cuts

    # -- down --------------------------------------------------------------------------------

    def down(self, *, missing_ok: bool = False) -> DownReport:
        """Remove everything of the lab — processes, mounts, namespaces, files — whatever state
        it is in (half-created, crashed, record lost)."""
        check_environment()
        with (
            locked(_lab_lock(self.name), f"hakit lab down {self.name}"),
            locked(_global_lock(), f"hakit lab down {self.name}"),
        ):
            try:
                self._check_owner()
                if not self._leftovers():
                    if missing_ok:
                        return DownReport(False, (), (), ())
                    raise LabError(f"no lab named {self.name}: `hakit lab list` shows the labs")
                return self._destroy()
            finally:
                _lab_lock(self.name).unlink(missing_ok=True)  # safe while held: see `locked`

    def _check_owner(self) -> None:
        owner = _owner(self.name)
        if owner is not None and owner != self.dir and (owner / "lab.json").exists():
            raise LabError(
                f"lab {self.name} belongs to {owner}: act on it with "
                f"`{ROOT_ENV}={owner.parent} hakit lab ...`"
            )

    def _leftovers(self) -> bool:
        prefix = netns_prefix(self.name)
        return (
            any(n.startswith(prefix) for n in netns_list())
            or self.run_dir.exists()
            or (self.dir / MARKER).exists()
            or self.record_path.exists()
        )

    def _destroy(self) -> DownReport:
        """Remove the lab's processes, mounts, namespaces and files. Callers hold both locks."""
        prefix = netns_prefix(self.name)
        netns = [n for n in netns_list() if n.startswith(prefix)]
        ids: list[tuple[str, tuple[int, int]]] = []
        for n in netns:
            i = ns_id(netns_path(n))
            if i is not None:
                ids.append(("net", i))
        nsfs = set(mounts_under(self.run_dir, include_self=False))
        for f in sorted(self.run_dir.iterdir()) if self.run_dir.exists() else []:
            i = ns_id(f)
            if str(f) in nsfs and i is not None and f.suffix in (".mnt", ".uts"):
                ids.append((f.suffix[1:], i))
        recorded: list[tuple[int, int]] = []
        with contextlib.suppress(LabError):
            rec = load(self.record_path)
            if rec is not None:
                recorded = [
                    (s.daemon_pid, s.daemon_started)
                    for s in rec.hosts.values()
                    if s.daemon_pid is not None and s.daemon_started is not None
                ]

        def find() -> list[int]:
            pids = set(pids_in(ids)) if ids else set()
            pids |= {pid for pid, started in recorded if alive(pid, started)}
            return sorted(pids)

        killed, survivors = kill_all(find, timeout=5.0)
        umount_all_under(self.run_dir)
        for n in netns:
            netns_delete(n)
        if self.run_dir.exists():
            shutil.rmtree(self.run_dir)
        if self.dir.exists():
            if mounts_under(self.dir):
                raise LabError(f"{self.dir} still has mounts: {mounts_under(self.dir)}")
            if (self.dir / MARKER).exists() or self.record_path.exists():
                shutil.rmtree(self.dir)
            else:
                with contextlib.suppress(OSError):
                    self.dir.rmdir()  # only if empty: never remove what is not a lab's
        release_if_last()
        if survivors:
            raise LabError(
                f"lab {self.name}: processes {survivors} did not die within 5 s of SIGKILL "
                "(uninterruptible sleep?); everything else was removed"
            )
        return DownReport(True, tuple(killed), tuple(survivors), tuple(netns))


# -- helpers ----------------------------------------------------------------------------------


def _valid_name(name: str) -> bool:
    try:
        validate_lab_name(name)
    except LabError:
        return False
    return True


def _owner(name: str) -> Path | None:
    """The directory of the lab that holds the namespaces named after `name`, if recorded."""
    try:
        return Path((RUNTIME_DIR / name / "owner").read_text().strip())
    except OSError:
        return None


def alive_pid(pid: int) -> bool:
    return pid > 0 and start_time(pid) is not None


def _lab_lock(name: str) -> Path:
    return RUNTIME_DIR / f"{name}.lock"


def _global_lock() -> Path:
    return GLOBAL_LOCK


def _socket_ready(path: Path) -> bool:
    """Whether a Unix socket at `path` accepts connections (through a directory handle, so
    the path length limit of sockaddr_un does not apply)."""
    try:
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            s.connect(f"/proc/self/fd/{dfd}/{path.name}")
        return True
    except OSError:
        return False
    finally:
        os.close(dfd)


def _copy_owner_and_mode(src: Path, dst: Path) -> None:
    st = os.stat(src)
    os.chown(dst, st.st_uid, st.st_gid)
    os.chmod(dst, stat.S_IMODE(st.st_mode))


def _empty_dir(d: Path) -> None:
    if not d.is_dir():
        return
    for child in d.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
