"""The daemon's HTTP API (FastAPI). Read-only status for now; commands come with modules.

The app only renders what the daemon hands it through `StatusSource`; it never reaches into
daemon internals.
"""

from __future__ import annotations

from typing import Any, Protocol

from fastapi import FastAPI, Query

from hakit import __version__

API_PREFIX = "/v1"


class StatusSource(Protocol):
    def status(self) -> dict[str, Any]: ...

    def events(self, limit: int) -> list[dict[str, Any]]: ...


def create_app(source: StatusSource) -> FastAPI:
    app = FastAPI(
        title="hakit node API",
        version=__version__,
        description="State and control of one hakit node.",
        docs_url=None,
        redoc_url=None,
    )

    @app.get(API_PREFIX + "/state", summary="State of the cluster as seen by this node")
    def state() -> dict[str, Any]:
        return source.status()

    @app.get(API_PREFIX + "/events", summary="Recent timeline entries, oldest first")
    def events(limit: int = Query(100, ge=1, le=2000)) -> list[dict[str, Any]]:
        return source.events(limit)

    @app.get(API_PREFIX + "/health", summary="200 while the daemon runs")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app
