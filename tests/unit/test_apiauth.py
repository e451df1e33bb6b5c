"""Signed node-to-node API requests: authentic ones pass, everything else is refused with why."""

from __future__ import annotations

import pytest

from hakit.wire.apiauth import MAX_SKEW, Verifier, api_key, sign

KEY = api_key(b"s" * 32, "demo")
TARGET = "/v1/modules/app/stop"


def headers(
    method: str = "POST",
    target: str = TARGET,
    body: bytes = b"",
    now: float = 1000.0,
    nonce: str = "n1",
    to: str = "node2",
    boot: str = "boot-a",
) -> dict[str, str]:
    h = sign(KEY, "node1", to, boot, method, target, body, now, nonce)
    return {k.lower(): v for k, v in h.items()}


def verifier(key: bytes = KEY, node: str = "node2", boot: str = "boot-a") -> Verifier:
    return Verifier(key, node, boot)


def test_authentic_request_passes_once() -> None:
    v = verifier()
    h = headers()
    assert v.precheck(h, 1000.5) is None
    assert v.check(h, "POST", TARGET, b"", 1000.5) is None
    assert v.precheck(h, 1001.0) == "replayed request (nonce already used)"
    assert v.check(h, "POST", TARGET, b"", 1001.0) == "replayed request (nonce already used)"


def test_tampering_and_wrong_secret_are_refused() -> None:
    v = verifier()
    h = headers()
    assert "authentication failed" in str(v.check(h, "POST", "/v1/modules/app/start", b"", 1000))
    assert "authentication failed" in str(v.check(h, "GET", TARGET, b"", 1000))
    assert "authentication failed" in str(v.check(h, "POST", TARGET, b"x", 1000))
    other = verifier(api_key(b"t" * 32, "demo"))
    assert "authentication failed" in str(other.check(h, "POST", TARGET, b"", 1000))
    foreign = verifier(api_key(b"s" * 32, "other-cluster"))
    assert "authentication failed" in str(foreign.check(h, "POST", TARGET, b"", 1000))


def test_a_request_for_another_node_or_boot_is_refused() -> None:
    h = headers()
    assert verifier(node="node3").check(h, "POST", TARGET, b"", 1000) == (
        "request meant for node 'node2', this is 'node3'"
    )
    assert verifier(boot="boot-b").check(h, "POST", TARGET, b"", 1000) == (
        "request signed for another boot of this daemon (it restarted): retry"
    )
    # the target and the boot are signed: rewriting the headers breaks the MAC
    forged = h | {"x-hakit-to": "node3", "x-hakit-boot": "boot-b"}
    why = verifier(node="node3", boot="boot-b").check(forged, "POST", TARGET, b"", 1000)
    assert why == "authentication failed: not signed with this cluster's secret"


@pytest.mark.parametrize("when", ["nan", "NaN", "inf", "-inf", "1e400", "x", ""])
def test_a_time_that_is_not_a_finite_number_is_refused(when: str) -> None:
    h = headers() | {"x-hakit-time": when}
    why = verifier().check(h, "POST", TARGET, b"", 1000)
    assert why is not None
    assert "malformed x-hakit-time header" in why


@pytest.mark.parametrize("header", ["x-hakit-auth", "x-hakit-node", "x-hakit-nonce"])
def test_non_ascii_or_oversized_headers_are_refused(header: str) -> None:
    v = verifier()
    assert v.check(headers() | {header: "é" * 8}, "POST", TARGET, b"", 1000) == (
        f"malformed {header} header: not printable ASCII"
    )
    assert v.check(headers() | {header: "a" * 65}, "POST", TARGET, b"", 1000) == (
        f"malformed {header} header: 1 to 64 characters"
    )


def test_clock_skew_and_missing_headers() -> None:
    v = verifier()
    late = v.check(headers(), "POST", TARGET, b"", 1000 + MAX_SKEW + 1)
    assert late is not None
    assert "synchronise the clocks" in late
    h = headers()
    del h["x-hakit-auth"]
    assert v.check(h, "POST", TARGET, b"", 1000) == "missing authentication headers: x-hakit-auth"
