"""The node API v1 (FastAPI): state, commands, modules, configuration (here) and the
administration plane (`api.admin`: tokens, audit, live stream, module files). Who may call
what is decided in front of it (`api.guard`); docs/api.md is generated from its OpenAPI.

The app only renders what the daemon hands it through `StatusSource`; it never reaches into
daemon internals.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse

from hakit import __version__
from hakit.api.admin import Admin, AdminSource, add_admin_routes
from hakit.api.jsonl import read_back
from hakit.core.access import MODULE_COMMANDS
from hakit.core.jointoken import DEFAULT_TTL, MAX_TTL
from hakit.errors import HakitError
from hakit.metrics.collector import add_metrics_route

API_PREFIX = "/v1"


class StatusSource(AdminSource, Protocol):
    def status(self) -> dict[str, Any]: ...

    def events(self, limit: int, module: str | None = None) -> list[dict[str, Any]]: ...

    async def command(self, module: str, command: str) -> tuple[bool, str]:
        """(accepted, message); raises `HakitError` for an unknown module."""
        ...

    async def install(self, package: bytes, name: str, force: bool) -> tuple[bool | None, str]:
        """Install a module package (validated off the event loop) and load it: (loaded as its
        configuration says — None if modules are not started yet —, message); `HakitError` if
        invalid (nothing installed)."""
        ...

    async def verify(self, module: str) -> dict[str, Any]:
        """Compare both replicas of a module (on its primary); `HakitError` if unknown."""
        ...

    async def switch_checker(self, module: str, checker: str | None, on: bool) -> str:
        """Maintenance switch of one checker (None: all); `HakitError` if unknown."""
        ...

    def uninstall(self, name: str) -> str:
        """Uninstall a stopped module; `HakitError` if running or absent."""
        ...

    def cluster_config(self) -> dict[str, Any]:
        """The cluster configuration this daemon runs with."""
        ...

    def check_cluster(self, text: str) -> dict[str, Any]:
        """`hakit config check` of `text` as this node's cluster.yaml (`ok`, `problems`…)."""
        ...

    async def apply_cluster(self, text: str) -> dict[str, Any]:
        """Check `text`, then write it and take it (live when it can): `applied`…"""
        ...

    def issue_join_token(self, node: str, ttl: float) -> dict[str, Any]:
        """A one-time join token for `node` (opens the join listener); `HakitError` if not."""
        ...


HELLO_PATH = API_PREFIX + "/hello"
CLUSTER_PATHS = (API_PREFIX + "/cluster/check", API_PREFIX + "/cluster/apply")
DESCRIPTION = """State and control of one hakit node, and through it of its cluster.

Clients: the cluster's nodes (mutual TLS + signed requests), tools and people with an API
token (`Authorization: Bearer hkt_…`, roles admin/control/monitor), root on the node's unix
socket. See docs/api.md and docs/security.md."""


def create_app(source: StatusSource, hello: dict[str, str], admin: Admin | None = None) -> FastAPI:
    """The API; `hello` ({"node", "boot"}) is what `GET /v1/hello` answers; `admin` (the token
    store and the CA) enables the administration routes that need them."""
    app = FastAPI(
        title="hakit node API",
        version=__version__,
        description=DESCRIPTION,
        docs_url=None,
        redoc_url=None,
        openapi_url=API_PREFIX + "/openapi.json",
    )
    add_admin_routes(app, source, admin)

    @app.get(API_PREFIX + "/state", summary="State of the cluster as seen by this node")
    def state() -> dict[str, Any]:
        return source.status()

    @app.get(
        API_PREFIX + "/events",
        summary="Timeline entries, oldest first (filters: module, kind, since); from the "
        "daemon's memory and, beyond it, from events.jsonl (earlier runs)",
    )
    def events(
        limit: int = Query(100, ge=1, le=2000),
        module: str | None = None,
        kind: str | None = Query(None, max_length=64),
        since: float | None = Query(None, ge=0),
    ) -> list[dict[str, Any]]:
        def keep(e: dict[str, Any]) -> bool:
            return (module is None or e.get("module") == module) and (
                kind is None or e.get("kind") == kind
            )

        kept = source.events(2000)
        mine = [e for e in kept if keep(e) and (since is None or e["at"] >= since)][-limit:]
        if len(mine) >= limit or not kept:
            return mine
        oldest = kept[0]["at"]
        older = read_back(
            source.paths.events_log,
            lambda e: e["at"] < oldest and keep(e),
            limit - len(mine),
            since,
        )
        return older + mine

    @app.post(
        API_PREFIX + "/modules",
        summary="Install a module package (zip body); answers once this node has loaded it",
    )
    async def install(request: Request, name: str, force: bool = False) -> JSONResponse:
        data = await request.body()
        try:
            loaded, message = await source.install(data, name, force)
        except HakitError as e:
            return JSONResponse({"installed": False, "detail": str(e)}, status_code=400)
        return JSONResponse({"installed": True, "loaded": loaded, "message": message})

    @app.delete(API_PREFIX + "/modules/{module}", summary="Uninstall a stopped module")
    def uninstall(module: str) -> JSONResponse:
        try:
            message = source.uninstall(module)
        except HakitError as e:
            return JSONResponse({"uninstalled": False, "detail": str(e)}, status_code=409)
        return JSONResponse({"uninstalled": True, "message": message})

    @app.post(
        API_PREFIX + "/modules/{module}/verify",
        summary="Compare both replicas by checksums (200 identical, 409 differences or error)",
    )
    async def verify(module: str) -> JSONResponse:
        try:
            result = await source.verify(module)
        except HakitError as e:
            raise HTTPException(404, str(e)) from None
        return JSONResponse(result, status_code=200 if result.get("ok") else 409)

    @app.post(
        API_PREFIX + "/modules/{module}/checkers/{checker}/{switch}",
        summary="Switch a checker off (maintenance) or on again; `*`: every checker",
    )
    async def checker_switch(module: str, checker: str, switch: str) -> JSONResponse:
        if switch not in ("on", "off"):
            raise HTTPException(404, f"unknown switch {switch!r}: on or off")
        try:
            message = await source.switch_checker(
                module, None if checker == "*" else checker, switch == "on"
            )
        except HakitError as e:
            raise HTTPException(404, str(e)) from None
        return JSONResponse({"accepted": True, "message": message})

    @app.post(
        API_PREFIX + "/modules/{module}/{command}",
        summary="Run a module command on this node (200 accepted, 409 refused with the reason)",
    )
    async def module_command(module: str, command: str) -> JSONResponse:
        if command not in MODULE_COMMANDS:
            raise HTTPException(
                404, f"unknown command {command!r}; commands: {', '.join(MODULE_COMMANDS)}"
            )
        try:
            accepted, message = await source.command(module, command)
        except HakitError as e:
            raise HTTPException(404, str(e)) from None
        return JSONResponse(
            {"accepted": accepted, "message": message}, status_code=200 if accepted else 409
        )

    @app.get(API_PREFIX + "/cluster", summary="The cluster configuration this daemon runs with")
    def cluster() -> dict[str, Any]:
        return source.cluster_config()

    async def _text(request: Request) -> str | JSONResponse:
        try:
            return (await request.body()).decode("utf-8")
        except UnicodeDecodeError:
            return JSONResponse({"detail": "cluster.yaml must be UTF-8 text"}, status_code=400)

    @app.post(
        CLUSTER_PATHS[0],
        summary="Check a cluster.yaml (body) as `hakit config check` would on this node, with "
        "its installed modules (200 passes, 409 with the problems)",
    )
    async def cluster_check(request: Request) -> JSONResponse:
        text = await _text(request)
        if isinstance(text, JSONResponse):
            return text
        result = await asyncio.to_thread(source.check_cluster, text)
        return JSONResponse(result, status_code=200 if result["ok"] else 409)

    @app.post(
        CLUSTER_PATHS[1],
        summary="Check a cluster.yaml (body), then write it and take it: live (modules keep "
        "running) or at the next restart (200 applied, 409 with the problems: nothing written)",
    )
    async def cluster_apply(request: Request) -> JSONResponse:
        text = await _text(request)
        if isinstance(text, JSONResponse):
            return text
        result = await source.apply_cluster(text)
        return JSONResponse(result, status_code=200 if result["applied"] else 409)

    @app.post(
        API_PREFIX + "/join-tokens",
        summary="A one-time join token for NODE (valid TTL s), which opens the join listener",
    )
    async def join_token(
        node: str, ttl: float = Query(DEFAULT_TTL, gt=0, le=MAX_TTL)
    ) -> JSONResponse:  # on the event loop: the daemon's join listener belongs to it
        try:
            return JSONResponse(source.issue_join_token(node, ttl))
        except HakitError as e:
            return JSONResponse({"detail": str(e)}, status_code=409)

    @app.get(HELLO_PATH, summary="This node's name and its daemon's boot id (no signature)")
    def hello_() -> dict[str, str]:
        return hello

    @app.get(API_PREFIX + "/health", summary="200 while the daemon runs")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    add_metrics_route(app, lambda: source.status())  # GET /metrics (docs/metrics.md)
    return app
