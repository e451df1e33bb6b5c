"""The etcd witness's lease rules (core/etcd_lease.py), one case per rule."""

from __future__ import annotations

import pytest

from hakit.core import etcd_lease as el

FREE = el.State(None, None, 0, None, 0, ())


def state(**kw: object) -> el.State:
    return el.State(**{**FREE.__dict__, **kw})


def ask(s: el.State, kw: dict[str, object]) -> el.Grant | el.Refuse:
    """`n2` (etcd lease 2) asks for `db`."""
    args: dict[str, object] = {"asked_for": None, "grace": 0.5, "alone": False, "force": False}
    return el.decide(s, "n2", "db", 2, **(args | kw))  # type: ignore[arg-type]


HELD = el.Holder("n1", 1, 7)


@pytest.mark.parametrize(
    ("s", "kw", "expected"),
    [
        (FREE, {}, el.Grant(None, "granted (never held)")),
        (state(holder=HELD), {}, el.Refuse("n1", "held by n1", register=True)),
        # already a contender: not registered again (its first request keeps its time)
        (
            state(holder=HELD, contenders=(("n2", 9),)),
            {},
            el.Refuse("n1", "held by n1", register=False),
        ),
        (state(holder=el.Holder("n2", 2, 7)), {}, el.Grant(None, "renewed")),
        (
            state(holder=el.Holder("n2", 5, 7)),
            {},
            el.Grant(None, "granted (held by this node before)"),
        ),
        (state(last=("n1", True), last_revision=3), {}, el.Grant(None, "granted (n1 released it)")),
        (
            state(last=("n2", False), last_revision=3),
            {},
            el.Grant(None, "granted (this node held it last)"),
        ),
        # expired: only once this node's own first request is `grace` old
        (
            state(last=("n1", False), last_revision=3),
            {},
            el.Refuse("", "n1's lease expired: waiting for its grace of 0.5 s", register=True),
        ),
        (
            state(last=("n1", False), last_revision=3, contenders=(("n2", 9),)),
            {"asked_for": 0.4},
            el.Refuse("", "n1's lease expired: waiting for its grace of 0.5 s", register=False),
        ),
        (
            state(last=("n1", False), last_revision=3, contenders=(("n2", 9),)),
            {"asked_for": 0.5},
            el.Grant(None, "granted (n1's lease expired)"),
        ),
        # the earliest contender wins
        (
            state(contenders=(("n2", 9), ("n3", 8))),
            {},
            el.Refuse("", "n3 asked first", register=False),
        ),
        (state(contenders=(("n3", 8),)), {}, el.Refuse("", "n3 asked first", register=True)),
        (state(contenders=(("n2", 8), ("n3", 9))), {}, el.Grant(None, "granted (never held)")),
        # outdated copies
        (
            state(latest="n1", latest_revision=4),
            {},
            el.Refuse(
                "",
                "n1 served db without n2 and was granted the lease then: the copy on n2 is "
                "outdated (`hakit primforce db` on n2 gives up what n1 wrote alone)",
                register=False,
            ),
        ),
        (
            state(latest="n1", latest_revision=4),
            {"force": True},
            el.Grant("n2", "granted (never held)"),
        ),
        (state(), {"alone": True}, el.Grant("n2", "granted (never held)")),
        (state(latest="n2", latest_revision=4), {}, el.Grant(None, "granted (never held)")),
    ],
)
def test_decide(s: el.State, kw: dict[str, object], expected: el.Grant | el.Refuse) -> None:
    assert ask(s, kw) == expected


@pytest.mark.parametrize(("ttl", "grace", "etcd"), [(1.0, 0.5, 2), (0.6, 0.3, 1), (1.5, 0.5, 3)])
def test_etcds_ttl_covers_the_nodes_ttl_the_grace_and_a_margin(
    ttl: float, grace: float, etcd: int
) -> None:
    assert el.etcd_ttl(ttl, grace) == etcd >= ttl + grace + el.MARGIN - 1e-9
    assert el.believed(ttl, grace, etcd) == ttl
    assert el.believed(ttl, grace, 1) <= max(0.0, 1 - grace - el.MARGIN)  # a shorter etcd TTL


def test_last_round_trips_and_garbage_is_nothing() -> None:
    assert el.decode_last(el.encode_last("n1", True)) == ("n1", True)
    for junk in (b"", b"[]", b"{", b'{"node": 1, "released": true}'):
        assert el.decode_last(junk) is None
