"""The modules of this node: found in $HAKIT_ETC/modules, one runner each, side by side.

The manager rescans the modules folder every second: a newly installed module gets its runner
(and starts if it was running before), a removed one is stopped and dropped, a changed
`module.yaml` is reloaded when the module is stopped. Other modules are never disturbed.
It also turns heartbeat snapshots into each module's view of its peer, and gathers every
module's state into the payload of our heartbeats.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hakit.adapters.etcd_witness import EtcdAccess, EtcdWitness
from hakit.adapters.movers import CloudVips, movers_for
from hakit.adapters.scripts import ScriptRunner
from hakit.adapters.vip import Vip, VipPort
from hakit.adapters.witness import WitnessClient, WitnessPort
from hakit.config.load import ClusterFile, etcd_file
from hakit.config.module import MODULE_FILE, MODULE_NAME, FarmModule, load_module
from hakit.core import mirror as mm
from hakit.core.capacity import Capacity, observe
from hakit.core.outcomes import Accepted, Refused
from hakit.daemon.farm_runner import FarmRunner
from hakit.daemon.logs import LOGGER, Event
from hakit.daemon.mirror_runner import MirrorRunner
from hakit.daemon.module_runner import Environment
from hakit.daemon.status import heard_modules
from hakit.errors import ConfigError, HakitError
from hakit.paths import Paths

log = logging.getLogger(LOGGER + ".modules")

RESCAN_EVERY = 1.0


class UnknownModule(HakitError):
    exit_code = 4


Runner = MirrorRunner | FarmRunner


@dataclass
class Entry:
    runner: Runner
    task: asyncio.Task[None]
    mtime: float
    stale_config: bool = False


@dataclass(frozen=True)
class Elsewhere:
    """A module installed on this node that runs on other nodes only."""

    mtime: float
    kind: str
    nodes: tuple[str, ...]


@dataclass(frozen=True)
class Loaded:
    """Where an installed module stands on this node right after it was (re)scanned."""

    ok: bool  # loaded as its configuration says: running here, or not one of its nodes
    message: str


@dataclass
class ModuleManager:
    paths: Paths
    cluster: ClusterFile
    local: str
    vips: VipPort
    scripts: ScriptRunner
    record: Callable[[Event], None]
    publish: Callable[[bytes], None]  # new heartbeat payload
    hold: Callable[[list[Vip]], None]  # VIPs to release if the daemon dies
    machine_boot: str = ""  # this machine's boot id: the modules' `boot` policy
    entries: dict[str, Entry] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)  # module -> configuration error
    crashed: dict[str, float] = field(default_factory=dict)  # module -> mtime when it crashed
    elsewhere: dict[str, Elsewhere] = field(default_factory=dict)  # installed, runs elsewhere
    peers: dict[str, Any] = field(default_factory=dict)  # the latest heartbeat snapshot's
    _why: dict[str, str] = field(default_factory=dict)  # peer -> last membership sentence
    _witnesses: dict[tuple[tuple[str, int], ...], WitnessPort] = field(default_factory=dict)
    _etcd: EtcdWitness | None = None
    _scanning: asyncio.Lock = field(default_factory=asyncio.Lock)
    _running: bool = False
    capacity: Capacity = field(default_factory=lambda: Capacity(None))

    def _env(self, vips: VipPort) -> Environment:
        """The runner's environment; `vips`: the module's VIP port (with its cloud movers)."""
        cfg = self.cluster.config
        return Environment(
            paths=self.paths,
            cluster=cfg.cluster,
            local=self.local,
            local_addresses={n: str(a) for n, a in cfg.nodes[self.local].addresses.items()},
            vips=vips,
            scripts=self.scripts,
            record=self.record,
            published=self._published,
            holding=self._holding,
            peer_wait=cfg.heartbeat.timeout + 5.0,
            node_addresses={
                n: {net: str(a) for net, a in spec.addresses.items()}
                for n, spec in cfg.nodes.items()
            },
            heartbeat_timeout=cfg.heartbeat.timeout,
            heartbeat_interval=cfg.heartbeat.interval,
            module_states=self.module_states,
            cluster_secret=self.cluster.secret,
            witness_client=self._witness_client,
            etcd_client=self._etcd_client if cfg.etcd is not None else None,
            machine_boot=self.machine_boot,
        )

    def _etcd_client(self) -> WitnessPort:
        """One etcd witness (one etcd lease per module, one HTTPS connection per member) for
        every module of this daemon that uses the cluster's etcd."""
        if self._etcd is None:
            cfg = self.cluster.config
            assert cfg.etcd is not None
            folder = self.cluster.path.parent
            access = EtcdAccess(
                cfg.etcd.endpoints,
                etcd_file(cfg, folder, "ca"),
                etcd_file(cfg, folder, "cert"),
                etcd_file(cfg, folder, "key"),
                cfg.etcd_prefix,
            )
            self._etcd = EtcdWitness(cfg.cluster, self.local, access)
        return self._etcd

    def _witness_client(
        self, cluster: str, node: str, secret: bytes, addresses: list[tuple[str, int]]
    ) -> WitnessPort:
        """One client (one boot id, one sequence) per witness for every module of this daemon:
        the witness refuses requests from an older boot of a node, so two clients of one node
        would keep refusing each other."""
        key = tuple(sorted(addresses))
        client = self._witnesses.get(key)
        if client is None:
            client = self._witnesses[key] = WitnessClient(cluster, node, secret, addresses)
        return client

    # --- the module folder ---------------------------------------------------------------------

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            self._running = True
            try:
                while True:
                    await self.rescan()
                    self.check_capacity()
                    await asyncio.sleep(RESCAN_EVERY)
            finally:
                self._running = False

    async def rescan(self) -> None:
        """Scan the modules folder now (also between the periodic scans: right after an
        install, so that the install returns with the module loaded)."""
        async with self._scanning:
            try:
                await self._rescan()
            except Exception:  # e.g. the modules folder unreadable: retried, never fatal
                log.exception("scanning %s failed", self.paths.modules)

    async def load_now(self, name: str) -> Loaded | None:
        """Rescan, then say how `name` stands; None while modules are not started yet (the
        daemon starts them once its heartbeats run)."""
        if not self._running:
            return None
        await self.rescan()
        if name in self.entries:
            cfg = self.entries[name].runner.module.config
            return Loaded(True, f"loaded ({cfg.kind} on {' and '.join(cfg.nodes)})")
        if name in self.broken:
            return Loaded(False, f"NOT loaded: {self.broken[name]}")
        if name in self.elsewhere:
            nodes = " and ".join(self.elsewhere[name].nodes)
            return Loaded(True, f"not one of its nodes ({nodes}): kept for the cluster view")
        return Loaded(False, "NOT loaded: not found in the modules folder")

    def _found(self) -> dict[str, float]:
        out: dict[str, float] = {}
        root = self.paths.modules
        if not root.is_dir():
            return out
        for d in sorted(root.iterdir()):
            f = d / MODULE_FILE
            if d.is_dir() and MODULE_NAME.match(d.name) and f.is_file():
                out[d.name] = f.stat().st_mtime
        return out

    async def _rescan(self) -> None:
        found = self._found()
        for name in list(self.entries):
            if name not in found:
                await self._drop(name, "module removed from " + str(self.paths.modules))
        for name, mtime in found.items():
            e = self.entries.get(name)
            if e is None:
                away = self.elsewhere.get(name)
                if self.crashed.get(name) == mtime or (away is not None and away.mtime == mtime):
                    continue  # crashed, or not for this node: until its configuration changes
                self._load(name, mtime)
            elif mtime != e.mtime:
                if e.runner.stopped:
                    await self._drop(name, "module.yaml changed: reloading")
                    self._load(name, mtime)
                elif not e.stale_config:
                    e.stale_config = True
                    self._event(
                        name,
                        "module-warning",
                        f"{name}: module.yaml changed while the module runs; it applies at the "
                        f"next `hakit stop {name}` / `hakit start {name}`",
                    )
        for name in list(self.broken):
            if name not in found:
                del self.broken[name]
                self.crashed.pop(name, None)
        for name in list(self.elsewhere):
            if name not in found:
                del self.elsewhere[name]

    def _load(self, name: str, mtime: float) -> None:
        try:
            mf = load_module(self.paths.modules / name, self.cluster.config)
        except Exception as e:  # one broken module never takes the daemon down
            if not isinstance(e, ConfigError):
                log.exception("module %s: loading failed", name)
            msg = str(e) if isinstance(e, ConfigError) else f"internal error while loading: {e!r}"
            if self.broken.get(name) != msg:
                self.broken[name] = msg
                self._event(
                    name, "module-error", f"{name}: not loaded, invalid configuration:\n{msg}"
                )
            return
        self.broken.pop(name, None)
        if self.local not in mf.config.nodes:
            self.elsewhere[name] = Elsewhere(mtime, mf.config.kind, tuple(mf.config.nodes))
            return
        self.elsewhere.pop(name, None)
        runner: Runner
        try:
            if isinstance(mf.config, FarmModule):
                runner = FarmRunner(mf, self._env(self.vips))
            else:
                movers = movers_for(mf.config.vips, self.local)
                vips = CloudVips(self.vips, movers) if movers else self.vips
                runner = MirrorRunner(mf, self._env(vips))
        except Exception as e:  # e.g. a damaged state file: this module only is in error
            log.exception("module %s cannot start", name)
            self.crashed[name] = mtime  # until its configuration changes
            self.broken[name] = str(e) if isinstance(e, HakitError) else f"internal error: {e!r}"
            self._event(name, "module-error", f"{name}: not loaded:\n{self.broken[name]}")
            return
        task = self._tg.create_task(self._guard(name, runner), name=f"module {name}")
        self.entries[name] = Entry(runner, task, mtime)
        self._event(
            name,
            "module-loaded",
            f"{name}: {mf.config.kind} module loaded ({' / '.join(mf.config.nodes)})",
        )

    async def _guard(self, name: str, runner: Runner) -> None:
        """A failing module must not take the daemon or the other modules down with it."""
        try:
            await runner.run()
        except Exception as e:
            log.exception("module %s failed", name)
            try:
                released = await asyncio.to_thread(runner.release_vips)
            except Exception as r:
                log.exception("module %s: releasing its VIPs failed", name)
                released = [f"releasing them failed: {r!r}"]
            entry = self.entries.pop(name, None)
            self.crashed[name] = entry.mtime if entry else 0.0
            self.broken[name] = f"internal error: {e!r}"
            self._event(
                name,
                "module-error",
                f"{name}: INTERNAL ERROR, module dropped on this node ({e!r}); VIPs released "
                f"({'; '.join(released) or 'none held'}); the peer may take over. The "
                "application may still run here: check it, then restart the daemon.",
            )
            self._published()
            self._holding()

    async def _drop(self, name: str, why: str) -> None:
        e = self.entries[name]
        if not e.runner.stopped:
            self._event(name, "module-warning", f"{name}: {why} while running: stopping it first")
            await e.runner.command(mm.Cmd.STOP)
            await e.runner.wait_stopped(600.0)
        e.task.cancel()
        del self.entries[name]
        self._event(name, "module-unloaded", f"{name}: {why}")
        self._published()
        self._holding()

    def check_capacity(self) -> None:
        """Warn in the timeline when this node runs more primaries than its `max_primaries`."""
        primaries = tuple(
            n
            for n, e in self.entries.items()
            if isinstance(e.runner, MirrorRunner)
            and e.runner.machine.display()[0] in ("ALONE", "PRIM")
        )
        limit = self.cluster.config.nodes[self.local].max_primaries
        self.capacity, say = observe(self.capacity, self.local, primaries, limit)
        if say is not None:
            level, message = say
            kind = "capacity-warning" if level == "warning" else "capacity"
            self.record(Event(time.time(), self.local, kind, message))

    def _event(self, module: str, kind: str, message: str) -> None:
        self.record(Event(time.time(), self.local, kind, message, module=module))

    # --- heartbeats in and out -----------------------------------------------------------------

    def _published(self) -> None:
        mods = {n: e.runner.wire() for n, e in self.entries.items() if e.runner.ready}
        self.publish(json.dumps({"v": 1, "m": mods}, separators=(",", ":")).encode())

    def _holding(self) -> None:
        self.hold([v for e in self.entries.values() for v in e.runner.held])

    def membership_event(self, peer: str, message: str) -> None:
        self._why[peer] = message

    def snapshot(self, snap: dict[str, Any]) -> None:
        """A heartbeat snapshot: give every module its (possibly new) view of its peers."""
        peers = snap.get("peers", {})
        self.peers = peers
        for e in self.entries.values():
            e.runner.heard(peers, self._why)

    # --- queries and commands ------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Every module this node knows of: those it runs (in full), those installed here in
        error, and those run by other nodes only (as their heartbeats say: the cluster view)."""
        out: dict[str, Any] = {}
        here = self.cluster.config.nodes[self.local].addresses
        for n, e in self.entries.items():
            hp = e.runner.module.config.health_probe
            probe = None
            if hp is not None:
                probe = {"port": hp.port, "bind": list(hp.addresses(here)), "path": hp.path}
            counters = {k: dict(v) for k, v in e.runner.counts.items()}
            out[n] = e.runner.status() | {"health_probe": probe, "counters": counters}
        for name, err in self.broken.items():
            out[name] = {"kind": self._kind(name), "nodes": {}, "error": err}
        installed = {n: (e.kind, e.nodes) for n, e in self.elsewhere.items()}
        for name, mod in heard_modules(self.peers, installed, set(out)).items():
            out[name] = mod
        return out

    def _kind(self, name: str) -> str:
        try:
            text = (self.paths.modules / name / MODULE_FILE).read_text()
        except OSError:
            return "mirror"
        farm = any(ln.split("#")[0].strip() == "kind: farm" for ln in text.splitlines())
        return "farm" if farm else "mirror"

    def module_states(self, name: str) -> dict[str, tuple[str, str]] | None:
        """Each node's (state, status) of a module installed here, as this node knows it."""
        e = self.entries.get(name)
        if e is None:
            return None
        nodes = e.runner.status()["nodes"]
        return {n: (str(v.get("state")), str(v.get("status"))) for n, v in nodes.items()}

    def runner(self, name: str) -> Runner:
        e = self.entries.get(name)
        if e is None:
            if name in self.broken:
                raise UnknownModule(f"module {name} is not loaded: {self.broken[name]}")
            raise UnknownModule(
                f"no module {name!r} on {self.local}; installed: "
                + (", ".join(self.entries) or "none")
                + " (`hakit module list`)"
            )
        return e.runner

    async def shutdown(self, limit: float) -> None:
        """Stop every running module (bounded by `limit` s), remembering to resume them."""
        for e in self.entries.values():
            await e.runner.shutdown()
        deadline = time.monotonic() + limit
        for e in self.entries.values():
            if not await e.runner.wait_stopped(max(0.0, deadline - time.monotonic())):
                break
        else:
            return
        self._event("", "module-error", f"modules still not stopped after {limit:g} s")

    async def command(self, name: str, cmd: mm.Cmd) -> Accepted | Refused:
        return await self.runner(name).command(cmd)
