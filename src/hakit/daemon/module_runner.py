"""What every module runner shares: the daemon's environment, scripts, timeline lines, VIPs.

A runner (`MirrorRunner`, `FarmRunner`) feeds one module's pure state machine and carries out
its actions on this node. The pieces here do not depend on the kind of module: running the
module's scripts (a graceful call, then a forced one), the one-line timeline entries, the
module's folders, its VIPs resolved on this node, and the emergency release of its VIPs.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from hakit.adapters.farm import FarmPathPort, NftFarmPath
from hakit.adapters.probes import ProbeContext, ProbePort, RealProbes
from hakit.adapters.scripts import ScriptResult, ScriptRunner
from hakit.adapters.vip import Probe, Vip, VipError, VipPort, release_all
from hakit.adapters.witness import WitnessClient, WitnessPort
from hakit.config.module import ModuleFile
from hakit.config.vips import VirtualIp
from hakit.core import boot
from hakit.core import checks as ck
from hakit.daemon.checkers import CheckerSet, effective_checkers
from hakit.daemon.logs import Event
from hakit.paths import Paths


@dataclass
class Environment:
    """What the runner needs from the daemon (ports and callbacks)."""

    paths: Paths
    cluster: str
    local: str
    local_addresses: dict[str, str]  # network -> this node's address
    vips: VipPort
    scripts: ScriptRunner
    record: Callable[[Event], None]
    published: Callable[[], None]  # our heartbeat payload changed
    holding: Callable[[], None]  # the set of VIPs we hold changed
    peer_wait: float = 30.0  # longest wait for the first news of the peers (timeout + margin)
    node_addresses: dict[str, dict[str, str]] = field(default_factory=dict)  # node -> net -> ip
    heartbeat_timeout: float = 1.0
    heartbeat_interval: float = 0.2
    now: Callable[[], float] = time.time
    farm_path: FarmPathPort = field(default_factory=NftFarmPath)
    probes: ProbePort = field(default_factory=RealProbes)
    cluster_secret: bytes = b""
    # (cluster, node, secret, addresses) -> the witness client of a mirror module
    witness_client: Callable[[str, str, bytes, list[tuple[str, int]]], WitnessPort] = WitnessClient
    # the etcd witness of this node (cluster.yaml's `etcd:`), shared by its modules; None: none
    etcd_client: Callable[[], WitnessPort] | None = None
    # module -> {node: (state, status)} as this node knows it (module checkers); None: unknown
    module_states: Callable[[str], dict[str, tuple[str, str]] | None] = lambda _: None
    machine_boot: str = ""  # this machine's boot id (empty: unknown, never seen as restarted)


def vips_here(vips: tuple[VirtualIp, ...], local_addresses: dict[str, str]) -> list[Vip]:
    """The module's VIPs, placed on this node's interfaces (by network or by name)."""
    return [
        Vip(
            address=str(v.address.ip),
            prefixlen=v.address.network.prefixlen,
            interface=v.interface,
            local_address=local_addresses.get(v.network) if v.network else None,
        )
        for v in vips
    ]


def vip_probes(
    vips: tuple[VirtualIp, ...], here: list[Vip], node_addresses: dict[str, dict[str, str]]
) -> dict[Vip, Probe]:
    """How to probe each VIP placed here (`vips_here`): its settings, the peers' addresses."""
    peers = tuple(a for nets in node_addresses.values() for a in nets.values())
    return {
        vip: Probe(v.probe.count, v.probe.interval, peers)
        for v, vip in zip(vips, here, strict=True)
    }


@dataclass
class ModuleRunner:
    module: ModuleFile
    env: Environment
    ready: bool = field(init=False, default=False)  # published (initial reconciliation done)
    held: list[Vip] = field(init=False, default_factory=list)
    cause: str = field(init=False, default="start")  # scripts' third argument, transitions
    shutting_down: bool = field(init=False, default=False)  # keep "run" for the next daemon
    # the metrics' counters since this daemon started: "failovers"/"restarts" -> reason -> n
    counts: dict[str, Counter[str]] = field(init=False, default_factory=dict)

    START_SCRIPTS: ClassVar[tuple[str, ...]] = ()
    SERVICE_STEPS: ClassVar[tuple[tuple[str, str], ...]] = ()  # (script, what services do)

    def __post_init__(self) -> None:
        self.name = self.module.name
        self.var = self.env.paths.var / "modules" / self.name
        self.log_dir = self.env.paths.log / "modules" / self.name
        self.state_path = self.var / "state.json"
        self.var.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.vip_list = vips_here(self.module.config.vips, self.env.local_addresses)
        peers = {n: a for n, a in self.env.node_addresses.items() if n != self.env.local}
        self.vip_probes = vip_probes(self.module.config.vips, self.vip_list, peers)
        self._transitions = asyncio.Lock()
        cfg = self.module.config
        self.checks = CheckerSet(
            module=self.name,
            kind=cfg.kind,
            configs=effective_checkers(cfg.kind, cfg.checkers, bool(self.vip_list), cfg.services),
            recovery=cfg.recovery,
            probes=self.env.probes,
            context=self._probe_context,
            state_path=self.var / "checkers.json",
            record=self._record,
            on_recover=self.checker_recover,
            on_holds=self.checker_holds,
            on_ready=self.checker_ready,
            now=self.env.now,
        )

    @property
    def stopped(self) -> bool:
        raise NotImplementedError

    def count(self, what: str, reason: str) -> None:
        self.counts.setdefault(what, Counter())[reason] += 1

    def at_daemon_start(self, saved: dict[str, Any]) -> boot.AtStart:
        """Whether to start now: the `boot` policy, given the state a previous daemon saved
        (was it running, on which boot of this machine)."""
        before = saved.get("machine_boot")
        rebooted = (
            bool(self.env.machine_boot)
            and isinstance(before, str)
            and (before != self.env.machine_boot)
        )
        return boot.at_start(self.module.config.boot, rebooted, bool(saved.get("run", False)))

    async def wait_stopped(self, limit: float) -> bool:
        deadline = time.monotonic() + limit
        while not self.stopped:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.1)
        return True

    # --- checkers --------------------------------------------------------------------------------

    def checker_recover(self, r: ck.Recover) -> None:
        """A checker asks for a recovery: an event of this kind's machine."""
        raise NotImplementedError

    def checker_holds(self, reasons: tuple[str, ...]) -> None:
        raise NotImplementedError

    def checker_ready(self, ok: bool, detail: str) -> None:
        """Whether the checkers guarding the application pass (farm membership)."""

    def _probe_context(self) -> ProbeContext:
        return ProbeContext(
            bin_dir=self.module.bin,
            env=self.script_env("checker", "", "", "check"),
            missing_vips=self._missing_vips,
            module_states=self.env.module_states,
            log_dir=self.log_dir,
        )

    def _missing_vips(self) -> list[str]:
        return [str(v) for v in self.vip_list if not self._present(v)]

    async def switch_checker(self, name: str | None, on: bool) -> str:
        """Maintenance switch (`hakit checker on|off`); KeyError for an unknown checker."""
        message = self.checks.switch(name, on)
        self._record(message, "info" if on else "warning")
        return message

    # --- timeline --------------------------------------------------------------------------------

    def _record(self, message: str, level: str = "info") -> None:
        kind = {"info": "module", "warning": "module-warning", "error": "module-error"}[level]
        self.env.record(Event(self.env.now(), self.env.local, kind, message, module=self.name))

    def _note(self, message: str) -> None:
        self._record(f"{self.name}: {message}")

    # --- VIPs ------------------------------------------------------------------------------------

    def release_vips(self) -> list[str]:
        """Emergency: drop every VIP of this module, say what happened (never raises)."""
        self.held.clear()
        return release_all(self.vip_list)

    def _present(self, v: Vip) -> bool:
        try:
            return self.env.vips.present(v)
        except VipError:
            return False

    def _holds(self, v: Vip, held: bool) -> None:
        if held and v not in self.held:
            self.held.append(v)
            self.env.holding()
        elif not held and v in self.held:
            self.held.remove(v)
            self.env.holding()

    async def _remove_vip(self, v: Vip) -> None:
        try:
            removed = await asyncio.to_thread(self.env.vips.remove, v)
        except VipError as e:
            self._record(f"{self.name}: could not remove VIP {v}: {e}", "error")
            return
        self._holds(v, False)
        if removed:
            self._note(f"VIP {v} removed")

    # --- scripts ---------------------------------------------------------------------------------

    def script_env(self, script: str, state: str, next_state: str, action: str) -> dict[str, str]:
        env = {
            "HAKIT_CLUSTER": self.env.cluster,
            "HAKIT_MODULE": self.name,
            "HAKIT_NODE": self.env.local,
            "HAKIT_MODULE_DIR": str(self.module.dir),
            "HAKIT_MODULE_BIN": str(self.module.bin),
            "HAKIT_MODULE_VAR": str(self.var),
            "HAKIT_MODULE_LOG": str(self.log_dir),
            "HAKIT_SCRIPT": script,
            "HAKIT_STATE": state,
            "HAKIT_NEXT_STATE": next_state,
            "HAKIT_ACTION": action,
            "HAKIT_VIPS": " ".join(str(v) for v in self.vip_list),
        }
        return {**self.module.config.variables, **env, **self.kind_env()}

    def kind_env(self) -> dict[str, str]:
        """Variables of this kind of module (HAKIT_PEER, HAKIT_NODES…)."""
        return {}

    async def _script(self, name: str, state: str, next_state: str, action: str) -> ScriptResult:
        """Run script `name` and the module's `services:` with it: started after a start
        script that succeeded, stopped before a stop script, switched off at boot before
        `prestart` (SERVICE_STEPS)."""
        step = dict(self.SERVICE_STEPS).get(name) if self.module.config.services else None
        if step in ("stop", "disable"):
            r = await self._run(name, state, next_state, action, services=step)
            if not r.ok:
                return r
        r = await self._run(name, state, next_state, action)
        if step == "start" and r.ok:
            return await self._run(name, state, next_state, action, services=step)
        return r

    async def _run(
        self, name: str, state: str, next_state: str, action: str, services: str | None = None
    ) -> ScriptResult:
        """One script of `bin/`, or (`services`: start, stop, disable) `hakit service` on the
        module's services, as a script of its own (bounded, logged, in the timeline)."""
        cfg = self.module.config.scripts
        timeout = cfg.start_timeout if name in self.START_SCRIPTS else cfg.stop_timeout
        self.var.mkdir(parents=True, exist_ok=True)
        program, args = self.module.bin / name, [state, next_state, action]
        if services is not None:
            force = ["--force"] if services == "stop" and action == "force" else []
            program = Path(sys.executable)
            args = ["-m", "hakit", "service", services, *force, *self.module.config.services]
            name = f"{name}-services"
        r = await self.env.scripts.run(
            name,
            program,
            args,
            self.script_env(name, state, next_state, action),
            timeout,
            self.log_dir / "scripts",
        )
        if not r.missing:
            self._record(f"{self.name}: {r.reason}", "info" if r.ok else "error")
        return r

    async def _stop_script(
        self, name: str, state: str, next_state: str, action: str, *, force_only: bool = False
    ) -> tuple[bool, str]:
        """A graceful call, then a forced one if it failed or timed out (or the forced one only)."""
        if not force_only:
            r = await self._script(name, state, next_state, action)
            if r.ok:
                return True, r.reason
        r = await self._script(name, state, next_state, "force")
        return r.ok, r.reason

    async def _transition(self, old: str, new: str) -> None:
        async with self._transitions:
            await self._script("transition", old, new, self.cause)
