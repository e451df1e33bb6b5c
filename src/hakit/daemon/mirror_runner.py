"""Runs one mirror module on this node: feeds its state machine, carries out its actions.

Events (operator commands, what the peer publishes, completions of operations) are handled one
at a time, in order. Actions are executed in the order the machine gives them: state is
persisted (fsync'd) before an operation starts, so a new data generation is on disk before the
application runs as primary. At most one operation (scripts, VIPs) runs at a time; its
completion comes back as an event.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from hakit.adapters.probes import ping
from hakit.adapters.scripts import ScriptResult
from hakit.adapters.statefile import read_json, write_json
from hakit.adapters.vip import Vip, VipError
from hakit.adapters.witness import WitnessPort
from hakit.config.module import MirrorModule, SplitBrain
from hakit.core import checks as ck
from hakit.core import mirror as mm
from hakit.core.outcomes import Accepted, Explain, Refused
from hakit.daemon.arbiter import Arbitration
from hakit.daemon.logs import LOGGER
from hakit.daemon.module_runner import ModuleRunner
from hakit.daemon.replication_link import ReplicationLink, kill_leftover
from hakit.paths import Paths
from hakit.replication.stream import export_identity
from hakit.tls import identity
from hakit.wire.heartbeat import module_payload

log = logging.getLogger(LOGGER + ".mirror")

ROLE = {
    mm.Phase.STOPPED: ck.Role.STOPPED,
    mm.Phase.ALONE: ck.Role.PRIMARY,
    mm.Phase.PRIM: ck.Role.PRIMARY,
    mm.Phase.SECOND: ck.Role.SECONDARY,
}
"""The checkers' view of a mirror phase (any other phase: started, no steady role)."""


@dataclass
class Pending:
    event: mm.Event
    answer: asyncio.Future[Accepted | Refused] | None = None


@dataclass
class MirrorRunner(ModuleRunner):
    machine: mm.Mirror = field(init=False)
    run_flag: bool = field(init=False, default=False)

    START_SCRIPTS = ("prestart", "start_prim", "start_second", "transition")
    SERVICE_STEPS = (("start_prim", "start"), ("stop_prim", "stop"), ("prestart", "disable"))

    def __post_init__(self) -> None:
        super().__post_init__()
        cfg = self.module.config
        assert isinstance(cfg, MirrorModule)
        self.cfg = cfg
        saved = read_json(self.state_path) or {}
        data = mm.Data(**_data_fields(saved.get("data", {})))
        self.machine = mm.Mirror(
            module=self.name,
            local=self.env.local,
            peer_name=cfg.peer_of(self.env.local),
            default_primary=cfg.default_primary,
            failback_delay=cfg.failback_delay,
            data=data,
            failover=bool(saved.get("failover", cfg.failover)),
        )
        self.run_flag = bool(saved.get("run", False))
        self.boot_start = self.at_daemon_start(saved)
        self.saved_phase = str(saved.get("phase", "stopped"))
        sb = cfg.split_brain
        fence = self.module.bin / "fence"
        self.arbitration = Arbitration(
            module=self.name,
            cfg=sb,
            witness=self._witness(sb),
            ping=ping,
            fence=self._fence if fence.is_file() and os.access(fence, os.X_OK) else None,
            machine=lambda: self.machine,
            post=self._arbiter_said,
            clock=self.env.now,
        )
        self.machine = replace(
            self.machine,
            keep=sb.keep,
            arbitrated=self.arbitration.configured,
            exclusive=self.arbitration.exclusive,
        )
        self.replication = Replication(self) if cfg.replication is not None else None
        self.queue: asyncio.Queue[Pending] = asyncio.Queue()
        self._peer_known = asyncio.Event()
        self._latest_peer: mm.PeerChanged | None = None
        self._last_peer: mm.PeerInfo | None = None
        self._heard_at = 0.0  # when the peer was last heard on a heartbeat network

    def _witness(self, sb: SplitBrain) -> WitnessPort | None:
        """The lease's port: a hakit witness, or the cluster's etcd (checked at load time)."""
        if sb.witness is not None:
            return self.env.witness_client(
                self.env.cluster,
                self.env.local,
                self.env.cluster_secret,
                [(str(a), sb.witness.port) for a in sb.witness.addresses],
            )
        if sb.etcd is not None and self.env.etcd_client is not None:
            return self.env.etcd_client()
        return None

    # --- interface for the daemon ------------------------------------------------------------

    async def command(self, cmd: mm.Cmd) -> Accepted | Refused:
        fut: asyncio.Future[Accepted | Refused] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait(Pending(mm.Command(cmd), fut))
        return await fut

    @property
    def stopped(self) -> bool:
        return self.machine.phase is mm.Phase.STOPPED

    async def shutdown(self) -> None:
        """The daemon stops: stop the module (peer takes over) but resume it at next start."""
        self.shutting_down = self.machine.phase is not mm.Phase.STOPPED
        if self.shutting_down:
            await self.command(mm.Cmd.STOP)

    def heard(self, peers: dict[str, Any], why: dict[str, str]) -> None:
        """A heartbeat snapshot: the peer's (possibly new) state, if it changed."""
        cfg = self.cfg
        peer = cfg.peer_of(self.env.local)
        p = peers.get(peer)
        if p is None or p.get("state") == "unknown":
            return  # not heard yet, and not yet past the timeout: nothing to decide on
        nets = cfg.heartbeat_networks or tuple(p["networks"])
        alive = bool(p) and any(p["networks"].get(n, False) for n in nets)
        heard = [t for n in nets if (t := (p.get("last_heard") or {}).get(n)) is not None]
        self._heard_at = max(heard, default=0.0) if alive else 0.0
        fresh = alive and bool(heard) and self.env.now() - self._heard_at <= self.vouch_window
        payload = module_payload(p.get("payload") or "", self.name) if alive else None
        info = mm.peer_from_wire(alive, payload, fresh)
        if self._last_peer != info:
            self._last_peer = info
            self.peer_changed(info, "" if alive else why.get(peer, f"{peer} lost"))

    def _arbiter_said(self, ev: mm.Arbiter) -> None:
        """The arbiter's answer, after the peer's freshness is brought up to date: a vouch heard
        before this node stalled (frozen, or its loop blocked) must not keep it primary when its
        lease timer fires before the next heartbeat snapshot arrives."""
        last = self._last_peer
        if last is not None and last.fresh and self.env.now() - self._heard_at > self.vouch_window:
            self._last_peer = replace(last, fresh=False)
            self.peer_changed(self._last_peer)
        self.queue.put_nowait(Pending(ev))

    @property
    def vouch_window(self) -> float:
        """How recently the peer must have been heard for its vouch to count (and for ours to be
        given): two heartbeat intervals, one lost heartbeat tolerated (docs/mirror.md)."""
        return 2 * self.env.heartbeat_interval + 0.05

    def peer_changed(self, info: mm.PeerInfo, why: str = "") -> None:
        ev = mm.PeerChanged(info, why)
        self._latest_peer = ev
        self._peer_known.set()
        self.queue.put_nowait(Pending(ev))

    def wire(self) -> dict[str, object]:
        return mm.to_wire(self.machine)

    def status(self) -> dict[str, Any]:
        m = self.machine
        state, status = m.display()
        peer = m.peer
        if peer.present:
            pstate, pstatus = mm.Mirror(self.name, m.peer_name, m.local, phase=peer.phase).display()
        else:
            pstate, pstatus = "STOP", "not-ready"
        cfg = self.cfg
        return {
            "kind": "mirror",
            "nodes": {
                m.local: {
                    "state": state,
                    "status": status,
                    "phase": m.phase.value,
                    "reason": m.reason,
                    "blocked": m.blocked or None,
                    "holds": list(m.holds) or None,
                    "data": asdict(m.data) | {"history": len(m.data.history)},
                    "since": m.since,
                },
                m.peer_name: {
                    "state": pstate,
                    "status": pstatus,
                    "reachable": peer.alive,
                    "running": peer.installed,
                    "blocked": peer.blocked or None,
                    "phase": peer.phase.value if peer.present else None,
                    "data": {"gen": peer.data.gen, "gen_id": peer.data.gen_id}
                    if peer.present
                    else None,
                },
            },
            "failover": m.failover,
            "boot": cfg.boot,
            "unprotected": mm.unprotected(m) or None,
            "default_primary": cfg.default_primary,
            "vips": [str(v) for v in self.vip_list],
            "vips_held": [str(v) for v in self.held],
            "replication": self.replication.status() if self.replication is not None else None,
            "split_brain": {
                "keep": cfg.split_brain.keep,
                "witness": [str(a) for a in cfg.split_brain.witness.addresses]
                if cfg.split_brain.witness is not None
                else None,
                "etcd": cfg.split_brain.etcd is not None,
                "ping": [str(a) for a in cfg.split_brain.ping],
                "fencing": self.arbitration.fence is not None,
                "granted": m.lease if self.arbitration.configured else None,
                "asking": m.asking,
                "arbiter": m.arbiter_note or None,
                "witness_reachable": self.arbitration.reachable,
            },
            **self.checks.status(),
        }

    # --- main loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        await self._reconcile()
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            # Decide nothing before knowing whether the peer is there (heard, or silent for the
            # heartbeat timeout): its first view is applied before any command.
            try:
                await asyncio.wait_for(self._peer_known.wait(), self.env.peer_wait)
            except TimeoutError:
                self._record(
                    f"{self.name}: no news of {self.machine.peer_name} after "
                    f"{self.env.peer_wait:g} s; deciding without it",
                    "warning",
                )
            if self._latest_peer is not None:
                await self._handle(Pending(self._latest_peer))
            if self.boot_start.why:
                self._note(self.boot_start.why)
            if self.boot_start.start:
                await self._handle(Pending(mm.Command(mm.Cmd.START)))
            self.ready = True
            self.env.published()
            tg.create_task(self.checks.run())
            if self.arbitration.configured:
                tg.create_task(self.arbitration.run())
            if self.replication is not None:
                tg.create_task(self.replication.watch())
            while True:
                await self._handle(await self.queue.get())

    async def _handle(self, p: Pending) -> None:
        ev = p.event
        if isinstance(ev, mm.Command):
            self.cause = ev.cmd.value
            self.checks.reset()
        elif isinstance(ev, mm.PeerChanged):
            self.cause = "heartbeat"
        elif isinstance(ev, mm.ReplicaLost):
            self.cause = "replication"
        elif isinstance(ev, mm.Recover):
            self.cause = "checker"
        elif isinstance(ev, mm.Holds) and ev.reasons:
            self.cause = "hold"
        before = self.machine.display()
        m, actions = mm.step(self.machine, ev, self.env.now(), secrets.token_hex(4))
        self.machine = m
        self.checks.follow(ROLE.get(m.phase, ck.Role.STARTED))
        if m.asking or m.phase in mm.PRIMARYISH:
            self.arbitration.wake()
        answered = False
        for a in actions:
            if isinstance(a, mm.Persist):
                self.machine = m
                await asyncio.to_thread(self._save, a.data, a.failover)
            elif isinstance(a, mm.RunOp):
                self._count(a)
                self._tg.create_task(self._op(a, before[0]))
            elif isinstance(a, mm.Publish):
                await asyncio.to_thread(self._save, m.data, m.failover)
                if self.ready:
                    self.env.published()
            elif isinstance(a, mm.HeldWrites):
                if self.replication is not None:
                    self.replication.held_writes(a.release)
            elif isinstance(a, mm.Wake):
                self._tg.create_task(self._wake(a.at))
            elif isinstance(a, Explain):
                self._record(a.message, a.level)
            elif isinstance(a, Accepted | Refused):
                if isinstance(a, Refused):
                    self._record(f"{self.name}: {self.cause} refused: {a.message}", "warning")
                if p.answer is not None and not p.answer.done() and not answered:
                    p.answer.set_result(a)
                    answered = True
        if self.replication is not None:
            self.replication.maybe_connect()
        after = self.machine.display()
        if after[0] != before[0]:
            self._tg.create_task(self._transition(before[0], after[0]))

    def _count(self, run: mm.RunOp) -> None:
        """The metrics' counters: a restart of the application, or a failover (this node takes
        the primary role from its peer), with why."""
        if run.op is mm.Op.RESTART_PRIMARY:
            self.count("restarts", self.cause)
        elif run.op is mm.Op.BECOME_PRIMARY and run.from_second:
            p = self.machine.peer
            why = "swap" if p.present and p.handover else self.cause
            self.count("failovers", "peer-lost" if not p.alive else why)

    def _save(self, data: mm.Data, failover: bool) -> None:
        m = self.machine
        write_json(
            self.state_path,
            {
                "data": asdict(data) | {"history": [list(h) for h in data.history]},
                "failover": failover,
                "run": m.phase is not mm.Phase.STOPPED or self.shutting_down,
                "phase": m.phase.value,
                "saved_at": self.env.now(),
                "machine_boot": self.env.machine_boot,
            },
        )

    # --- reconciliation ----------------------------------------------------------------------

    async def _reconcile(self) -> None:
        """A previous daemon may have died with the application running or VIPs held."""
        present = [v for v in self.vip_list if await asyncio.to_thread(self._present, v)]
        phase = self.saved_phase
        primaryish = phase in {p.value for p in mm.PRIMARYISH}
        secondish = phase in ("joining", "syncing", "second", "leaving")
        if not (present or primaryish or secondish):
            return
        what = f"previous daemon left {self.name} {phase}"
        if present:
            what += f" with VIPs {', '.join(str(v) for v in present)}"
        self._note(f"reconciling: {what}; cleaning up before deciding")
        if primaryish or present:
            await self._stop_script("stop_prim", "STOP", "WAIT", "reconcile", force_only=True)
        if secondish:
            await self._stop_script("stop_second", "STOP", "WAIT", "reconcile", force_only=True)
        if self.replication is not None:
            for line in await asyncio.to_thread(self.replication.release_leftovers):
                self._note(f"reconciling: {line}")
        for v in self.vip_list:
            await self._remove_vip(v)

    # --- operations --------------------------------------------------------------------------

    async def _op(self, run: mm.RunOp, state: str) -> None:
        try:
            ok, detail = await self._execute(run, state)
        except Exception as e:  # a bug must not wedge the module: report it as a failure
            log.exception("operation %s of %s failed", run.op, self.name)
            ok, detail = False, f"internal error: {e!r}"
        self.queue.put_nowait(Pending(mm.OpDone(run.op, ok, detail)))

    async def _execute(self, run: mm.RunOp, state: str) -> tuple[bool, str]:
        op, action = run.op, self.cause
        second_ready = self.machine.peer_second_ready()
        if op is mm.Op.PRESTART:
            return _outcome(await self._script("prestart", state, "WAIT", action))
        if op is mm.Op.BECOME_PRIMARY:
            target = "PRIM" if second_ready else "ALONE"
            if run.from_second:
                await self._stop_script("stop_second", state, target, action)
            if self.replication is not None:
                await self.replication.stop_link()
                ok, detail = await self.replication.start_primary()
                if not ok:
                    return False, detail
            for v in self.vip_list:
                try:
                    await asyncio.to_thread(self._add_vip, v)
                except VipError as e:
                    return False, str(e)
            r = await self._script("start_prim", state, target, action)
            for v in self.held:  # once more now that the application listens
                await asyncio.to_thread(self._announce, v)
            return _outcome(r)
        if op is mm.Op.RESTART_PRIMARY:
            await self._stop_script("stop_prim", state, state, "restart")
            return _outcome(await self._script("start_prim", state, state, "restart"))
        if op is mm.Op.STOP_PRIMARY:
            if run.vips_first:  # it may be primary elsewhere now: no traffic here, at once
                for v in self.vip_list:
                    await self._remove_vip(v)
            ok, detail = await self._stop_script(
                "stop_prim", state, "WAIT", action, force_only=run.force
            )
            if self.replication is not None:
                await self.replication.stop_link()
            for v in self.vip_list:
                await self._remove_vip(v)
            return ok, detail
        if op is mm.Op.START_SECOND:
            r = await self._script("start_second", state, "SECOND", action)
            if not r.ok or self.replication is None:
                return _outcome(r)
            return await self.replication.start_secondary(run.preserve)
        if op is mm.Op.SYNC:
            if self.replication is None:
                return True, "no replicated directories"
            return await self.replication.sync()
        if op is mm.Op.STOP_SECOND:
            ok, detail = await self._stop_script(
                "stop_second", state, "WAIT", action, force_only=run.force
            )
            if self.replication is not None:
                await self.replication.stop_link()
            return ok, detail
        return _outcome(await self._script("poststop", state, "STOP", action))

    def _add_vip(self, v: Vip) -> None:
        probe = self.vip_probes[v]
        started = time.monotonic()
        found = self.env.vips.probe(v, probe)
        probed = f"probed in {(time.monotonic() - started) * 1000:.0f} ms; " if probe.count else ""
        if found is not None and found.peer is None:
            raise VipError(
                f"VIP {v} in use by {found.what} {found.mac} {v.where}: another host answers "
                f"for this address ({found.how}); not taken: free the address on that host or "
                "change the VIP"
            )
        if found is not None:  # the peer node still holds it (rule: docs/mirror.md, VIP probe)
            self._record(
                f"{self.name}: VIP {v} still held by the peer node ({found.peer}, {found.what} "
                f"{found.mac}): taking it over and announcing it",
                "warning",
            )
        added = self.env.vips.add(v)
        self._holds(v, True)
        self._announce(v)
        self._note(
            f"VIP {v} {'added' if added else 'already present'} {v.where}; {probed}announced"
        )

    def _announce(self, v: Vip) -> None:
        try:
            self.env.vips.announce(v)
        except VipError as e:
            self._record(f"{self.name}: {e}", "warning")

    def kind_env(self) -> dict[str, str]:
        return {"HAKIT_PEER": self.machine.peer_name}

    async def _wake(self, at: float) -> None:
        """`Due` to the machine at `at` (its clock: `env.now`)."""
        await asyncio.sleep(max(0.0, at - self.env.now()))
        self.queue.put_nowait(Pending(mm.Due()))

    # --- split brain ---------------------------------------------------------------------------

    async def _fence(self) -> tuple[bool, str]:
        """`bin/fence PEER`: make sure the peer no longer runs the application (IPMI power-off,
        cloud API, hypervisor…) before taking over from it."""
        peer = self.machine.peer_name
        env = self.script_env("fence", "SECOND", "ALONE", "fence")
        r = await self.env.scripts.run(
            "fence",
            self.module.bin / "fence",
            [peer],
            env,
            self.cfg.split_brain.fence_timeout,
            self.log_dir / "scripts",
        )
        self._record(f"{self.name}: fencing {peer}: {r.reason}", "warning" if r.ok else "error")
        return r.ok, r.reason

    # --- checkers --------------------------------------------------------------------------

    def checker_recover(self, r: ck.Recover) -> None:
        self.queue.put_nowait(Pending(mm.Recover(r.action, r.message)))

    def checker_holds(self, reasons: tuple[str, ...]) -> None:
        self.queue.put_nowait(Pending(mm.Holds(reasons)))


class Replication:
    """The module's replication, seen from its runner: starts and stops the replication
    process with the role of the phase, connects the primary to a secondary that waits for
    its resynchronisation, turns the process's events into machine events and timeline lines."""

    def __init__(self, runner: MirrorRunner) -> None:
        self.runner = runner
        cfg = runner.cfg.replication
        assert cfg is not None
        self.cfg = cfg
        env = runner.env
        peer = runner.machine.peer_name
        mine = env.local_addresses
        theirs = env.node_addresses.get(peer, {})
        shared = [n for n in mine if n in theirs]
        self.network = cfg.network or (shared[0] if shared else "")
        self.local_address = mine.get(self.network, "")
        self.peer_address = theirs.get(self.network, "")
        self.link: ReplicationLink | None = None
        self.pid_file = runner.var / "replication" / "replicator.pid"
        self._last_connect = 0.0
        self.last_sync: dict[str, Any] | None = None
        self.preserved_path = runner.var / "split-brain" / "last.json"
        self.preserved: dict[str, Any] | None = read_json(self.preserved_path)
        self.verifying: asyncio.Future[dict[str, Any]] | None = None

    # --- process lifecycle ---------------------------------------------------------------------

    def _init(self, role: str, preserve: str = "") -> dict[str, Any]:
        m, env = self.runner.machine, self.runner.env
        base = (m.before_promotion or m.data).gen_id if role == "primary" else ""
        folder = ""
        if preserve:
            stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(self.runner.env.now()))
            name = f"{stamp}-gen{m.data.gen}-{m.data.gen_id or 'none'}"
            folder = str(self.runner.var / "split-brain" / name)
        return {
            "preserve": folder,
            "preserve_why": preserve,
            "role": role,
            "module": self.runner.name,
            "tls": export_identity(identity(env.cluster_secret, env.cluster, env.local)),
            "peer": m.peer_name,
            "peer_addresses": sorted(set(env.node_addresses.get(m.peer_name, {}).values())),
            "dirs": [d.model_dump(mode="json") for d in self.cfg.dirs],
            "mode": self.cfg.mode,
            "state_dir": str(self.runner.var / "replication"),
            # an application write never blocks longer than the heartbeat timeout
            "ack_timeout": max(0.2, self.runner.env.heartbeat_timeout * 0.8),
            "bandwidth": int(self.cfg.resync_bandwidth * 1_000_000),
            # with an arbiter, writes after a break wait for its word (docs/mirror.md)
            "hold": self.runner.arbitration.configured,
            "listen": [self.local_address, self.cfg.port] if role == "secondary" else None,
            "base": base,
        }

    async def _start(self, role: str, preserve: str = "") -> tuple[bool, str]:
        await self.stop_link()
        init = self._init(role, preserve)
        link = ReplicationLink(init, self.pid_file, self._event)
        ok, detail = await link.start()
        if not ok:
            return False, f"replication ({role}): {detail}"
        self.link = link
        self.runner._tg.create_task(self._watch_exit(link))
        dirs = ", ".join(d.path for d in self.cfg.dirs)
        if role == "primary":
            self.runner._note(f"replication: {dirs} mounted; changes go to the secondary")
        else:
            self.runner._note(
                f"replication: {dirs} read-only here; receiving on "
                f"{self.local_address}:{self.cfg.port} ({self.cfg.mode})"
            )
        if init["preserve"]:
            self.runner._record(
                f"{self.runner.name}: {preserve}; what the resynchronisation overwrites or "
                f"removes here is kept first in {init['preserve']}",
                "warning",
            )
        return True, ""

    async def start_primary(self) -> tuple[bool, str]:
        return await self._start("primary")

    async def start_secondary(self, preserve: str = "") -> tuple[bool, str]:
        if not self.local_address:
            return False, f"this node has no address on replication network {self.network!r}"
        return await self._start("secondary", preserve)

    async def stop_link(self) -> None:
        link, self.link = self.link, None
        if link is None:
            return
        ok, detail = await link.stop()
        self.runner._record(
            f"{self.runner.name}: replication stopped ({detail})", "info" if ok else "error"
        )

    def held_writes(self, release: bool) -> None:
        """The machine's word on the writes held since the replication broke."""
        link = self.link
        if link is not None and link.role == "primary":
            link.command(cmd="release" if release else "refuse")

    def release_leftovers(self) -> list[str]:
        """What a dead daemon left: its replication process, and mounts over our dirs."""
        from hakit.daemon.replicator import release

        out = []
        if kill_leftover(self.pid_file):
            out.append("killed the replication process left by the previous daemon")
        for d in self.cfg.dirs:
            out += release(d.path)
        return out

    async def _watch_exit(self, link: ReplicationLink) -> None:
        assert link.exited is not None
        code = await asyncio.shield(link.exited)
        if self.link is not link:
            return  # stopped on purpose
        self.link = None
        r = self.runner
        tail = f"; last messages: {' | '.join(link.stderr[-3:])}" if link.stderr else ""
        r._record(f"{r.name}: replication process died (status {code}){tail}", "error")
        if link.role == "primary" and r.machine.phase in (mm.Phase.ALONE, mm.Phase.PRIM):
            # The application now gets errors from the dead mount: restart the module cleanly
            # (stop the application, unmount, mount again or let the secondary take over).
            r.queue.put_nowait(Pending(mm.Command(mm.Cmd.STOPSTART)))
        elif link.role == "secondary":
            r.queue.put_nowait(Pending(mm.ReplicaLost(f"replication process died ({code})")))

    # --- events --------------------------------------------------------------------------------

    def _event(self, ev: dict[str, Any]) -> None:
        r, kind = self.runner, ev.get("event")
        if kind == "alone":
            if ev.get("complete"):
                r._record(
                    f"{r.name}: replication stopped ({ev.get('reason')}); the secondary has "
                    "every acknowledged write"
                )
            else:
                r._record(
                    f"{r.name}: secondary no longer replicating: {ev.get('reason')}", "warning"
                )
            r.queue.put_nowait(
                Pending(mm.ReplicaLost(str(ev.get("reason")), complete=bool(ev.get("complete"))))
            )
        elif kind == "lost":
            r.queue.put_nowait(
                Pending(mm.ReplicaLost(str(ev.get("reason")), bool(ev.get("fatal"))))
            )
        elif kind == "diverged":
            r._record(
                f"{r.name}: the secondary failed {ev.get('op')} on {ev.get('path')} "
                f"({ev.get('errno')}): resending it",
                "warning",
            )
        elif kind == "connected" and "trust" in ev:
            how = "changes tracked" if ev.get("trust") else "full checksum comparison"
            r._note(f"resynchronising {r.machine.peer_name}: {how} ({ev.get('why')})")
        elif kind == "synced" and "bytes_sent" in ev:
            self.last_sync = ev
            r._note(
                f"{r.machine.peer_name} synchronised: {_size(ev['bytes_sent'])} sent, "
                f"{ev.get('files_total')} files compared, {ev.get('entries_fixed')} entries "
                f"fixed, {ev.get('elapsed')} s"
            )
        elif kind == "preserved":
            self.preserved = {
                "folder": ev.get("folder"),
                "entries": ev.get("kept"),
                "at": ev.get("at") or r.env.now(),
            }
            self.preserved_path.parent.mkdir(parents=True, exist_ok=True)
            write_json(self.preserved_path, self.preserved)
            errors = ev.get("errors") or []
            r._record(
                f"{r.name}: diverged copy of {r.env.local}: {ev.get('kept')} entries kept in "
                f"{ev.get('folder')} before the resynchronisation changed them (list and how to "
                f"restore: {ev.get('folder')}/REPORT.txt)"
                + (f"; could not keep: {'; '.join(errors)}" if errors else ""),
                "warning",
            )
        elif kind == "resync-failed":
            r._record(f"{r.name}: resynchronisation failed: {ev.get('reason')}", "warning")
        elif kind == "refused":
            r._record(
                f"{r.name}: replication port refused {ev.get('count', 1)} connection(s) "
                f"recently, the last from {ev.get('peer')}: {ev.get('reason')}",
                "warning",
            )
        elif kind == "verify" and self.verifying is not None and not self.verifying.done():
            self.verifying.set_result(ev)

    async def watch(self) -> None:
        """Primary: connect to a secondary that waits for its resynchronisation."""
        while True:
            await asyncio.sleep(0.5)
            self.maybe_connect()

    def maybe_connect(self) -> None:
        m, link = self.runner.machine, self.link
        if link is None or link.role != "primary" or link.state != "alone":
            return
        if m.phase not in (mm.Phase.ALONE, mm.Phase.PRIM):
            return
        if not (m.peer.present and m.peer.phase is mm.Phase.SYNCING):
            return
        if time.monotonic() - self._last_connect < 2.0 or not self.peer_address:
            return
        self._last_connect = time.monotonic()
        link.command(
            cmd="connect",
            host=self.peer_address,
            port=self.cfg.port,
            peer_gen=m.peer.data.gen_id,
            my_gen=m.data.gen_id,
        )

    async def sync(self) -> tuple[bool, str]:
        """Secondary: wait until the primary has brought us up to date (or give up)."""
        link = self.link
        if link is None:
            return False, "replication process not running"
        r = self.runner
        quiet_limit = max(60.0, r.env.peer_wait * 4)
        last_news = time.monotonic()
        while True:
            if not r.machine.peer.primary:  # not a failure of ours: rejoin when it is back
                return True, f"{r.machine.peer_name} is no longer primary"
            if r.machine.then is not mm.Then.NOTHING:
                return False, f"interrupted: {r.machine.then.value} requested"
            if link.exited is not None and link.exited.done():
                return False, "replication process died"
            if time.monotonic() - last_news > quiet_limit:
                return False, f"no resynchronisation from the primary in {quiet_limit:g} s"
            try:
                ev = await link.wait_for({"synced", "lost", "connected", "progress"}, 0.5)
            except TimeoutError:
                continue
            last_news = time.monotonic()
            kind = ev["event"]
            if kind == "synced":
                return True, "identical to the primary"
            if kind == "lost" and ev.get("fatal"):
                return False, str(ev.get("reason"))

    async def verify(self, limit: float = 3600.0) -> dict[str, Any]:
        link = self.link
        if link is None or link.role != "primary":
            return {"ok": False, "error": "not primary here: run it on the primary's node"}
        if link.state != "ready":
            return {"ok": False, "error": f"no ready secondary to compare with ({link.state})"}
        self.verifying = asyncio.get_running_loop().create_future()
        link.command(cmd="verify")
        try:
            return await asyncio.wait_for(self.verifying, limit)
        except TimeoutError:
            return {"ok": False, "error": f"no answer within {limit:g} s"}
        finally:
            self.verifying = None

    def status(self) -> dict[str, Any]:
        link = self.link
        progress = dict(link.progress) if link is not None and link.progress else None
        if progress:
            progress.pop("event", None)
            progress.pop("at", None)
            total = progress.get("bytes_total") or 0
            progress["percent"] = (
                round(100.0 * progress.get("bytes_done", 0) / total, 1) if total else None
            )
        return {
            "mode": self.cfg.mode,
            "network": self.network,
            "dirs": [d.path for d in self.cfg.dirs],
            "role": link.role if link is not None else None,
            "state": link.state if link is not None else "stopped",
            "progress": progress,
            "diverged_copy_kept": self.preserved,
            "last_sync": {
                k: self.last_sync.get(k)
                for k in ("at", "bytes_sent", "files_total", "entries_fixed", "elapsed")
            }
            if self.last_sync
            else None,
            # the process's counters (docs/metrics.md): ops, bytes, waiting, lag, fsync
            "stats": {k: v for k, v in link.stats.items() if k != "event"}
            if link is not None and link.stats
            else None,
        }


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _outcome(r: ScriptResult) -> tuple[bool, str]:
    return r.ok, r.reason


def _data_fields(d: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in d.items() if k in mm.Data.__dataclass_fields__}
    if "history" in out:
        out["history"] = tuple((int(g), str(i)) for g, i in out["history"])
    return out


def module_state_dir(paths: Paths, name: str) -> Path:
    return paths.var / "modules" / name
