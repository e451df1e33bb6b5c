"""The node daemon: owns the heartbeat process and the timeline, answers status questions."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import secrets
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hakit import __version__
from hakit.adapters.scripts import ProcessScriptRunner
from hakit.adapters.vip import NetlinkVips
from hakit.config.load import ClusterFile, read_text
from hakit.config.model import Cluster
from hakit.core.mirror import Cmd
from hakit.core.outcomes import Accepted
from hakit.daemon.join import JoinService
from hakit.daemon.logs import LOGGER, Event, Timeline
from hakit.daemon.modules import ModuleManager
from hakit.daemon.packages import install_bytes, uninstall
from hakit.daemon.reconfig import Candidate, check_candidate, heartbeat_peers, write_config
from hakit.daemon.status import build_status
from hakit.daemon.supervisor import HeartbeatSupervisor
from hakit.errors import ConfigError, HakitError
from hakit.latency import Latency
from hakit.paths import Paths
from hakit.wire.heartbeat import make_boot_id

log = logging.getLogger(LOGGER)

SHUTDOWN_TIMEOUT = 300.0  # stop scripts have their own limits; this bounds the whole stop


LAG_PERIOD = 0.1  # s the event-loop watch sleeps between two measurements
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
"""Upper bounds (s) of the event-loop lag histogram (docs/metrics.md)."""


class UnknownChecker(HakitError):
    exit_code = 4


class IdentityError(HakitError):
    exit_code = 2


def _is_local_address(address: str) -> bool:
    """True if `address` is configured on this host (binding it without FREEBIND succeeds)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.bind((address, 0))
        except OSError:
            return False
    return True


def resolve_local_node(config: Cluster, explicit: str | None, hostname: str) -> tuple[str, str]:
    """Which node of the cluster this host is, and why: explicit name, host name, or address."""
    if explicit:
        if explicit not in config.nodes:
            raise IdentityError(
                f"node {explicit!r} (from --node or HAKIT_NODE) is not in the cluster; "
                f"nodes: {', '.join(config.nodes)}"
            )
        return explicit, "given explicitly"
    short = hostname.split(".")[0]
    if short in config.nodes:
        return short, f"host name {hostname!r}"
    matches = [
        n
        for n, spec in config.nodes.items()
        if any(_is_local_address(str(a)) for a in spec.addresses.values())
    ]
    if len(matches) == 1:
        return matches[0], "its address is configured on this host"
    raise IdentityError(
        f"cannot tell which node this host is: host name {hostname!r} is not a node name "
        f"({', '.join(config.nodes)}) and "
        + ("no" if not matches else f"several ({', '.join(matches)})")
        + " node addresses are configured here; set HAKIT_NODE or pass --node"
    )


@contextmanager
def single_instance(var: Path) -> Iterator[None]:
    var.mkdir(parents=True, exist_ok=True)
    lock_path = var / "daemon.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise HakitError(
                f"another hakit daemon is already running on this node (pid {other}); "
                f"stop it first (lock {lock_path})"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


@dataclass
class NodeDaemon:
    paths: Paths
    cluster: ClusterFile
    local: str
    identity_reason: str

    def __post_init__(self) -> None:
        self._stopping = asyncio.Event()
        self.started_at = time.time()
        self.started_mono = time.monotonic()
        self.boot = make_boot_id(time.time_ns(), secrets.token_bytes(8))
        self.timeline = Timeline(self.local)
        self.loop_lag = Latency(LAG_BUCKETS)
        cfg = self.cluster.config
        local_nets = cfg.networks_of(self.local)
        self.pending_restart: tuple[str, ...] = ()  # in cluster.yaml, taken at the next start
        self._applying = asyncio.Lock()
        init = {
            "cluster": cfg.cluster,
            "secret": self.cluster.secret.hex(),
            "local": self.local,
            "interval": cfg.heartbeat.interval,
            "timeout": cfg.heartbeat.timeout,
            "port": cfg.heartbeat.port,
            "realtime": cfg.heartbeat.realtime and os.geteuid() == 0,
            "boot": self.boot.hex(),
            "addresses": {n: str(cfg.nodes[self.local].addresses[n]) for n in local_nets},
            "peers": heartbeat_peers(cfg, self.local),
        }
        self.heartbeat = HeartbeatSupervisor(
            init, self.local, self.record, self.started_mono, on_snapshot=self._snapshot
        )
        self.modules = ModuleManager(
            paths=self.paths,
            cluster=self.cluster,
            local=self.local,
            vips=NetlinkVips(),
            scripts=ProcessScriptRunner(),
            record=self.record,
            publish=self.heartbeat.publish,
            hold=lambda vips: self.heartbeat.hold([asdict(v) for v in vips]),
            machine_boot=machine_boot(),
        )
        self.join = JoinService(self.paths, lambda: self.cluster, self.local, self.record)

    def _snapshot(self, snap: dict[str, Any]) -> None:
        self.modules.snapshot(snap)

    def record(self, ev: Event) -> None:
        self.timeline.record(ev)
        if ev.peer and ev.kind == "peer-lost":
            self.modules.membership_event(ev.peer, ev.message)

    async def run(self) -> None:
        cfg = self.cluster.config
        self.record(
            Event(
                time.time(),
                self.local,
                "daemon-start",
                f"hakit {__version__} started as node {self.local} ({self.identity_reason}) of "
                f"cluster {cfg.cluster}: {len(cfg.nodes)} nodes, networks "
                f"{', '.join(cfg.networks_of(self.local))}; heartbeat every "
                f"{cfg.heartbeat.interval:g} s, peer lost after {cfg.heartbeat.timeout:g} s",
            )
        )
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.heartbeat.run())
            modules = tg.create_task(self._run_modules())
            join = tg.create_task(self.join.run())
            lag = tg.create_task(self._watch_loop())
            await self._stopping.wait()
            join.cancel()
            lag.cancel()
            await self.modules.shutdown(SHUTDOWN_TIMEOUT)
            modules.cancel()
            self.heartbeat.stop()

    async def _watch_loop(self) -> None:
        """How late the loop wakes a task that sleeps `LAG_PERIOD` (`hakit_event_loop_lag`)."""
        while True:
            t0 = time.monotonic()
            await asyncio.sleep(LAG_PERIOD)
            self.loop_lag.add(max(0.0, time.monotonic() - t0 - LAG_PERIOD))

    async def _run_modules(self) -> None:
        """Modules start once heartbeats are received on at least one network: a node whose
        heartbeat ports are all taken cannot hear its peers and must not decide they are dead."""
        await self.heartbeat.view.listening.wait()
        await self.modules.run()

    def stop(self) -> None:
        """Begin an orderly stop: modules first (their peers take over), then heartbeats."""
        self.record(Event(time.time(), self.local, "daemon-stop", "hakit daemon stopping"))
        self._stopping.set()

    # --- StatusSource ----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        daemon = {
            "version": __version__,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "boot": self.boot.hex(),
            "config": str(self.cluster.path),
            "heartbeat_pid": self.heartbeat.view.pid,
            "heartbeat_scheduling": self.heartbeat.view.scheduling,
            "heartbeat_restarts": self.heartbeat.view.restarts,
            "loop_lag": self.loop_lag.snapshot(),
            "config_pending_restart": list(self.pending_restart),
        }
        st = build_status(self.cluster.config, self.local, self.heartbeat.view.snapshot, daemon)
        st["modules"] = self.modules.status()
        st["capacity"] = self.modules.capacity.to_json()
        return st

    def events(self, limit: int, module: str | None = None) -> list[dict[str, Any]]:
        return [e.to_json() for e in self.timeline.recent(limit, module)]

    def events_after(self, seq: int) -> tuple[int, list[dict[str, Any]]]:
        last, new = self.timeline.after(seq)
        return last, [e.to_json() for e in new]

    async def install(self, package: bytes, name: str, force: bool) -> tuple[bool | None, str]:
        if force and name in self.modules.entries and not self.modules.entries[name].runner.stopped:
            raise HakitError(f"module {name} is running on {self.local}: stop it first")
        # unpacking and validating a package is bounded but not instant: never on the loop
        mf = await asyncio.to_thread(install_bytes, self.paths, package, name, force)
        self.record(
            Event(time.time(), self.local, "module-installed", f"{name}: installed", module=name)
        )
        loaded = await self.modules.load_now(mf.name)
        if loaded is None:
            return None, (
                f"module {mf.name} installed on {self.local}; it is loaded once this daemon's "
                "heartbeats run (see `hakit state`)"
            )
        return loaded.ok, f"module {mf.name} installed on {self.local}, {loaded.message}"

    def uninstall(self, name: str) -> str:
        e = self.modules.entries.get(name)
        if e is not None and not e.runner.stopped:
            raise HakitError(f"module {name} is running on {self.local}: `hakit stop {name}` first")
        uninstall(self.paths, name)
        self.record(
            Event(
                time.time(), self.local, "module-uninstalled", f"{name}: uninstalled", module=name
            )
        )
        return f"module {name} uninstalled from {self.local}"

    # --- the cluster configuration -------------------------------------------------------

    def cluster_config(self) -> dict[str, Any]:
        return {
            "node": self.local,
            "config": self.cluster.config.model_dump(mode="json"),
            "pending_restart": list(self.pending_restart),
            "joining": self.join.joining(),
        }

    def check_cluster(self, text: str) -> dict[str, Any]:
        return check_candidate(self.paths, self.cluster, self.local, text).to_json()

    async def apply_cluster(self, text: str) -> dict[str, Any]:
        """Check `text`; if it passes, write it as cluster.yaml and take it (live if it can).
        One at a time: each is checked against what the previous one left."""
        async with self._applying:
            cand = await asyncio.to_thread(
                check_candidate, self.paths, self.cluster, self.local, text
            )
            out = cand.to_json()
            if not cand.ok:
                out["applied"] = False
                return out
            await asyncio.to_thread(write_config, self.paths.cluster_config, text)
            out["applied"] = True
            out["message"] = self._take(cand)
            return out

    def reload(self) -> None:
        """SIGHUP (`systemctl reload hakit`): take cluster.yaml as it is on disk now."""
        path = self.paths.cluster_config
        try:
            text = read_text(path)
        except ConfigError as e:
            self.record(Event(time.time(), self.local, "config-error", f"not reloaded: {e}"))
            return
        cand = check_candidate(self.paths, self.cluster, self.local, text)
        if not cand.ok:
            self.record(
                Event(
                    time.time(),
                    self.local,
                    "config-error",
                    f"{path} not reloaded, the daemon keeps its configuration:\n"
                    + "\n".join(cand.problems),
                )
            )
            return
        self._take(cand)

    def _take(self, cand: Candidate) -> str:
        change, cf = cand.change, cand.cluster
        assert change is not None
        assert cf is not None
        if change.empty:
            self.pending_restart = ()
            return "no change"
        if not change.live:
            self.pending_restart = change.restart
            message = (
                f"written; takes {', '.join(change.restart)} when its daemon restarts (which "
                "stops its modules: their peers take over; one node at a time)"
            )
            self.record(
                Event(
                    time.time(),
                    self.local,
                    "config-pending",
                    f"cluster.yaml written ({change.summary()}): {message}",
                )
            )
            return message
        self.cluster = cf
        self.modules.cluster = cf
        self.heartbeat.reconfigure(heartbeat_peers(cf.config, self.local))
        self.pending_restart = ()
        nodes = cf.config.nodes
        self.record(
            Event(
                time.time(),
                self.local,
                "config-applied",
                f"cluster configuration applied live ({change.summary()}): {len(nodes)} "
                f"node(s), {', '.join(nodes)}; modules kept running",
            )
        )
        return f"applied live ({change.summary()}); modules kept running"

    def issue_join_token(self, node: str, ttl: float) -> dict[str, Any]:
        return self.join.issue(node, ttl)

    async def command(self, module: str, command: str) -> tuple[bool, str]:
        answer = await self.modules.command(module, Cmd(command))
        return isinstance(answer, Accepted), answer.message

    async def switch_checker(self, module: str, checker: str | None, on: bool) -> str:
        try:
            return await self.modules.runner(module).switch_checker(checker, on)
        except KeyError as e:
            raise UnknownChecker(str(e.args[0])) from None

    async def verify(self, module: str) -> dict[str, Any]:
        runner = self.modules.runner(module)
        if runner.replication is None:
            return {"ok": False, "error": f"module {module} replicates no directory"}
        return await runner.replication.verify()


BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def machine_boot() -> str:
    """This machine's boot id (new at every start of the kernel); empty if unreadable, and then
    no module sees the machine as restarted (they resume what was running)."""
    try:
        return BOOT_ID.read_text().strip()[:64]
    except OSError:
        return ""
