"""Every wire decoder and every configuration loader, fed random input: a documented error or a
valid value, never another exception, and never longer than a bound (hypothesis `deadline`).

The `@example`s are inputs that once broke a decoder: kept as regression cases.
"""

from __future__ import annotations

import contextlib
import json
import math
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hakit.adapters.statefile import StateFileError, read_json
from hakit.config.load import load_cluster, parse_yaml
from hakit.config.model import Cluster
from hakit.config.module import load_module
from hakit.config.starter import new_secret, render_cluster_yaml
from hakit.config.witness import load_witness
from hakit.core import farm as fm
from hakit.core import mirror_model as mm
from hakit.errors import ConfigError, HakitError
from hakit.wire import apiauth
from hakit.wire import heartbeat as hb
from hakit.wire import replication as rp
from hakit.wire import witness as wt

FAST = settings(
    max_examples=150,
    deadline=1000,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SECRET = bytes(range(32))

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda kids: (
        st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=3), kids, max_size=6)
    ),
    max_leaves=30,
)
PEER_KEYS = st.fixed_dictionaries(
    {},
    optional=dict.fromkeys(("g", "i", "h", "a", "c", "r", "t", "v", "b", "p", "w", "o"), JSON),
)
FARM_KEYS = st.fixed_dictionaries(
    {"k": st.just("farm")},
    optional=dict.fromkeys(("m", "i", "s", "v", "o", "a", "d", "st", "su"), JSON),
)


# --- heartbeats ---------------------------------------------------------------------------------

CODEC = hb.Codec("shop", SECRET, "node2")


def heartbeat_ok(data: bytes) -> None:
    try:
        got = CODEC.decode(data, "net1")
    except hb.DecodeError:
        return
    assert isinstance(got, hb.Heartbeat)


@FAST
@given(st.binary(max_size=300))
def test_heartbeat_datagrams(data: bytes) -> None:
    heartbeat_ok(data)


@FAST
@given(st.binary(max_size=200))
@example(b"\x05node1\x05node2" + b"\x00" * 10)  # authenticated but truncated
def test_authenticated_heartbeats_with_random_bodies(tail: bytes) -> None:
    """What a peer with the key (or a bug) could send: the MAC is right, the rest random."""
    good = CODEC.encode(hb.Heartbeat("node1", "node2", "net1", b"\x00" * 16, 1, 1.0, b"", b"{}"))
    head = good[: hb._HEAD.size]
    body = head + tail
    heartbeat_ok(body + CODEC._mac(body))


@FAST
@given(st.text(max_size=60))
@example("5b" * 8000)  # 8 000 nested lists: RecursionError in json.loads, once
@example(("[" * 3000 + "]" * 3000).encode().hex())
@example(json.dumps({"m": []}).encode().hex())
def test_module_payloads_in_heartbeats(text: str) -> None:
    got = hb.module_payload(text, "web")
    assert got is None or isinstance(got, (dict, list, str, int, float, bool))


# --- what peers publish -------------------------------------------------------------------------


@FAST
@given(PEER_KEYS | JSON)
@example({"g": float("inf"), "i": "x", "h": [], "a": 1, "c": 1, "r": "p", "p": "PRIM", "w": ""})
@example({"g": 1, "i": "x", "h": [[1e308 * 10, "y"]], "a": 1, "c": 1, "r": "p"})
@example(
    {"g": 1, "i": "x", "h": [], "a": 1, "c": 1, "r": "p", "t": "nan", "p": "PRIM", "w": "", "o": 1}
)
def test_mirror_publications(obj: object) -> None:
    info = mm.peer_from_wire(True, obj)
    assert isinstance(info, mm.PeerInfo)
    assert math.isfinite(info.since)


@FAST
@given(FARM_KEYS | JSON)
@example({"k": "farm", "m": 1, "i": "a", "s": float("inf"), "v": [], "o": "0", "a": [], "d": ""})
def test_farm_publications(obj: object) -> None:
    got = fm.from_wire(obj)
    assert got is None or isinstance(got, fm.Published)


# --- witness ------------------------------------------------------------------------------------

KEY = wt.derive_key(SECRET, "shop")


@FAST
@given(st.binary(max_size=300))
def test_witness_requests_and_replies(data: bytes) -> None:
    for decode in (
        lambda: wt.decode_request(data, {"shop": KEY}),
        lambda: wt.decode_reply(data, "shop", KEY),
    ):
        with contextlib.suppress(wt.DecodeError):
            decode()


# --- replication frames -------------------------------------------------------------------------


@FAST
@given(st.lists(st.binary(max_size=120), max_size=6))
@example([struct.pack(">I", 0xFFFFFFFF)])
def test_replication_frames_in_random_chunks(chunks: list[bytes]) -> None:
    dec = rp.Decoder()
    try:
        for c in chunks:
            for op in dec.feed(c):
                assert isinstance(op, rp.Op)
    except rp.FrameError:
        pass


@FAST
@given(st.binary(max_size=200))
def test_replication_blobs(blob: bytes) -> None:
    for unpack in (rp.unpack_ranges, rp.unpack_pairs, rp.decode_entries):
        with contextlib.suppress(rp.FrameError):
            unpack(blob)


# --- configuration files ------------------------------------------------------------------------

YAMLISH = st.lists(
    st.sampled_from([*"abk:- \n\t[]{}&*!,'\"#|>%@`0123456789.", "!!timestamp ", "&a ", "*a"]),
    max_size=60,
).map("".join)


@FAST
@given(YAMLISH)
@example("created: !!timestamp 200112-14\n")
@example("a: &a [*a]\n")
@example("a: " + "[" * 5000 + "]" * 5000)
def test_yaml_text(text: str) -> None:
    with contextlib.suppress(ConfigError):
        parse_yaml(text, "x.yaml")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("loaders")
    spec = {"node1": {"lo": "127.0.0.11"}, "node2": {"lo": "127.0.0.12"}}
    (root / "cluster.yaml").write_text(render_cluster_yaml("shop", spec, port=5999))
    (root / "cluster.key").write_text(new_secret())
    (root / "cluster.key").chmod(0o600)
    (root / "web").mkdir()
    return root


@pytest.fixture(scope="module")
def cluster(folder: Path) -> Cluster:
    return load_cluster(folder / "cluster.yaml").config


@FAST
@given(YAMLISH | JSON.map(json.dumps))
def test_cluster_module_and_witness_files(folder: Path, cluster: Cluster, text: str) -> None:
    (folder / "other.yaml").write_text(text)
    (folder / "web" / "module.yaml").write_text(text)
    loaders = (
        lambda: load_cluster(folder / "other.yaml"),
        lambda: load_module(folder / "web", cluster),
        lambda: load_witness(folder / "other.yaml"),
    )
    for load in loaders:
        with contextlib.suppress(ConfigError, HakitError):
            load()


# --- node API signatures ------------------------------------------------------------------------

API_KEY = apiauth.api_key(SECRET, "shop")
HEADER_VALUE = st.one_of(
    st.text(max_size=80),
    st.sampled_from(["nan", "inf", "-inf", "1e999", "", "node2", "é", "\x00", "1" * 400]),
)


@FAST
@given(
    st.dictionaries(st.sampled_from(apiauth.HEADERS), HEADER_VALUE, max_size=6),
    st.binary(max_size=64),
)
@example(dict.fromkeys(apiauth.HEADERS, "nan"), b"")  # once skipped the freshness check
def test_api_request_headers(headers: dict[str, str], body: bytes) -> None:
    """Any headers: a reason to refuse, or None only for a correctly signed request."""
    v = apiauth.Verifier(API_KEY, "node2", "boot1")
    why = v.check(headers, "POST", "/v1/x", body, 1000.0)
    assert why is None or isinstance(why, str)
    assert why is not None  # random headers never carry this cluster's MAC


def test_api_a_signed_request_passes_the_fuzzed_verifier() -> None:
    """The property above is not vacuous: a real signature is accepted."""
    headers = apiauth.sign(API_KEY, "node1", "node2", "boot1", "POST", "/v1/x", b"b", 1000.0, "n")
    v = apiauth.Verifier(API_KEY, "node2", "boot1")
    assert (
        v.check({k.lower(): x for k, x in headers.items()}, "POST", "/v1/x", b"b", 1000.0) is None
    )


# --- state files --------------------------------------------------------------------------------


@FAST
@given(st.binary(max_size=200) | JSON.map(lambda o: json.dumps(o).encode()))
@example(b"[" * 100_000)  # RecursionError in json.loads, once
def test_state_files(folder: Path, data: bytes) -> None:
    path = folder / "state.json"
    path.write_bytes(data)
    with contextlib.suppress(StateFileError):
        read_json(path)


# --- API tokens (ADR 0004) ----------------------------------------------------------------------


@FAST
@given(st.text(max_size=120))
def test_an_authorization_header_is_a_token_or_a_reason(header: str) -> None:
    from hakit.core.access import authenticate, new_token

    token, tid, hashed = new_token(b"\x01" * 8, b"\x02" * 32)
    from hakit.core.access import TokenRecord

    records = {tid: TokenRecord(tid, "t", "monitor", hashed, 1.0, "test")}
    found = authenticate(records, header, 2.0)
    assert isinstance(found, str) or found.record.id == tid
    assert token not in (found if isinstance(found, str) else "")
    assert not isinstance(authenticate(records, "Bearer " + token, 2.0), str)


@FAST
@given(JSON)
def test_token_records_from_a_peer_are_records_or_a_documented_error(data: object) -> None:
    from hakit.adapters.tokenstore import parse_records

    for shape in (data, {"tokens": data}, {"tokens": [data]}):
        with contextlib.suppress(HakitError):
            for r in parse_records(shape, "peer"):
                assert r.role in ("admin", "control", "monitor")
