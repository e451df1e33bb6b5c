"""Real daemons on loopback: an API token made on one node works on every node (and a node
that was down catches up), revocation reaches every node, every action is in the audit trail
with who did it, and `hakit cluster ca` gives what tools pin."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from hakit.adapters.apiclient import ClusterClient, ClusterUnreachable
from hakit.waiting import wait_until
from tests.daemon.conftest import Cluster, Node


def status_via(c: Cluster, node: str, token: str, fp: str, path: str = "/v1/state") -> int:
    addr = f"127.0.0.{10 + int(node.removeprefix('node'))}"

    async def go() -> int:
        cl = ClusterClient([addr], token, fp, port=c.api_port, timeout=3)
        try:
            return (await cl.request("GET", path))[0]
        except ClusterUnreachable:
            return 0
        finally:
            await cl.aclose()

    return asyncio.run(go())


def create(n: Node, name: str, role: str) -> dict[str, str]:
    r = n.hakit("token", "create", name, "--role", role, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def test_tokens_hold_cluster_wide_and_every_action_is_audited(
    loopback_cluster: Callable[[int], Cluster],
) -> None:
    c = loopback_cluster(2)
    n1, n2 = c["node1"], c["node2"]
    made = create(n1, "grafana", "monitor")
    tok, fp = made["token"], made["ca_fingerprint"]
    assert (n1.root / "etc" / "tokens.json").stat().st_mode & 0o777 == 0o600
    assert tok.split("_")[2] not in (n1.root / "etc" / "tokens.json").read_text()
    assert status_via(c, "node1", tok, fp) == 200
    wait_until(lambda: status_via(c, "node2", tok, fp) == 200, 15, "the token valid on node2")
    # a monitor token may read, not act
    assert status_via(c, "node2", tok, fp, "/v1/tokens") == 403

    # revoked on node2: refused on node1 too
    r = n2.hakit("token", "revoke", made["id"])
    assert r.returncode == 0, r.stderr
    assert "revoked" in r.stdout
    wait_until(lambda: status_via(c, "node1", tok, fp) == 401, 15, "revocation on node1")

    # a token made while node2 is down reaches it when it is back
    n2.kill()
    late = create(n1, "late", "control")
    n2.start()
    wait_until(lambda: status_via(c, "node2", late["token"], fp) == 200, 30, "node2 caught up")

    listed = n2.hakit("token", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {t["name"]: t for t in json.loads(listed.stdout)["tokens"]}
    assert rows["grafana"]["revoked"] is not None
    assert rows["late"]["role"] == "control"

    # the audit trail: who (root on the unix socket, as the user who typed it), what, result
    audit = n1.hakit("audit", "--json")
    assert audit.returncode == 0, audit.stderr
    records = [json.loads(line) for line in audit.stdout.splitlines()]
    created = [r for r in records if r["action"] == "token-create"]
    assert [r["result"] for r in created] == ["ok", "ok"]
    assert created[0]["who"]["kind"] == "local"
    assert created[0]["who"]["uid"] == 0
    assert created[0]["message"].startswith("token ")
    assert tok not in audit.stdout
    refused = n2.hakit("audit", "--failed", "--json")
    assert any(
        json.loads(line)["who"].get("name") == "grafana" for line in refused.stdout.splitlines()
    )
    everywhere = n1.hakit("audit", "--all")
    assert everywhere.returncode == 0, everywhere.stderr
    assert "token-revoke" not in everywhere.stdout  # printed as the request, not the action
    assert "DELETE /v1/tokens/" in everywhere.stdout
    # the journal / hakit.log has the same sentence
    assert "audit: uid 0" in (n1.root / "log" / "hakit.log").read_text()

    ca = n1.hakit("cluster", "ca", "-o", str(n1.root / "ca.pem"))
    assert ca.returncode == 0, ca.stderr
    assert fp in ca.stdout
    assert (n1.root / "ca.pem").read_text().startswith("-----BEGIN CERTIFICATE-----")
