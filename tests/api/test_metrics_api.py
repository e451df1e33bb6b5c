"""`GET /metrics` on the node API (in process, as the unix socket serves it)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from hakit.api.app import create_app
from hakit.api.guard import Guard
from tests.api.test_api import Source
from tests.unit.test_metrics import status as rich_status


class Rich(Source):
    def status(self) -> dict[str, Any]:
        return rich_status()


class Broken(Source):
    calls = 0

    def status(self) -> dict[str, Any]:
        Broken.calls += 1
        raise RuntimeError("status exploded")


def fetch(source: Source, *paths: str) -> list[httpx.Response]:
    async def go() -> list[httpx.Response]:
        app = Guard(create_app(source, {"node": "node1", "boot": "b"}), None, time.time)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return [await c.get(p) for p in paths]

    return asyncio.run(go())


def test_metrics_in_the_prometheus_text_format() -> None:
    (r,) = fetch(Rich(), "/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    found = {f.name: f for f in text_string_to_metric_families(r.text)}
    up = list(found["hakit_peer_up"].samples)
    assert [(s.labels, s.value) for s in up] == [
        ({"cluster": "demo", "node": "node1", "peer": "node2"}, 1.0)
    ]
    states = {s.labels["state"]: s.value for s in found["hakit_module_state"].samples}
    assert states["ALONE"] == 1.0
    assert found["hakit_module_failovers"].type == "counter"
    assert found["hakit_replication_fsync_seconds"].type == "histogram"


def test_metrics_of_the_api_test_document() -> None:
    """The plain status document of the API tests (no module): node metrics only."""
    (r,) = fetch(Source(), "/metrics")
    assert r.status_code == 200
    assert 'hakit_peer_up{cluster="demo",node="node1",peer="node3"} 0.0' in r.text
    assert "hakit_module_state" not in r.text


def test_metrics_at_the_root_only() -> None:
    (r,) = fetch(Rich(), "/v1/metrics")
    assert r.status_code == 404


def test_a_failing_collector_costs_one_scrape_not_the_daemon() -> None:
    source = Broken()
    bad, health, again = fetch(source, "/metrics", "/v1/health", "/metrics")
    assert bad.status_code == 500
    assert bad.text == "metrics could not be built: RuntimeError: status exploded\n"
    assert health.status_code == 200
    assert again.status_code == 500
    assert Broken.calls == 2  # one document per scrape, nothing cached
