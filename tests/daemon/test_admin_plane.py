"""Real daemons on loopback: an API token made on one node works on every node (and a node
that was down catches up), revocation reaches every node, every action is in the audit trail
with who did it, and `hakit cluster ca` gives what tools pin."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

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
    assert tok.split("_", 2)[2] not in (n1.root / "etc" / "tokens.json").read_text()
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


def test_module_files_script_outputs_and_history_through_the_api(
    loopback_cluster: Callable[[int], Cluster], tmp_path: Path
) -> None:
    c = loopback_cluster(2)
    n1 = c["node1"]
    folder = tmp_path / "src" / "web"
    (folder / "bin").mkdir(parents=True)
    (folder / "module.yaml").write_text(
        "kind: mirror\nnodes: [node1, node2]\nscripts: {start_timeout: 10, stop_timeout: 10}\n"
    )
    script = folder / "bin" / "start_prim"
    script.write_text("#!/bin/sh\necho started by the test\n")
    script.chmod(0o755)
    r = n1.hakit("module", "install", str(folder), "--all")
    assert r.returncode == 0, r.stdout + r.stderr
    r = n1.hakit("prim", "web")
    assert r.returncode == 0, r.stdout + r.stderr
    wait_until(
        lambda: n1.state()["modules"]["web"]["nodes"]["node1"]["state"] == "ALONE", 20, "ALONE"
    )
    listed = n1.hakit("module", "list", "--json")
    assert json.loads(listed.stdout)["web"]["nodes"]["node1"]["state"] == "ALONE"

    outputs = n1.hakit("log", "web", "--scripts", "--json")
    assert outputs.returncode == 0, outputs.stderr
    names = [o["name"] for o in json.loads(outputs.stdout)]
    start = [n for n in names if n.endswith("start_prim.log")]
    assert start, names
    shown = n1.hakit("log", "web", "--script", start[-1])
    assert shown.returncode == 0, shown.stderr
    assert "started by the test" in shown.stdout
    bad = n1.hakit("log", "web", "--script", "../../cluster.key")
    assert bad.returncode == 1
    assert "no script output" in bad.stderr

    made = create(n1, "reader", "monitor")

    async def files() -> dict[str, str]:
        cl = ClusterClient(["127.0.0.11"], made["token"], made["ca_fingerprint"], port=c.api_port)
        try:
            return (await cl.get("/v1/modules/web/files"))["files"]  # type: ignore[no-any-return]
        finally:
            await cl.aclose()

    got = asyncio.run(files())
    assert got["bin/start_prim"] == script.read_text()
    assert "kind: mirror" in got["module.yaml"]

    # the timeline survives the daemon's restart: earlier entries come from events.jsonl
    before = n1.hakit("log", "web", "--json")
    assert before.returncode == 0, before.stderr
    n1.kill()
    n1.start()
    wait_until(lambda: n1.hakit("state").returncode == 0, 15, "node1 back")
    after = n1.hakit("log", "web", "-n", "500", "--json")
    assert after.returncode == 0, after.stderr
    assert before.stdout.strip().splitlines()[0] in after.stdout

    # the command is in the audit trail, with who typed it
    records = [
        json.loads(x) for x in n1.hakit("audit", "--module", "web", "--json").stdout.splitlines()
    ]
    assert [(r["action"], r["command"], r["result"]) for r in records][:1] == [
        ("command", "prim", "ok")
    ]
