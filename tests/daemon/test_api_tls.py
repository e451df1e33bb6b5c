"""Real daemons on loopback addresses: the CLI reaches another node's daemon over mutual TLS,
and a signed request captured before a daemon restart is refused after it (new boot id)."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable

import httpx

from hakit.tls import client_context, identity
from hakit.waiting import wait_until
from hakit.wire.apiauth import api_key, sign
from tests.daemon.conftest import Cluster

SNI = {"sni_hostname": "node1.loop.hakit"}


def test_cli_over_tls_and_no_replay_after_a_restart(
    loopback_cluster: Callable[[int], Cluster],
) -> None:
    c = loopback_cluster(2)
    n1, n2 = c["node1"], c["node2"]
    url = f"https://127.0.0.11:{c.api_port}"
    r = n2.hakit("state", "--json", "--node", "node1")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["node"] == "node1"

    secret = (n1.root / "etc" / "cluster.key").read_bytes().strip()
    tls = client_context(identity(secret, "loop", "node2"))

    def hello() -> str:
        with httpx.Client(verify=tls, trust_env=False, timeout=5) as cl:
            boot = cl.get(url + "/v1/hello", extensions=SNI).json()["boot"]
        assert isinstance(boot, str)
        return boot

    def get(headers: dict[str, str]) -> httpx.Response:
        with httpx.Client(verify=tls, trust_env=False, timeout=5) as cl:
            return cl.get(url + "/v1/state", headers=headers, extensions=SNI)

    boot = hello()
    key = api_key(secret, "loop")
    nonce = secrets.token_hex(12)
    headers = sign(key, "t", "node1", boot, "GET", "/v1/state", b"", time.time(), nonce)
    assert get(headers).status_code == 200
    n1.kill()
    n1.start()
    wait_until(lambda: n1.hakit("state").returncode == 0, 15, "node1 back")

    def new_boot() -> bool:
        try:
            return hello() != boot
        except httpx.HTTPError:
            return False  # not listening yet

    wait_until(new_boot, 15, "node1's API back with a new boot")
    replayed = get(headers)
    assert (replayed.status_code, replayed.json()) == (
        401,
        {"detail": "request signed for another boot of this daemon (it restarted): retry"},
    )
