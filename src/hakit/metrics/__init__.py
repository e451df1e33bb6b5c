"""Prometheus metrics of a node (`GET /metrics`), built from its status document.

`samples` maps a status document to samples (pure, table-driven: `catalog.METRICS` lists every
metric once); `collector.StatusCollector` turns them into prometheus-client families at each
scrape; `route.add_metrics_route` serves them on the node API. docs/metrics.md describes them.
"""
