"""Join tokens (pure): their form, the member's book — once, before expiry, for one node —,
throttled guesses, the CA fingerprint check of the joiner, the join protocol's messages."""

from __future__ import annotations

import hashlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st

from hakit.core import jointoken as jt
from hakit.tls import NotAMember, ca_fingerprint, identity, member_node
from hakit.wire import join as wire

CA_HASH = "ab" * 32
R1, R2, R3 = (bytes([i]) * jt.RANDOM_BYTES for i in (1, 2, 3))


def token(random: bytes = R1) -> jt.Token:
    return jt.make_token(random, CA_HASH)


@given(st.binary(min_size=jt.RANDOM_BYTES, max_size=jt.RANDOM_BYTES))
def test_a_printed_token_parses_back(random: bytes) -> None:
    t = jt.make_token(random, CA_HASH)
    assert jt.parse_token(str(t)) == t
    assert jt.parse_token(f"  {str(t).upper()}\n") == t
    assert len(str(t)) == 3 + 1 + 8 + 1 + 32 + 1 + 64


@given(st.text(max_size=120))
def test_anything_else_is_not_a_token(text: str) -> None:
    if text.strip().lower().startswith("hk1-") and len(text.strip()) == 110:
        return
    with pytest.raises(jt.TokenFormatError, match="expected hk1-ID-SECRET-CAHASH"):
        jt.parse_token(text)


def test_the_member_keeps_only_a_hash_of_the_secret() -> None:
    t = token()
    book = jt.issue(jt.Book(), t, "node2", now=100.0, ttl=900)
    [entry] = book.entries.values()
    assert t.secret not in repr(book)
    assert entry.digest == hashlib.sha256(f"hk1|{t.id}|{t.secret}".encode()).hexdigest()
    assert (entry.node, entry.expires) == ("node2", 1000.0)


def test_a_token_admits_its_node_once() -> None:
    t = token()
    book = jt.issue(jt.Book(), t, "node2", 100.0, 900)
    assert book.is_open(100.0)
    book, got = jt.redeem(book, t.credential, "10.0.0.2", 200.0)
    assert got == jt.Granted("node2", t.id)
    assert not book.is_open(200.0)  # the listener may close
    book, again = jt.redeem(book, t.credential, "10.0.0.3", 260.0)
    assert isinstance(again, jt.Denied)
    assert again.code == "used"
    assert "was used by 10.0.0.2 to join as node2 1 min 0 s ago" in again.reason


def test_an_expired_token_says_so() -> None:
    t = token()
    book = jt.issue(jt.Book(), t, "node2", 100.0, 60)
    assert book.next_expiry(100.0) == 160.0
    assert not book.is_open(160.0)
    _, got = jt.redeem(book, t.credential, "10.0.0.2", 165.0)
    assert isinstance(got, jt.Denied)
    assert got.code == "expired"
    assert f"token {t.id} expired 5 s ago (it was valid for 1 min 0 s)" in got.reason


def test_a_wrong_secret_is_not_valid_whatever_the_id() -> None:
    t = token()
    book = jt.issue(jt.Book(), t, "node2", 100.0, 900)
    for cred in (f"{t.id}-{'0' * 32}", f"{'9' * 8}-{t.secret}", "junk"):
        book, got = jt.redeem(book, cred, "10.0.0.9", 101.0)
        assert isinstance(got, jt.Denied)
        assert got.code in ("unknown", "malformed")
    assert book.is_open(101.0)  # three guesses revoke nothing
    _, got = jt.redeem(book, t.credential, "10.0.0.2", 102.0)
    assert isinstance(got, jt.Granted)


def test_other_tokens_of_a_node_that_joined_are_revoked() -> None:
    a, b, c = token(R1), token(R2), token(R3)
    book = jt.Book()
    for t, node in ((a, "node2"), (b, "node2"), (c, "node3")):
        book = jt.issue(book, t, node, 100.0, 900)
    book, _ = jt.redeem(book, a.credential, "10.0.0.2", 110.0)
    book, got = jt.redeem(book, b.credential, "10.0.0.2", 111.0)
    assert isinstance(got, jt.Denied)
    assert got.code == "revoked"
    assert "node2 joined with token" in got.reason
    assert [e.node for e in book.outstanding(111.0)] == ["node3"]


def test_guesses_are_throttled_per_address_then_every_token_revoked() -> None:
    t = token()
    book = jt.issue(jt.Book(), t, "node2", 100.0, 900)
    now = 100.0
    for _ in range(jt.FAILS_PER_ADDRESS):
        book, _ = jt.redeem(book, "00000000-" + "0" * 32, "10.0.0.66", now)
    book, got = jt.redeem(book, t.credential, "10.0.0.66", now + 1)
    assert isinstance(got, jt.Denied)
    assert got.code == "throttled"
    assert "too many wrong join tokens from 10.0.0.66: try again in 59 s" in got.reason
    # another address is not throttled, and the window passes
    _, ok = jt.redeem(book, t.credential, "10.0.0.2", now + 2)
    assert isinstance(ok, jt.Granted)
    _, later = jt.redeem(book, t.credential, "10.0.0.66", now + jt.FAIL_WINDOW + 1)
    assert isinstance(later, jt.Granted)
    # many addresses guessing: past FAILS_TOTAL every outstanding token is revoked
    for i in range(jt.FAILS_TOTAL):
        book, _ = jt.redeem(book, "00000000-" + "0" * 32, f"10.1.{i // 250}.{i % 250}", now + 3)
    assert not book.is_open(now + 3)
    _, got = jt.redeem(book, t.credential, "10.0.0.2", now + 4)
    assert isinstance(got, jt.Denied)
    assert got.code == "revoked"
    assert f"revoked after {jt.FAILS_TOTAL} wrong join attempts" in got.reason


def test_tokens_are_bounded_and_forgotten_after_a_while() -> None:
    book = jt.Book()
    for i in range(jt.MAX_OUTSTANDING):
        book = jt.issue(book, jt.make_token(bytes([i + 10]) * jt.RANDOM_BYTES, CA_HASH), "n", 0, 60)
    with pytest.raises(jt.TooManyTokens):
        jt.issue(book, token(R3), "n", 1.0, 60)
    later = jt.issue(book, token(R3), "n", 60 + jt.KEEP_SPENT, 60)
    assert list(later.entries) == [token(R3).id]
    with pytest.raises(ValueError, match="at most 24 h"):
        jt.issue(jt.Book(), token(), "n", 0, jt.MAX_TTL + 1)


# --- the joiner's check of the member -------------------------------------------------------


def der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


def test_the_member_is_recognised_by_the_ca_fingerprint_only() -> None:
    ours = identity(b"s" * 32, "shop", "alpha")
    fp = ca_fingerprint(ours.ca_pem)
    assert member_node(der(ours.cert_pem), ours.ca_pem, fp, "shop") == "alpha"
    theirs = identity(b"t" * 32, "shop", "alpha")  # same names, another secret
    with pytest.raises(NotAMember, match="its cluster CA has the fingerprint"):
        member_node(der(theirs.cert_pem), theirs.ca_pem, fp, "shop")
    # our CA sent along with a certificate it did not sign
    with pytest.raises(NotAMember, match="not signed by the cluster CA"):
        member_node(der(theirs.cert_pem), ours.ca_pem, fp, "shop")
    with pytest.raises(NotAMember, match="names no node of cluster other"):
        member_node(der(ours.cert_pem), ours.ca_pem, fp, "other")


def test_join_messages_are_bounded_and_checked() -> None:
    h = wire.decode_hello(wire.hello("shop", "alpha", "PEM").rstrip(b"\n"))
    assert (h.cluster, h.node, h.ca_pem) == ("shop", "alpha", "PEM")
    with pytest.raises(wire.JoinProtocolError, match="longer than"):
        wire.decode_request(b"{" + b" " * wire.REQUEST_LIMIT + b"}")
    with pytest.raises(wire.JoinProtocolError, match="not a hakit join listener"):
        wire.decode_hello(b'{"hakit": "other"}')
    with pytest.raises(wire.JoinProtocolError, match="version 2"):
        wire.decode_hello(b'{"hakit": "join", "v": 2}')
    assert wire.decode_answer(wire.refused("no").rstrip()) == "no"
    ok = wire.decode_answer(wire.admitted("beta", "cluster: shop\n", b"k\x00ey"))
    assert ok == wire.Admitted("beta", "cluster: shop\n", b"k\x00ey")
    with pytest.raises(wire.JoinProtocolError, match="malformed secret"):
        wire.decode_answer(b'{"ok": true, "node": "b", "cluster_yaml": "", "secret": "zz"}')
