"""Runs one farm module on this node: its state machine, its share of the buckets, its data path.

Events (operator commands, completions of operations, health probes) go through the pure
machine one at a time. What the other nodes publish in their heartbeats goes through the pure
agreement (`core.farm.converge`), which says which buckets this node accepts: the packet filter
is changed first, then the new state is published, so a bucket given away is no longer accepted
here before anyone else can take it. Every change of this node's share lands in the timeline
with its reason.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
from dataclasses import dataclass, field, replace
from typing import Any

from hakit.adapters.farm import FarmPath, FarmPathError, Rule, seed_of
from hakit.adapters.statefile import read_json, write_json
from hakit.adapters.vip import VipError
from hakit.config.module import FarmModule
from hakit.core import checks as ck
from hakit.core import farm as fm
from hakit.core import mirror as mm
from hakit.core.outcomes import Accepted, Explain, Refused
from hakit.daemon.logs import LOGGER
from hakit.daemon.module_runner import ModuleRunner
from hakit.wire.heartbeat import module_payload

log = logging.getLogger(LOGGER + ".farm")

CHECK_PATH_EVERY = 2.0
CMD_OF = {c.value: c for c in fm.Cmd}
ROLE = {fm.Phase.STOPPED: ck.Role.STOPPED, fm.Phase.UP: ck.Role.UP}
"""The checkers' view of a farm phase (any other phase: started, not running steadily)."""


def config_digest(name: str, cfg: FarmModule) -> str:
    """What every node must share for one assignment: nodes, weights, VIPs, rules."""
    text = json.dumps(
        {
            "module": name,
            "nodes": [[n, cfg.weight(n)] for n in cfg.nodes],
            "vips": [str(v.address) for v in cfg.vips],
            "rules": [r.model_dump(mode="json") for r in cfg.rules],
        },
        sort_keys=True,
    )
    return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()


@dataclass
class Pending:
    event: fm.Event | None  # None: what the peers publish changed (re-run the agreement)
    answer: asyncio.Future[Accepted | Refused] | None = None


@dataclass
class FarmRunner(ModuleRunner):
    replication: None = field(init=False, default=None)  # farms replicate nothing

    START_SCRIPTS = ("prestart", "start_both", "transition")
    SERVICE_STEPS = (("start_both", "start"), ("stop_both", "stop"), ("prestart", "disable"))

    def __post_init__(self) -> None:
        super().__post_init__()
        cfg = self.module.config
        assert isinstance(cfg, FarmModule)
        self.cfg = cfg
        self.local = self.env.local
        saved = read_json(self.state_path) or {}
        self.run_flag = bool(saved.get("run", False))
        self.boot_start = self.at_daemon_start(saved)
        self.machine = fm.Farm(
            module=self.name,
            local=self.local,
            gated=self.checks.gates,
            waits_first=self.checks.waits_first,
        )
        self.digest = config_digest(self.name, cfg)
        self.table = fm.preference_table([(n, cfg.weight(n)) for n in cfg.nodes], self.digest)
        self.assignment = fm.Assignment(inc=secrets.token_hex(4))
        self.acks: tuple[tuple[str, str], ...] = ()
        self.peers: dict[str, fm.Published | None] = {}
        self.peer_alive: dict[str, bool] = {}
        self.path: FarmPath | None = None  # installed data path
        self.queue: asyncio.Queue[Pending] = asyncio.Queue()
        self._peer_known = asyncio.Event()
        self._filter = asyncio.Lock()  # the filter and `assignment` change together
        self.overlaps_seen: set[str] = set()
        self.changed_view: tuple[str, ...] = ()  # view at the last change of our buckets

    # --- interface for the daemon ------------------------------------------------------------

    @property
    def stopped(self) -> bool:
        return self.machine.phase is fm.Phase.STOPPED

    async def command(self, cmd: mm.Cmd) -> Accepted | Refused:
        fcmd = CMD_OF.get(cmd.value)
        if fcmd is None:
            return Refused(
                f"{self.name} is a farm module: every node serves, there is no primary or "
                f"secondary; `{cmd.value}` applies to mirror modules (farm commands: "
                f"{', '.join(CMD_OF)})"
            )
        fut: asyncio.Future[Accepted | Refused] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait(Pending(fm.Command(fcmd), fut))
        return await fut

    async def shutdown(self) -> None:
        self.shutting_down = not self.stopped
        if self.shutting_down:
            await self.command(mm.Cmd.STOP)

    def heard(self, peers: dict[str, Any], why: dict[str, str]) -> None:
        """A heartbeat snapshot: what every other farm node publishes, if alive."""
        nets = self.cfg.heartbeat_networks
        changed = False
        for node in self.cfg.nodes:
            if node == self.local:
                continue
            p = peers.get(node)
            if p is None or p.get("state") == "unknown":
                continue
            alive = any(up for n, up in p["networks"].items() if nets is None or n in nets)
            pub = fm.from_wire(module_payload(p.get("payload") or "", self.name)) if alive else None
            if self.peer_alive.get(node) != alive:
                self.peer_alive[node] = alive
                changed = True
                if not alive and node in self.peers and self.peers[node] is not None:
                    self._note(f"{node} lost for the farm: {why.get(node, 'no heartbeat')}")
            if node not in self.peers or self.peers[node] != pub:
                self.peers[node] = pub
                changed = True
        if len(self.peers) == len(self.cfg.nodes) - 1:
            self._peer_known.set()
        if changed:
            self.queue.put_nowait(Pending(None))

    def wire(self) -> dict[str, object]:
        return fm.to_wire(self._published())

    def _published(self) -> fm.Published:
        a = self.assignment
        state, status = self.machine.display(a.settled)
        return fm.Published(
            member=self.machine.member,
            inc=a.inc,
            seq=a.seq,
            view=a.view,
            owned=a.owned,
            acks=self.acks,
            digest=self.digest,
            state=state,
            status=status,
        )

    def status(self) -> dict[str, Any]:
        a = self.assignment
        state, status = self.machine.display(a.settled)
        nodes: dict[str, Any] = {
            self.local: {
                "state": state,
                "status": status,
                "weight": self.cfg.weight(self.local),
                "buckets": fm.count(a.owned),
                "share": round(100.0 * fm.count(a.owned) / fm.BUCKETS, 1),
                "target": fm.count(a.target),
                "healthy": self.machine.healthy if self.machine.phase is fm.Phase.UP else None,
                "holds": list(self.machine.holds) or None,
                "phase": self.machine.phase.value,
                "reason": self.machine.reason,
                "blocked": self.machine.failed or None,
                "since": self.machine.since,
            }
        }
        for node in self.cfg.nodes:
            if node == self.local:
                continue
            pub = self.peers.get(node)
            alive = self.peer_alive.get(node, False)
            nodes[node] = {
                "state": pub.state if pub else "STOP",
                "status": pub.status if pub else "not-ready",
                "reachable": alive,
                "running": pub is not None,
                "weight": self.cfg.weight(node),
                "buckets": fm.count(pub.owned) if pub else 0,
                "share": round(100.0 * fm.count(pub.owned) / fm.BUCKETS, 1) if pub else 0.0,
                "same_config": pub.digest == self.digest if pub else None,
            }
        return {
            "kind": "farm",
            "boot": self.cfg.boot,
            "nodes": nodes,
            "view": list(a.view),
            "agreed": a.agreed,
            "epoch": fm.epoch(a.view, self.digest) if a.agreed else None,
            "vips": [str(v) for v in self.vip_list],
            "vips_held": [str(v) for v in self.held],
            "virtual_mac": self.cfg.mac,
            "rules": [r.model_dump(mode="json") for r in self.cfg.rules],
            "unowned": fm.BUCKETS - fm.count(a.owned | a.claimed_by_others),
            **self.checks.status(),
        }

    # --- main loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        await self._reconcile()
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            try:
                await asyncio.wait_for(self._peer_known.wait(), self.env.peer_wait)
            except TimeoutError:
                self._record(
                    f"{self.name}: not every farm node heard of after {self.env.peer_wait:g} s; "
                    "deciding without them",
                    "warning",
                )
            if self.boot_start.why:
                self._note(self.boot_start.why)
            if self.boot_start.start:
                await self._handle(Pending(fm.Command(fm.Cmd.START)))
            self.ready = True
            self.env.published()
            tg.create_task(self._path_watch())
            tg.create_task(self.checks.run())
            while True:
                await self._handle(await self.queue.get())

    async def _handle(self, p: Pending) -> None:
        ev = p.event
        if ev is None:
            await self._converge()
            return
        if isinstance(ev, fm.Command):
            self.cause = ev.cmd.value
            self.checks.reset()
        elif isinstance(ev, fm.Recover):
            self.cause = "checker"
        elif isinstance(ev, fm.Holds) and ev.reasons:
            self.cause = "hold"
        before = self.machine.display(self.assignment.settled)[0]
        m, actions = fm.step(self.machine, ev, self.env.now())
        self.machine = m
        self.checks.follow(ROLE.get(m.phase, ck.Role.STARTED))
        for a in actions:
            if isinstance(a, fm.Publish):
                await asyncio.to_thread(self._save)
                await self._converge(force_publish=True)
            elif isinstance(a, fm.RunOp):
                self._tg.create_task(self._op(a, before))
            elif isinstance(a, Explain):
                self._record(a.message, a.level)
            elif isinstance(a, Accepted | Refused):
                if isinstance(a, Refused):
                    self._record(f"{self.name}: {self.cause} refused: {a.message}", "warning")
                if p.answer is not None and not p.answer.done():
                    p.answer.set_result(a)
        after = self.machine.display(self.assignment.settled)[0]
        if after != before:
            self._tg.create_task(self._transition(before, after))

    async def _converge(self, force_publish: bool = False) -> None:
        """Re-run the agreement; change the filter first, then tell the others."""
        async with self._filter:
            old = self.assignment
            new, change, acks = fm.converge(
                old, self.local, self.machine.member, self.digest, self.table, self.peers
            )
            if change is not None and self.path is not None:
                try:
                    await asyncio.to_thread(self.env.farm_path.set_buckets, self.path, new.owned)
                except FarmPathError as e:
                    self._record(f"{self.name}: {e}; keeping the previous buckets", "error")
                    new, change = replace(new, owned=old.owned), None
            elif change is not None and new.owned:
                # No data path (starting or stopping): never claim what we cannot accept.
                new = replace(new, owned=0)
                change = None if old.owned == 0 else fm.Change(0, old.owned, new.view)
            self.assignment = new
        before_state = self.machine.display(old.settled)
        publish = force_publish or acks != self.acks or new != old
        self.acks = acks
        if change is not None:
            self._explain_change(new, change)
        if new.agreed and not old.agreed:
            self._note(
                f"farm view agreed (epoch {fm.epoch(new.view, self.digest)}): "
                f"{', '.join(new.view)}; {self.local} accepts {fm.count(new.owned)}/{fm.BUCKETS}"
                f" buckets"
                + ("" if new.settled else f", {fm.count(new.target)} once the others release")
            )
        if publish and self.ready:
            self.env.published()
        after_state = self.machine.display(new.settled)
        if after_state[0] != before_state[0]:
            self._tg.create_task(self._transition(before_state[0], after_state[0]))

    def _explain_change(self, new: fm.Assignment, c: fm.Change) -> None:
        before = self.changed_view
        self.changed_view = new.view
        joined = [n for n in new.view if n not in before]
        left = [n for n in before if n not in new.view]
        why = []
        if joined:
            why.append(f"joined: {', '.join(joined)}")
        if left:
            lost = [n for n in left if n != self.local and not self.peer_alive.get(n, False)]
            gone = [n for n in left if n not in lost]
            if lost:
                why.append(f"lost: {', '.join(lost)}")
            if gone:
                why.append(f"left: {', '.join(gone)}")
        if not why:
            why.append("handover completed")
        for peer, n in c.overlap:
            if peer not in self.overlaps_seen:
                self.overlaps_seen.add(peer)
                self._record(
                    f"{self.name}: split healed: {peer} and {self.local} both accepted {n} "
                    "buckets while apart; restoring one assignment",
                    "warning",
                )
        if not c.overlap:
            self.overlaps_seen.clear()
        parts = []
        if c.gained:
            parts.append(f"+{fm.count(c.gained)}")
        if c.lost:
            parts.append(f"-{fm.count(c.lost)}")
        self._note(
            f"{self.local} now accepts {fm.count(new.owned)}/{fm.BUCKETS} buckets "
            f"({' '.join(parts)}; view {', '.join(new.view) or 'empty'}; {'; '.join(why)})"
        )

    def _save(self) -> None:
        write_json(
            self.state_path,
            {
                "run": not self.stopped or self.shutting_down,
                "phase": self.machine.phase.value,
                "saved_at": self.env.now(),
                "machine_boot": self.env.machine_boot,
            },
        )

    # --- reconciliation ----------------------------------------------------------------------

    def _path_spec(self) -> FarmPath:
        interfaces = tuple(dict.fromkeys(self.env.vips.interface_of(v) for v in self.vip_list))
        return FarmPath(
            module=self.name,
            vips=tuple(v.address for v in self.vip_list),
            interfaces=interfaces,
            mac=self.cfg.mac,
            rules=tuple(Rule(r.protocol, r.port, r.by) for r in self.cfg.rules),
            seed=seed_of(self.name),
        )

    async def _reconcile(self) -> None:
        """A previous daemon may have died with the application, filter or VIPs in place."""
        leftover = await asyncio.to_thread(self.env.farm_path.owned, self.name)
        present = [v for v in self.vip_list if await asyncio.to_thread(self._present, v)]
        if leftover is None and not present and not self.run_flag:
            return
        self._note("reconciling: cleaning up what a previous daemon left before deciding")
        if self.run_flag:
            await self._stop_script("stop_both", "STOP", "WAIT", "reconcile", force_only=True)
        await self._path_down()

    def release_vips(self) -> list[str]:
        """Emergency (module crashed): drop the VIPs and the filter, never raising."""
        out = super().release_vips()
        if self.path is not None:
            try:
                self.env.farm_path.remove(self.path)
                out.append(f"farm filter {self.path.table} removed")
            except FarmPathError as e:
                out.append(str(e))
        return out

    # --- operations --------------------------------------------------------------------------

    async def _op(self, run: fm.RunOp, state: str) -> None:
        try:
            ok, detail = await self._execute(run, state)
        except Exception as e:  # a bug must not wedge the module: report it as a failure
            log.exception("operation %s of %s failed", run.op, self.name)
            ok, detail = False, f"internal error: {e!r}"
        self.queue.put_nowait(Pending(fm.OpDone(run.op, ok, detail)))

    async def _execute(self, run: fm.RunOp, state: str) -> tuple[bool, str]:
        action = run.action
        if run.op is fm.Op.START:
            r = await self._script("prestart", state, "WAIT", action)
            if not r.ok:
                return False, r.reason
            r = await self._script("start_both", state, "UP", action)
            if not r.ok:
                return False, r.reason
            return await self._path_up()
        if run.op is fm.Op.RESTART:
            self.count("restarts", action or self.cause)
            await self._stop_script("stop_both", state, "UP", action)
            r = await self._script("start_both", state, "UP", action)
            return r.ok, r.reason
        ok, detail = await self._stop_script("stop_both", state, "STOP", action)
        await self._path_down()
        r = await self._script("poststop", state, "STOP", action)
        if not r.ok:
            return False, r.reason
        return ok, detail

    async def _path_up(self) -> tuple[bool, str]:
        try:
            spec = await asyncio.to_thread(self._path_spec)
            await asyncio.to_thread(self.env.farm_path.install, spec)
        except (FarmPathError, VipError) as e:
            return False, str(e)
        self.path = spec
        mac = bytes.fromhex(self.cfg.mac.replace(":", ""))
        for v in self.vip_list:
            try:
                added = await asyncio.to_thread(self.env.vips.add, v)
            except VipError as e:
                return False, str(e)
            self._holds(v, True)
            try:
                await asyncio.to_thread(self.env.vips.announce, v, mac)
            except VipError as e:
                self._record(f"{self.name}: {e}", "warning")
            self._note(
                f"VIP {v} {'added' if added else 'already present'} {v.where}, answered with "
                f"virtual MAC {self.cfg.mac}; filter {spec.table} installed (no bucket yet)"
            )
        return True, "data path up"

    async def _path_down(self) -> None:
        """Remove the VIPs first (no new packet reaches the node), then the filter."""
        for v in self.vip_list:
            await self._remove_vip(v)
        path, self.path = self.path, None
        try:
            spec = path if path is not None else await asyncio.to_thread(self._path_spec)
            if await asyncio.to_thread(self.env.farm_path.remove, spec):
                self._note(f"filter {spec.table} removed")
        except (FarmPathError, VipError) as e:
            self._record(f"{self.name}: could not remove the farm filter: {e}", "error")

    async def _path_watch(self) -> None:
        """The filter or a VIP gone while UP (flushed ruleset, interface reset): put it back."""
        while True:
            await asyncio.sleep(CHECK_PATH_EVERY)
            path = self.path
            if path is None or self.machine.phase is not fm.Phase.UP:
                continue
            async with self._filter:
                await self._repair(path)

    async def _repair(self, path: FarmPath) -> None:
        owned = await asyncio.to_thread(self.env.farm_path.owned, self.name)
        missing = [v for v in self.vip_list if not await asyncio.to_thread(self._present, v)]
        if owned == self.assignment.owned and not missing:
            return
        what = "filter missing" if owned is None else "filter differs"
        if missing:
            what = f"VIP {', '.join(str(v) for v in missing)} missing"
        self._record(f"{self.name}: {what} on {self.local}: repairing", "error")
        try:
            if owned is None:
                await asyncio.to_thread(self.env.farm_path.install, path)
            await asyncio.to_thread(self.env.farm_path.set_buckets, path, self.assignment.owned)
            for v in missing:
                await asyncio.to_thread(self.env.vips.add, v)
        except (FarmPathError, VipError) as e:
            self._record(f"{self.name}: repair failed: {e}", "error")

    # --- checkers --------------------------------------------------------------------------

    def checker_recover(self, r: ck.Recover) -> None:
        self.queue.put_nowait(Pending(fm.Recover(r.action, r.message)))

    def checker_holds(self, reasons: tuple[str, ...]) -> None:
        self.queue.put_nowait(Pending(fm.Holds(reasons)))

    def checker_ready(self, ok: bool, detail: str) -> None:
        self.queue.put_nowait(Pending(fm.Health(ok, detail)))

    # --- scripts -------------------------------------------------------------------------------

    def kind_env(self) -> dict[str, str]:
        return {"HAKIT_NODES": " ".join(self.cfg.nodes)}
