"""Signed node-to-node API requests: authentic ones pass, everything else is refused with why."""

from __future__ import annotations

from hakit.wire.apiauth import MAX_SKEW, Verifier, api_key, sign

KEY = api_key(b"s" * 32, "demo")


def headers(
    method: str = "POST",
    target: str = "/v1/modules/app/stop",
    body: bytes = b"",
    now: float = 1000.0,
    nonce: str = "n1",
) -> dict[str, str]:
    h = sign(KEY, "node1", method, target, body, now, nonce)
    return {k.lower(): v for k, v in h.items()}


def test_authentic_request_passes_once() -> None:
    v = Verifier(KEY)
    h = headers()
    assert v.check(h, "POST", "/v1/modules/app/stop", b"", 1000.5) is None
    assert v.check(h, "POST", "/v1/modules/app/stop", b"", 1001.0) == (
        "replayed request (nonce already used)"
    )


def test_tampering_and_wrong_secret_are_refused() -> None:
    v = Verifier(KEY)
    h = headers()
    assert "authentication failed" in str(v.check(h, "POST", "/v1/modules/app/start", b"", 1000))
    assert "authentication failed" in str(v.check(h, "GET", "/v1/modules/app/stop", b"", 1000))
    assert "authentication failed" in str(v.check(h, "POST", "/v1/modules/app/stop", b"x", 1000))
    other = Verifier(api_key(b"t" * 32, "demo"))
    assert "authentication failed" in str(other.check(h, "POST", "/v1/modules/app/stop", b"", 1000))
    foreign = Verifier(api_key(b"s" * 32, "other-cluster"))
    assert "authentication failed" in str(
        foreign.check(h, "POST", "/v1/modules/app/stop", b"", 1000)
    )


def test_clock_skew_and_missing_headers() -> None:
    v = Verifier(KEY)
    late = v.check(headers(), "POST", "/v1/modules/app/stop", b"", 1000 + MAX_SKEW + 1)
    assert late is not None
    assert "synchronise the clocks" in late
    h = headers()
    del h["x-hakit-auth"]
    assert v.check(h, "POST", "/v1/modules/app/stop", b"", 1000) == (
        "missing authentication headers: x-hakit-auth"
    )
