"""Failure detectors (checkers) and the recovery policy. Pure and table-driven.

Each checker is a small machine over its health: IDLE (not active where the module is now),
UNKNOWN (active, not enough results yet), UP, DOWN, and OFF (switched off by an operator for
maintenance). Probe results move it: `fall` failures in a row make it DOWN, `rise` successes in
a row make it UP, so a single failed probe never triggers anything. `step(checker, event, now)`
returns the new checker and, when its health changed, a `Changed` action; a (health, event)
pair that is not in `TRANSITIONS` raises `UnexpectedEvent`.

What a module does about its checkers is decided here too, without any I/O:
- `react(budget, checker, now)`: a checker that went DOWN asks for its action; `restart` and
  `stopstart` are automatic recoveries counted by the loop protection (`Budget`): one more
  than `max` within `window` turns the action into `stop`, with the reason;
- `holds(checkers)`: the reasons the module must wait (a `wait` checker that is DOWN, or one
  active before the start that has not answered yet);
- `ready(checkers)`: every checker that guards the application passes (a farm node joins the
  farm only then).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from enum import StrEnum

from hakit.core.outcomes import UnexpectedEvent

RECOVERIES = frozenset({"restart", "stopstart"})
GUARDS = frozenset({"restart", "stopstart", "stop"})


class Health(StrEnum):
    IDLE = "idle"
    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"
    OFF = "off"


class Role(StrEnum):
    """Where the module is on this node, as far as checkers care."""

    STOPPED = "stopped"
    STARTED = "started"  # started but not running the application in a steady role
    PRIMARY = "primary"
    SECONDARY = "secondary"
    UP = "up"  # a farm node running the application


ACTIVE_IN: dict[str, frozenset[Role]] = {
    "before-start": frozenset({Role.STARTED, Role.PRIMARY, Role.SECONDARY, Role.UP}),
    "primary": frozenset({Role.PRIMARY}),
    "secondary": frozenset({Role.SECONDARY}),
    "every-node": frozenset({Role.PRIMARY, Role.SECONDARY, Role.UP}),
}


@dataclass(frozen=True)
class Spec:
    """What the decisions need of a checker's configuration."""

    name: str
    kind: str  # process, tcp, http, ...
    what: str  # "tcp 127.0.0.1:80"
    when: str  # before-start | primary | secondary | every-node
    action: str  # restart | stopstart | stop | wait | none
    rise: int = 2
    fall: int = 3

    def active(self, role: Role) -> bool:
        return role in ACTIVE_IN[self.when]


@dataclass(frozen=True)
class Checker:
    spec: Spec
    health: Health = Health.IDLE
    good: int = 0  # successes in a row
    bad: int = 0  # failures in a row
    detail: str = ""  # the last probe's sentence
    since: float = 0.0  # when `health` last changed

    @property
    def name(self) -> str:
        return self.spec.name


# events


@dataclass(frozen=True)
class Probe:
    ok: bool
    detail: str


@dataclass(frozen=True)
class Activate:
    """The module entered a role where this checker is active."""


@dataclass(frozen=True)
class Deactivate:
    """The module left every role where this checker is active (its counts are forgotten)."""


@dataclass(frozen=True)
class SwitchOff:
    """Maintenance: an operator switched the checker off (persisted by the runner)."""


@dataclass(frozen=True)
class SwitchOn:
    """Maintenance over: the checker starts again from IDLE."""


Event = Probe | Activate | Deactivate | SwitchOff | SwitchOn


def event_kind(ev: Event) -> str:
    if isinstance(ev, Probe):
        return "probe:ok" if ev.ok else "probe:failed"
    return {
        Activate: "activate",
        Deactivate: "deactivate",
        SwitchOff: "off",
        SwitchOn: "on",
    }[type(ev)]


# actions


@dataclass(frozen=True)
class Changed:
    """The checker's health changed (the runner reacts, and records the sentence)."""

    name: str
    old: Health
    new: Health
    message: str


Result = tuple[Checker, tuple[Changed, ...]]
Handler = Callable[[Checker, Event, float], Result]


def _to(c: Checker, health: Health, now: float, message: str, **kw: object) -> Result:
    c2 = replace(c, health=health, since=now, **kw)  # type: ignore[arg-type]
    return c2, (Changed(c.name, c.health, health, message),)


def _activate(c: Checker, ev: Event, now: float) -> Result:
    return replace(c, health=Health.UNKNOWN, good=0, bad=0, detail="", since=now), ()


def _deactivate(c: Checker, ev: Event, now: float) -> Result:
    return replace(c, health=Health.IDLE, good=0, bad=0, since=now), ()


def _stay(c: Checker, ev: Event, now: float) -> Result:
    """Bookkeeping that changes nothing (already in that condition)."""
    return c, ()


def _late(c: Checker, ev: Event, now: float) -> Result:
    """A probe that was started before the checker went idle or off: its result is dropped."""
    return c, ()


def _off(c: Checker, ev: Event, now: float) -> Result:
    return _to(c, Health.OFF, now, f"checker {c.name} switched off (maintenance)", good=0, bad=0)


def _on(c: Checker, ev: Event, now: float) -> Result:
    return _to(c, Health.IDLE, now, f"checker {c.name} switched on", good=0, bad=0, detail="")


def _probe(c: Checker, ev: Event, now: float) -> Result:
    assert isinstance(ev, Probe)
    s = c.spec
    if ev.ok:
        c2 = replace(c, good=c.good + 1, bad=0, detail=ev.detail)
        if c.health is not Health.UP and c2.good >= s.rise:
            return _to(
                c2,
                Health.UP,
                now,
                f"{s.kind} checker {s.name} up: {ev.detail} ({c2.good} in a row)",
            )
        return c2, ()
    c2 = replace(c, good=0, bad=c.bad + 1, detail=ev.detail)
    if c.health is not Health.DOWN and c2.bad >= s.fall:
        return _to(
            c2,
            Health.DOWN,
            now,
            f"{s.kind} checker {s.name} failed {c2.bad} time{'s' if c2.bad > 1 else ''} "
            f"({ev.detail})",
        )
    return c2, ()


H = Health
TRANSITIONS: dict[tuple[Health, str], Handler] = {}
for _h in (H.UNKNOWN, H.UP, H.DOWN):
    TRANSITIONS[(_h, "probe:ok")] = _probe
    TRANSITIONS[(_h, "probe:failed")] = _probe
    TRANSITIONS[(_h, "activate")] = _stay
    TRANSITIONS[(_h, "deactivate")] = _deactivate
for _h in (H.IDLE, H.UNKNOWN, H.UP, H.DOWN):
    TRANSITIONS[(_h, "off")] = _off
    TRANSITIONS[(_h, "on")] = _stay
TRANSITIONS.update(
    {
        (H.IDLE, "activate"): _activate,
        (H.IDLE, "deactivate"): _stay,
        (H.IDLE, "probe:ok"): _late,
        (H.IDLE, "probe:failed"): _late,
        (H.OFF, "on"): _on,
        (H.OFF, "off"): _stay,
        (H.OFF, "activate"): _stay,
        (H.OFF, "deactivate"): _stay,
        (H.OFF, "probe:ok"): _late,
        (H.OFF, "probe:failed"): _late,
    }
)

TARGETS: dict[Handler, frozenset[Health]] = {
    _activate: frozenset({H.UNKNOWN}),
    _deactivate: frozenset({H.IDLE}),
    _off: frozenset({H.OFF}),
    _on: frozenset({H.IDLE}),
    _probe: frozenset({H.UP, H.DOWN}),
}
"""Where each handler may lead (besides staying put); `step` enforces it."""


def targets(health: Health, kind: str) -> frozenset[Health]:
    return TARGETS.get(TRANSITIONS[(health, kind)], frozenset()) | {health}


def step(c: Checker, ev: Event, now: float) -> Result:
    kind = event_kind(ev)
    handler = TRANSITIONS.get((c.health, kind))
    if handler is None:
        raise UnexpectedEvent(f"checker {c.name}: {kind} while {c.health.value}")
    c2, actions = handler(c, ev, now)
    if c2.health not in targets(c.health, kind):
        raise UnexpectedEvent(f"checker {c.name}: {kind} in {c.health.value} led to {c2.health}")
    return c2, actions


def follow(c: Checker, role: Role, now: float) -> Result:
    """Activate or deactivate the checker for the module's role. A `wait` checker that is
    down keeps probing while the module is started, whatever its role: it holds the module and
    must see the resource come back."""
    if c.health is Health.OFF:
        return c, ()
    holding = c.spec.action == "wait" and c.health is Health.DOWN and role is not Role.STOPPED
    active = c.spec.active(role) or holding
    if active and c.health is Health.IDLE:
        return step(c, Activate(), now)
    if not active and c.health is not Health.IDLE:
        return step(c, Deactivate(), now)
    return c, ()


# --- what the module does about its checkers ----------------------------------------------------


@dataclass(frozen=True)
class Budget:
    """Loop protection: the times of the automatic recoveries within the window."""

    max: int = 3
    window: float = 86400.0
    times: tuple[float, ...] = ()

    def recent(self, now: float) -> tuple[float, ...]:
        return tuple(t for t in self.times if now - t < self.window)

    def reset(self) -> Budget:
        return replace(self, times=())


@dataclass(frozen=True)
class Recover:
    """Ask the module's machine for `action` (restart, stopstart, stop), with the sentence."""

    action: str
    message: str
    checker: str


@dataclass(frozen=True)
class Report:
    """Nothing to do but say it (action `none`, `wait`, or a checker coming back up)."""

    message: str
    level: str = "info"


Reaction = Recover | Report


def window_text(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"


def react(
    budget: Budget, module: str, change: Changed, spec: Spec, now: float
) -> tuple[Budget, Reaction]:
    """What a module does when one of its checkers changed health."""
    if change.new is not Health.DOWN:
        level = "info" if change.new in (Health.UP, Health.IDLE) else "warning"
        return budget, Report(f"{module}: {change.message}", level)
    action = spec.action
    if action == "none":
        return budget, Report(f"{module}: {change.message}; action none: reported only", "warning")
    if action == "wait":
        return budget, Report(
            f"{module}: {change.message}; stopping the application and waiting for it to come back",
            "warning",
        )
    if action == "stop":
        return budget, Recover("stop", f"stop of {module}: {change.message}", spec.name)
    recent = budget.recent(now)
    span = window_text(budget.window)
    if len(recent) >= budget.max:
        return replace(budget, times=recent), Recover(
            "stop",
            f"stop of {module}: {change.message}; {action} not tried: {len(recent)} automatic "
            f"recoveries in {span} already (loop protection, recovery.max {budget.max}); "
            f"`hakit start {module}` once repaired",
            spec.name,
        )
    budget2 = replace(budget, times=(*recent, now))
    n = len(recent) + 1
    return budget2, Recover(
        action,
        f"{action} of {module}: {change.message}; {action} {n} of {budget.max} in {span}",
        spec.name,
    )


def holds(checkers: Iterable[Checker]) -> tuple[str, ...]:
    """Why the module must wait: `wait` checkers that are down, or not yet up before a start."""
    out = []
    for c in checkers:
        s = c.spec
        if s.action != "wait" or c.health in (Health.IDLE, Health.OFF, Health.UP):
            continue
        if c.health is Health.DOWN:
            out.append(f"{s.kind} checker {s.name} down ({c.detail or s.what})")
        elif s.when == "before-start":
            out.append(f"{s.kind} checker {s.name}: waiting for {s.what} to be up")
    return tuple(out)


def ready(checkers: Iterable[Checker]) -> bool:
    """Every active checker that guards the application (restart, stopstart, stop) passes."""
    return all(
        c.health is Health.UP
        for c in checkers
        if c.spec.action in GUARDS and c.health not in (Health.IDLE, Health.OFF)
    )
