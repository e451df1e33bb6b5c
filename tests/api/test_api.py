"""The API renders the status document of the contract."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx

from hakit.api.app import create_app
from hakit.api.guard import Guard
from hakit.config.model import Cluster
from hakit.daemon.status import build_status
from hakit.errors import HakitError
from hakit.paths import Paths

CONFIG = Cluster.model_validate(
    {
        "cluster": "demo",
        "networks": {"net1": {}, "net2": {}},
        "nodes": {
            "node1": {"addresses": {"net1": "10.0.1.1", "net2": "10.0.2.1"}},
            "node2": {"addresses": {"net1": "10.0.1.2", "net2": "10.0.2.2"}},
            "node3": {"addresses": {"net1": "10.0.1.3"}},
        },
    }
)
SNAPSHOT = {
    "peers": {
        "node2": {
            "state": "alive",
            "alive": True,
            "since": 90.0,
            "networks": {"net1": True, "net2": False},
            "last_heard": {"net1": 99.5, "net2": 97.0},
            "clock_offset": 0.001,
            "boot": "00",
            "payload": "",
        },
        "node3": {
            "state": "lost",
            "alive": False,
            "since": 95.0,
            "networks": {"net1": False},
            "last_heard": {"net1": 94.0},
            "clock_offset": None,
            "boot": None,
            "payload": "",
        },
    },
    "local_networks": {"net1": True, "net2": True},
    "stats": {"sent": 10, "rejected": {"forged": 2}},
}


def request(method: str, path: str, body: bytes = b"", **params: Any) -> httpx.Response:
    """Through the `Guard` of the unix socket (body limits, no signature)."""

    async def go() -> httpx.Response:
        app = Guard(create_app(Source(), {"node": "node1", "boot": "b"}), None, time.time)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await c.request(method, path, params=params, content=body)

    return asyncio.run(go())


def get(path: str, **params: Any) -> httpx.Response:
    return request("GET", path, **params)


class Source:
    paths = Paths(
        etc=Path("/nonexistent/etc"), var=Path("/nonexistent/var"), log=Path("/nonexistent/log")
    )

    def events_after(self, seq: int) -> tuple[int, list[dict[str, Any]]]:
        return 1, self.events(1)[: max(0, 1 - seq)]

    def status(self) -> dict[str, Any]:
        return build_status(CONFIG, "node1", SNAPSHOT, {"pid": 1}, now=100.0)

    def events(self, limit: int, module: str | None = None) -> list[dict[str, Any]]:
        return [{"at": 1.0, "kind": "peer-lost", "message": "node3 lost"}][-limit:]

    async def install(self, package: bytes, name: str, force: bool) -> tuple[bool | None, str]:
        if not package.startswith(b"PK"):
            raise HakitError("not a zip")
        return True, f"module {name} installed"

    def uninstall(self, name: str) -> str:
        if name != "app":
            raise HakitError(f"no module {name!r}")
        return "module app uninstalled"

    async def command(self, module: str, command: str) -> tuple[bool, str]:
        if module != "app":
            raise HakitError(f"no module {module!r}")
        return command != "swap", f"{command} {'accepted' if command != 'swap' else 'refused'}"

    async def verify(self, module: str) -> dict[str, Any]:
        if module not in ("app", "diverged"):
            raise HakitError(f"no module {module!r}")
        diffs = [{"path": "/srv/x", "difference": "size 1 vs 2"}] if module == "diverged" else []
        return {"ok": not diffs, "differences": diffs}

    def cluster_config(self) -> dict[str, Any]:
        return {"node": "node1", "config": CONFIG.model_dump(mode="json"), "pending_restart": []}

    def check_cluster(self, text: str) -> dict[str, Any]:
        problems = ["cluster.yaml:1: broken"] if "broken" in text else []
        return {"node": "node1", "ok": not problems, "problems": problems}

    async def apply_cluster(self, text: str) -> dict[str, Any]:
        checked = self.check_cluster(text)
        return {**checked, "applied": checked["ok"]}

    def issue_join_token(self, node: str, ttl: float) -> dict[str, Any]:
        if node not in CONFIG.nodes:
            raise HakitError(f"node {node} is not in the cluster")
        return {"token": "hk1-…", "node": node, "ttl": ttl}

    async def switch_checker(self, module: str, checker: str | None, on: bool) -> str:
        if module != "app" or checker not in (None, "web"):
            raise HakitError(f"app has no checker {checker!r}; its checkers: web")
        plural = "s" if checker is None else ""
        return f"app: checker{plural} {checker or 'web'} {'on' if on else 'off'}"


def test_verify_answers_200_when_identical_409_with_the_differences() -> None:
    assert request("POST", "/v1/modules/app/verify").status_code == 200
    r = request("POST", "/v1/modules/diverged/verify")
    assert r.status_code == 409
    assert r.json()["differences"][0]["path"] == "/srv/x"
    assert request("POST", "/v1/modules/nope/verify").status_code == 404


def test_state_follows_the_contract() -> None:
    st = get("/v1/state").json()
    assert st["cluster"] == "demo"
    assert st["node"] == "node1"
    assert st["modules"] == {}
    assert st["nodes"]["node1"]["alive"] is True
    assert st["nodes"]["node1"]["networks"] == {"net1": True, "net2": True}
    assert st["nodes"]["node2"]["alive"] is True
    assert st["nodes"]["node2"]["networks"] == {"net1": True, "net2": False}
    assert st["nodes"]["node2"]["last_heard_ago"] == 0.5
    assert st["nodes"]["node3"] == {
        **st["nodes"]["node3"],
        "alive": False,
        "networks": {"net1": False},
        "state": "lost",
    }
    assert st["heartbeat"]["rejected"] == {"forged": 2}
    for node in st["nodes"].values():
        assert isinstance(node["alive"], bool)
        assert all(isinstance(v, bool) for v in node["networks"].values())


def test_state_before_first_snapshot_says_unknown() -> None:
    st = build_status(CONFIG, "node1", None, {}, now=1.0)
    assert st["nodes"]["node2"]["state"] == "unknown"
    assert st["nodes"]["node2"]["alive"] is False


def test_events_and_health() -> None:
    assert get("/v1/events", limit=1).json()[0]["kind"] == "peer-lost"
    assert get("/v1/health").json() == {"status": "ok"}
    assert get("/v1/events", limit=0).status_code == 422


def test_module_commands() -> None:
    ok = request("POST", "/v1/modules/app/start")
    assert ok.status_code == 200
    assert ok.json() == {"accepted": True, "message": "start accepted"}
    refused = request("POST", "/v1/modules/app/swap")
    assert refused.status_code == 409
    assert refused.json()["accepted"] is False
    assert request("POST", "/v1/modules/nope/start").status_code == 404
    unknown = request("POST", "/v1/modules/app/explode")
    assert unknown.status_code == 404
    assert "unknown command" in unknown.json()["detail"]


def test_install_and_uninstall() -> None:
    ok = request("POST", "/v1/modules", body=b"PK...", name="web", force="false")
    assert ok.json() == {"installed": True, "loaded": True, "message": "module web installed"}
    bad = request("POST", "/v1/modules", body=b"nope", name="web")
    assert bad.status_code == 400
    assert bad.json()["detail"] == "not a zip"
    assert request("DELETE", "/v1/modules/app").json()["uninstalled"] is True
    assert request("DELETE", "/v1/modules/zzz").status_code == 409


def test_checker_maintenance_switch() -> None:
    ok = request("POST", "/v1/modules/app/checkers/web/off")
    assert ok.json() == {"accepted": True, "message": "app: checker web off"}
    assert request("POST", "/v1/modules/app/checkers/*/on").json()["message"] == (
        "app: checkers web on"
    )
    unknown = request("POST", "/v1/modules/app/checkers/nope/off")
    assert unknown.status_code == 404
    assert "its checkers: web" in unknown.json()["detail"]
    assert request("POST", "/v1/modules/app/checkers/web/maybe").status_code == 404


def test_cluster_check_and_apply_answer_409_with_the_problems() -> None:
    assert request("GET", "/v1/cluster").json()["config"]["cluster"] == "demo"
    ok = request("POST", "/v1/cluster/check", b"cluster: demo\n")
    assert (ok.status_code, ok.json()["ok"]) == (200, True)
    bad = request("POST", "/v1/cluster/apply", b"broken")
    assert bad.status_code == 409
    assert bad.json() == {**bad.json(), "applied": False, "problems": ["cluster.yaml:1: broken"]}
    assert request("POST", "/v1/cluster/check", b"\xff").json()["detail"] == (
        "cluster.yaml must be UTF-8 text"
    )


def test_a_cluster_yaml_may_be_1_mib_other_bodies_64_kib() -> None:
    big = b"#" * (64 * 1024 + 1)
    assert request("POST", "/v1/cluster/check", big).status_code == 200
    assert request("POST", "/v1/cluster/check", b"#" * ((1 << 20) + 1)).status_code == 413
    assert request("POST", "/v1/join-tokens", big, node="node2").status_code == 413


def test_join_token_for_a_node_of_the_cluster_only() -> None:
    r = request("POST", "/v1/join-tokens", node="node2", ttl="60")
    assert (r.status_code, r.json()["ttl"]) == (200, 60.0)
    r = request("POST", "/v1/join-tokens", node="node9")
    assert (r.status_code, r.json()["detail"]) == (409, "node node9 is not in the cluster")
    assert request("POST", "/v1/join-tokens", node="node2", ttl="100000").status_code == 422
