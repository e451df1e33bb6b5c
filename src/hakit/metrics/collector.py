"""The prometheus-client side: a collector over the status document, and the `/metrics` route.

A scrape asks the daemon for its status document once (in-memory, as `GET /v1/state` does, on
the event loop: the daemon's state is not shared with threads), maps it (`samples`) and renders
the text format. Nothing is kept between scrapes; nothing here can change the daemon. A failure
while building gives that scrape a 500 with the reason, and is logged — the daemon goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from hakit.metrics.catalog import BY_NAME, METRICS
from hakit.metrics.samples import Histogram, Sample, samples

log = logging.getLogger("hakit.metrics")

METRICS_PATH = "/metrics"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The classic text format, which every Prometheus reads (our names need no escaping)."""


def families(status: Mapping[str, Any]) -> list[Metric]:
    """The metric families of one status document, in the catalogue's order (a metric with no
    sample is left out)."""
    by_name: dict[str, Metric] = {}
    for s in samples(status):
        spec = BY_NAME[s.name]  # KeyError: a sample the catalogue does not declare (a bug)
        fam = by_name.get(s.name)
        if fam is None:
            labels = list(spec.labels)
            if spec.kind == "counter":
                fam = CounterMetricFamily(s.name, spec.help, labels=labels)
            elif spec.kind == "histogram":
                fam = HistogramMetricFamily(s.name, spec.help, labels=labels)
            else:
                fam = GaugeMetricFamily(s.name, spec.help, labels=labels)
            by_name[s.name] = fam
        values = [v for _, v in s.labels]
        if [k for k, _ in s.labels] != list(spec.labels):
            raise ValueError(f"{s.name}: labels {[k for k, _ in s.labels]}, not {spec.labels}")
        if isinstance(s, Histogram):
            assert isinstance(fam, HistogramMetricFamily)
            fam.add_metric(values, list(s.buckets), s.sum)
        else:
            assert isinstance(s, Sample)
            fam.add_metric(values, s.value)  # type: ignore[attr-defined]
    return [by_name[m.name] for m in METRICS if m.name in by_name]


class StatusCollector(Collector):
    """Builds every metric from `status()` at each scrape."""

    def __init__(self, status: Callable[[], Mapping[str, Any]]) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        yield from families(self.status())

    def describe(self) -> list[Metric]:
        return []  # registered without describing: no scrape at registration


def render(status: Callable[[], Mapping[str, Any]]) -> bytes:
    """The text format of one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(status))
    return generate_latest(registry)


def add_metrics_route(app: FastAPI, status: Callable[[], Mapping[str, Any]]) -> None:
    """`GET /metrics` on `app` (at the root, beside /v1): Prometheus text format."""

    @app.get(
        METRICS_PATH,
        summary="Prometheus metrics of this node (text format; docs/metrics.md)",
        response_class=PlainTextResponse,
    )
    async def metrics() -> Response:  # on the loop: the status document is read there
        try:
            body = render(status)
        except Exception as e:  # a bug here must cost one scrape, never the daemon
            log.exception("metrics: the scrape failed")
            return PlainTextResponse(
                f"metrics could not be built: {type(e).__name__}: {e}\n", status_code=500
            )
        return Response(body, media_type=CONTENT_TYPE)
