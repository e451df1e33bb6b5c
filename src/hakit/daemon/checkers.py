"""The checkers of one module on this node: probes scheduled in the daemon (never in the
heartbeat process), results fed to the pure checker machines (core/checks.py), and what they
decide handed to the module's runner as events of its own machine.

One task per checker, owned by the runner's TaskGroup: it sleeps while the checker is idle
(not active in the module's current role) or switched off, and otherwise probes every
`interval`, each probe bounded by the checker's `timeout` (adapters/probes.py kills what
overruns). A result that arrives after the checker went idle or off is dropped (epochs).
Maintenance switches and the loop-protection count are kept in
`$HAKIT_VAR/modules/NAME/checkers.json`, so they survive a daemon restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hakit.adapters.probes import ProbeContext, ProbePort
from hakit.adapters.statefile import read_json, write_json
from hakit.config.checkers import (
    CheckerBase,
    CustomChecker,
    ProcessChecker,
    Recovery,
    VipChecker,
)
from hakit.core import checks as ck

IMPLICIT_VIP = VipChecker(
    name="vip", type="vip", interval=2.0, timeout=1.0, fall=1, rise=1, when="primary"
)
"""A mirror with VIPs and no `vip` checker of its own gets this one: a VIP that disappears
from the primary (deleted by hand, interface reset) makes it stopstart."""


def service_checker_name(service: str) -> str:
    """`service-NAME`, with what a checker name cannot hold (`@`, `.`, `:`) as `-`, ≤ 32."""
    return ("service-" + re.sub(r"[^A-Za-z0-9_-]", "-", service))[:32]


def effective_checkers(
    kind: str, checkers: tuple[CheckerBase, ...], has_vips: bool, services: tuple[str, ...] = ()
) -> tuple[CheckerBase, ...]:
    """The module's checkers and the implied ones: `vip` for a mirror with VIPs, one
    `service-NAME` per service of `services:` (both unless the module has its own)."""
    names = {c.name for c in checkers}
    out = list(checkers)
    own = any(isinstance(c, VipChecker) for c in checkers) or IMPLICIT_VIP.name in names
    if kind == "mirror" and has_vips and not own:
        out.append(IMPLICIT_VIP)
    for service in services:
        name = service_checker_name(service)
        if name not in names:
            names.add(name)
            out.append(ProcessChecker(name=name, type="process", unit=service, timeout=10.0))
    return tuple(out)


def spec_of(c: CheckerBase, kind: str) -> ck.Spec:
    return ck.Spec(
        name=c.name,
        kind=getattr(c, "type", "checker"),
        what=c.describe(),
        when=c.effective_when(kind),
        action=c.effective_action,
        rise=c.rise,
        fall=c.fall,
    )


@dataclass
class CheckerSet:
    module: str
    kind: str  # mirror | farm
    configs: tuple[CheckerBase, ...]
    recovery: Recovery
    probes: ProbePort
    context: Callable[[], ProbeContext]
    state_path: Path
    record: Callable[[str, str], None]  # (message, level) to the timeline
    on_recover: Callable[[ck.Recover], None]
    on_holds: Callable[[tuple[str, ...]], None]
    on_ready: Callable[[bool, str], None]
    now: Callable[[], float] = time.time
    role: ck.Role = field(init=False, default=ck.Role.STOPPED)

    def __post_init__(self) -> None:
        self.by_name = {c.name: c for c in self.configs}
        self.checkers = {c.name: ck.Checker(spec_of(c, self.kind)) for c in self.configs}
        self.epoch = dict.fromkeys(self.by_name, 0)
        self.wake = {n: asyncio.Event() for n in self.by_name}
        self.holds: tuple[str, ...] = ()
        self.is_ready = True
        saved = read_json(self.state_path) or {}
        self.budget = ck.Budget(
            self.recovery.max,
            self.recovery.window,
            tuple(float(t) for t in saved.get("recoveries", [])),
        )
        for name in saved.get("off", []):
            if name in self.checkers:
                self.checkers[name], _ = ck.step(self.checkers[name], ck.SwitchOff(), self.now())
                self.record(
                    f"{self.module}: checker {name} is switched off (maintenance, kept from "
                    f"before the restart); `hakit checker on {self.module} {name}`",
                    "warning",
                )

    @property
    def gates(self) -> bool:
        """Some checker guards the application (a farm node is a member only once it passes)."""
        return any(c.spec.action in ck.GUARDS for c in self.checkers.values())

    @property
    def waits_first(self) -> bool:
        """Some `wait` checker is active before the start (the module waits for it)."""
        return any(
            c.spec.when == "before-start" and c.spec.action == "wait"
            for c in self.checkers.values()
        )

    # --- running ---------------------------------------------------------------------------

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for name, cfg in self.by_name.items():
                if isinstance(cfg, CustomChecker) and cfg.mode == "stream":
                    tg.create_task(self._stream(name, cfg), name=f"checker {self.module}/{name}")
                else:
                    tg.create_task(self._loop(name, cfg), name=f"checker {self.module}/{name}")

    async def _active(self, name: str) -> int:
        """Wait until the checker is active; its epoch."""
        while self.checkers[name].health in (ck.Health.IDLE, ck.Health.OFF):
            self.wake[name].clear()
            await self.wake[name].wait()
        return self.epoch[name]

    async def _loop(self, name: str, cfg: CheckerBase) -> None:
        while True:
            epoch = await self._active(name)
            start = time.monotonic()
            ok, detail = await self.probes.probe(cfg, self.context())
            if self.epoch[name] == epoch:
                self._apply(name, ck.Probe(ok, detail))
            await asyncio.sleep(max(0.0, cfg.interval - (time.monotonic() - start)))

    async def _stream(self, name: str, cfg: CustomChecker) -> None:
        while True:
            epoch = await self._active(name)
            async with contextlib.aclosing(self.probes.stream(cfg, self.context())) as results:
                async for ok, detail in results:
                    if self.epoch[name] != epoch:
                        break  # idle or off now: the program is stopped (aclosing)
                    self._apply(name, ck.Probe(ok, detail))
            await asyncio.sleep(cfg.interval)

    # --- decisions -------------------------------------------------------------------------

    def _apply(self, name: str, ev: ck.Event) -> None:
        c = self.checkers[name]
        c2, changes = ck.step(c, ev, self.now())
        self.checkers[name] = c2
        if c2.health is not c.health:
            self.epoch[name] += 1
            if c2.health not in (ck.Health.IDLE, ck.Health.OFF):
                self.wake[name].set()
        for change in changes:
            budget, reaction = ck.react(self.budget, self.module, change, c2.spec, self.now())
            if budget != self.budget:
                self.budget = budget
                self._save()
            if isinstance(reaction, ck.Recover):
                self.on_recover(reaction)
            else:
                self.record(reaction.message, reaction.level)
        self._publish()

    def _publish(self, starting: bool = False) -> None:
        holds = ck.holds(self.checkers.values())
        if holds != self.holds or starting:  # a start always hears whether anything holds it
            self.holds = holds
            self.on_holds(holds)
        ready = ck.ready(self.checkers.values())
        if ready != self.is_ready:
            self.is_ready = ready
            failing = [
                f"{c.spec.kind} checker {c.name} {c.health.value}"
                + (f" ({c.detail})" if c.detail else "")
                for c in self.checkers.values()
                if c.spec.action in ck.GUARDS and c.health in (ck.Health.UNKNOWN, ck.Health.DOWN)
            ]
            self.on_ready(ready, "; ".join(failing) or "every checker passes")

    def follow(self, role: ck.Role) -> None:
        """The module's role changed: activate or idle each checker accordingly."""
        starting = self.role is ck.Role.STOPPED and role is not ck.Role.STOPPED
        self.role = role
        for name in self.checkers:
            c = self.checkers[name]
            c2, _ = ck.follow(c, role, self.now())  # (de)activation changes no health
            if c2 != c:
                self.checkers[name] = c2
                self.epoch[name] += 1
                if c2.health is not ck.Health.IDLE:
                    self.wake[name].set()
        self._publish(starting)

    def reset(self) -> None:
        """An operator command: the loop protection starts counting again."""
        if self.budget.times:
            self.budget = self.budget.reset()
            self._save()

    def switch(self, name: str | None, on: bool) -> str:
        """Maintenance switch of one checker (or all); the message for the operator."""
        if name is not None and name not in self.checkers:
            known = ", ".join(self.checkers) or "none"
            raise KeyError(f"{self.module} has no checker {name!r}; its checkers: {known}")
        names = [name] if name is not None else list(self.checkers)
        changed = []
        for n in names:
            before = self.checkers[n].health
            if (before is ck.Health.OFF) != on:
                continue
            self._apply(n, ck.SwitchOn() if on else ck.SwitchOff())
            changed.append(n)
        self.follow(self.role)
        self._save()
        word = "on" if on else "off"
        if not names:
            return f"{self.module} has no checkers"
        if not changed:
            return f"{self.module}: checker{'s' if len(names) > 1 else ''} already {word}"
        plural = "s" if len(changed) > 1 else ""
        return f"{self.module}: checker{plural} {', '.join(changed)} {word}"

    def _save(self) -> None:
        off = [n for n, c in self.checkers.items() if c.health is ck.Health.OFF]
        write_json(self.state_path, {"off": off, "recoveries": list(self.budget.times)})

    def status(self) -> dict[str, Any]:
        now = self.now()
        return {
            "checkers": {
                n: {
                    "type": c.spec.kind,
                    "what": c.spec.what,
                    "when": c.spec.when,
                    "action": c.spec.action,
                    "health": c.health.value,
                    "enabled": c.health is not ck.Health.OFF,
                    "detail": c.detail,
                    "since": c.since,
                    "good": c.good,
                    "bad": c.bad,
                }
                for n, c in self.checkers.items()
            },
            "recovery": {
                "max": self.budget.max,
                "window": self.budget.window,
                "used": len(self.budget.recent(now)),
            },
            "holds": list(self.holds),
        }
