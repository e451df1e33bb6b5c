"""Checkers' pure core: rise/fall, activation by role, maintenance, loop protection, holds."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hakit.core import checks as ck
from hakit.core.outcomes import UnexpectedEvent


def spec(**kw: object) -> ck.Spec:
    base: dict[str, object] = {
        "name": "web",
        "kind": "tcp",
        "what": "tcp 127.0.0.1:80",
        "when": "primary",
        "action": "restart",
        "rise": 2,
        "fall": 3,
    }
    return ck.Spec(**(base | kw))  # type: ignore[arg-type]


def active(**kw: object) -> ck.Checker:
    c, _ = ck.follow(ck.Checker(spec(**kw)), ck.Role.PRIMARY, 0.0)
    return c


def feed(c: ck.Checker, results: str, t0: float = 1.0) -> tuple[ck.Checker, list[ck.Changed]]:
    out: list[ck.Changed] = []
    for i, r in enumerate(results):
        c, acts = ck.step(c, ck.Probe(r == "+", "ok" if r == "+" else "refused"), t0 + i)
        out += acts
    return c, out


def test_fall_failures_in_a_row_make_it_down_and_rise_successes_up() -> None:
    c = active()
    assert c.health is ck.Health.UNKNOWN
    c, changes = feed(c, "--+--+")  # never 3 failures in a row
    assert c.health is ck.Health.UNKNOWN
    assert changes == []
    c, changes = feed(c, "---")
    assert c.health is ck.Health.DOWN
    assert [ch.message for ch in changes] == ["tcp checker web failed 3 times (refused)"]
    c, changes = feed(c, "+-+")  # one success is not enough to be up again
    assert c.health is ck.Health.DOWN
    c, changes = feed(c, "++")
    assert c.health is ck.Health.UP
    assert changes[0].new is ck.Health.UP
    c, changes = feed(c, "-+-+")
    assert c.health is ck.Health.UP
    assert changes == []


@given(st.lists(st.booleans(), max_size=60), st.integers(1, 5), st.integers(1, 5))
def test_health_only_changes_after_rise_or_fall_results_in_a_row(
    results: list[bool], rise: int, fall: int
) -> None:
    c = active(rise=rise, fall=fall)
    history: list[bool] = []
    for i, ok in enumerate(results):
        before = c.health
        c, changes = ck.step(c, ck.Probe(ok, "x"), float(i))
        history.append(ok)
        if c.health is not before:
            needed = rise if ok else fall
            assert history[-needed:] == [ok] * needed
            assert len(changes) == 1
        else:
            assert changes == ()


def test_a_checker_is_active_only_in_its_roles_and_forgets_counts_when_idle() -> None:
    c = ck.Checker(spec(when="secondary"))
    c, _ = ck.follow(c, ck.Role.PRIMARY, 0.0)
    assert c.health is ck.Health.IDLE
    c, _ = ck.follow(c, ck.Role.SECONDARY, 1.0)
    assert c.health is ck.Health.UNKNOWN
    c, _ = feed(c, "--")
    c, _ = ck.follow(c, ck.Role.STARTED, 2.0)
    assert c.health is ck.Health.IDLE
    c, _ = ck.follow(c, ck.Role.SECONDARY, 3.0)
    c, _ = feed(c, "-")
    assert c.health is ck.Health.UNKNOWN  # the two earlier failures were forgotten
    before = ck.Checker(spec(when="before-start"))
    assert [r for r in ck.Role if before.spec.active(r)] == [
        ck.Role.STARTED,
        ck.Role.PRIMARY,
        ck.Role.SECONDARY,
        ck.Role.UP,
    ]


def test_maintenance_switch_stops_everything_until_switched_on() -> None:
    c = active()
    c, _ = feed(c, "---")
    c, changes = ck.step(c, ck.SwitchOff(), 10.0)
    assert c.health is ck.Health.OFF
    assert "switched off" in changes[0].message
    c, _ = ck.follow(c, ck.Role.STOPPED, 11.0)
    assert c.health is ck.Health.OFF
    c, changes = ck.step(c, ck.Probe(False, "late"), 12.0)  # a probe started before: dropped
    assert c.health is ck.Health.OFF
    assert changes == ()
    c, _ = ck.step(c, ck.SwitchOn(), 13.0)
    assert c.health is ck.Health.IDLE
    c, _ = ck.follow(c, ck.Role.PRIMARY, 14.0)
    assert c.health is ck.Health.UNKNOWN


def test_unexpected_events_are_errors() -> None:
    bad = ck.Checker(spec(), health=ck.Health.UP)
    table = dict(ck.TRANSITIONS)
    del ck.TRANSITIONS[(ck.Health.UP, "activate")]
    try:
        with pytest.raises(UnexpectedEvent):
            ck.step(bad, ck.Activate(), 1.0)
    finally:
        ck.TRANSITIONS.clear()
        ck.TRANSITIONS.update(table)
    for h in ck.Health:
        for ev in ("probe:ok", "probe:failed", "activate", "deactivate", "off", "on"):
            assert (h, ev) in ck.TRANSITIONS, (h, ev)


def down(s: ck.Spec) -> ck.Changed:
    return ck.Changed(s.name, ck.Health.UP, ck.Health.DOWN, f"{s.kind} checker {s.name} failed")


def test_loop_protection_turns_the_recovery_after_max_into_a_stop() -> None:
    s = spec()
    b = ck.Budget(max=2, window=3600)
    b, r = ck.react(b, "app", down(s), s, 10.0)
    assert r == ck.Recover(
        "restart", "restart of app: tcp checker web failed; restart 1 of 2 in 1 h", "web"
    )
    b, r = ck.react(b, "app", down(s), s, 20.0)
    assert isinstance(r, ck.Recover)
    assert r.message.endswith("restart 2 of 2 in 1 h")
    b, r = ck.react(b, "app", down(s), s, 30.0)
    assert isinstance(r, ck.Recover)
    assert r.action == "stop"
    assert "loop protection" in r.message
    assert "`hakit start app`" in r.message
    # outside the window the earlier ones no longer count
    b, r = ck.react(b, "app", down(s), s, 3700.0)
    assert isinstance(r, ck.Recover)
    assert r.action == "restart"
    # an operator command resets the count
    b = b.reset()
    assert b.recent(3701.0) == ()


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ("stopstart", ck.Recover),
        ("stop", ck.Recover),
        ("wait", ck.Report),
        ("none", ck.Report),
    ],
)
def test_each_action_gives_its_reaction(action: str, expected: type) -> None:
    s = spec(action=action)
    b, r = ck.react(ck.Budget(), "app", down(s), s, 1.0)
    assert isinstance(r, expected)
    if action == "stop":
        assert b.times == ()  # a stop is not a recovery: not counted


def test_holds_and_ready() -> None:
    wait = ck.Checker(spec(name="nic", kind="interface", action="wait"), ck.Health.DOWN)
    wait = ck.Checker(wait.spec, ck.Health.DOWN, detail="eth0 has no link")
    pre = ck.Checker(spec(name="db", kind="module", when="before-start", action="wait"))
    pre, _ = ck.follow(pre, ck.Role.STARTED, 0.0)
    app = active()
    assert ck.holds([wait, pre, app]) == (
        "interface checker nic down (eth0 has no link)",
        "module checker db: waiting for tcp 127.0.0.1:80 to be up",
    )
    assert not ck.ready([app])  # unknown: not yet
    app, _ = feed(app, "++")
    assert ck.ready([app, wait, pre])  # wait checkers hold, they do not gate membership
    off = ck.Checker(spec(), ck.Health.OFF)
    assert ck.ready([off])


def test_a_wait_checker_that_holds_the_module_keeps_probing_until_it_is_back() -> None:
    c = active(action="wait", fall=1, rise=1)
    c, _ = feed(c, "-")
    assert c.health is ck.Health.DOWN
    c, _ = ck.follow(c, ck.Role.STARTED, 5.0)  # the module left the primary role: still probing
    assert c.health is ck.Health.DOWN
    c, _ = feed(c, "+", 6.0)
    assert c.health is ck.Health.UP
    c, _ = ck.follow(c, ck.Role.STARTED, 7.0)  # back, and not active in this role: idle now
    assert c.health is ck.Health.IDLE
    d = active(action="wait", fall=1)
    d, _ = feed(d, "-")
    d, _ = ck.follow(d, ck.Role.STOPPED, 8.0)  # the module stopped: nothing holds any more
    assert d.health is ck.Health.IDLE
