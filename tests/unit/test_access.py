"""The admin plane's decisions (core/access.py): tokens, the merge of two nodes' stores, and the
route table that gives every endpoint of the API the role it needs (fail closed)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hakit.core.access import (
    Role,
    TokenRecord,
    allowed,
    authenticate,
    digest,
    merge,
    new_token,
    parse_token,
    route,
)
from hakit.tools.apidoc import example_path, openapi


def record(i: int, revoked: float | None = None) -> TokenRecord:
    _, tid, hashed = new_token(bytes([i]) * 8, bytes([i]) * 32)
    return TokenRecord(tid, f"t{i}", "control", hashed, 1.0, "test", revoked=revoked)


def test_a_new_token_parses_and_only_its_hash_is_kept() -> None:
    token, tid, hashed = new_token(b"\x07" * 8, b"\x09" * 32)
    assert parse_token(token) == (tid, token.split("_", 2)[2])
    assert token.split("_", 2)[2] not in hashed
    rec = TokenRecord(tid, "n", "monitor", hashed, 1.0, "test", expires=10.0)
    assert not isinstance(authenticate({tid: rec}, f"Bearer {token}", 5.0), str)
    assert authenticate({tid: rec}, f"Bearer {token}", 10.0) == f"API token {tid} (n) has expired"
    assert authenticate({tid: rec}, f"Basic {token}", 5.0) == (
        "the Authorization header must be `Bearer hkt_…`"
    )


RECORDS = st.lists(st.tuples(st.integers(0, 5), st.none() | st.floats(2.0, 100.0)), max_size=8).map(
    lambda xs: [record(i, r) for i, r in xs]
)


@given(RECORDS, RECORDS)
def test_merging_two_stores_converges_whatever_the_order(
    a: list[TokenRecord], b: list[TokenRecord]
) -> None:
    ab = merge(merge({}, a), b)
    ba = merge(merge({}, b), a)
    assert digest(ab) == digest(ba)
    assert digest(merge(ab, ab.values())) == digest(ab)  # idempotent
    for r in [*a, *b]:  # a revocation is never lost, the earliest wins
        if r.revoked is not None:
            got = ab[r.id].revoked
            assert got is not None
            assert got <= r.revoked


def test_a_revoked_token_stays_revoked_after_a_merge_with_an_older_copy() -> None:
    live = record(1)
    revoked = replace(live, revoked=5.0, revoked_by="root")
    assert merge({live.id: revoked}, [live])[live.id].revoked == 5.0
    assert merge({live.id: live}, [revoked])[live.id].revoked == 5.0


ROLE_OF = {
    ("GET", "/v1/state"): Role.MONITOR,
    ("GET", "/v1/stream"): Role.MONITOR,
    ("POST", "/v1/modules/app/swap"): Role.CONTROL,
    ("POST", "/v1/modules/app/checkers/web/off"): Role.CONTROL,
    ("POST", "/v1/modules/app/verify"): Role.CONTROL,
    ("POST", "/v1/modules"): Role.ADMIN,
    ("DELETE", "/v1/modules/app"): Role.ADMIN,
    ("POST", "/v1/cluster/apply"): Role.ADMIN,
    ("POST", "/v1/tokens"): Role.ADMIN,
    ("GET", "/v1/tokens"): Role.ADMIN,
}


@pytest.mark.parametrize(("method", "path"), list(ROLE_OF))
def test_each_role_may_do_what_the_documentation_says(method: str, path: str) -> None:
    r = route(method, path)
    assert r is not None
    assert r.needs == ROLE_OF[(method, path)]
    for role in Role:
        assert (allowed(role, r) is None) == (role >= ROLE_OF[(method, path)])


def test_every_endpoint_of_the_api_has_an_entry_in_the_route_table() -> None:
    """A new endpoint must be given a role: otherwise tokens are refused it (fail closed), and
    this test says which."""
    missing = [
        f"{m.upper()} {p}"
        for p, ops in openapi()["paths"].items()
        for m in ops
        if route(m.upper(), example_path(p)) is None
    ]
    assert missing == []


def test_unknown_routes_and_writes_are_refused_to_tokens() -> None:
    assert route("PUT", "/v1/state") is None
    assert allowed(Role.ADMIN, route("PATCH", "/v1/cluster")) == (
        "this request is not open to API tokens"
    )
    assert route("GET", "/v1/hello") is not None
    hello = route("GET", "/v1/hello")
    assert hello is not None
    assert hello.needs is None
