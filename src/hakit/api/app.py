"""The daemon's HTTP API (FastAPI). Read-only status for now; commands come with modules.

The app only renders what the daemon hands it through `StatusSource`; it never reaches into
daemon internals.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse

from hakit import __version__
from hakit.core.jointoken import DEFAULT_TTL, MAX_TTL
from hakit.errors import HakitError
from hakit.metrics.collector import add_metrics_route
from hakit.wire.apiauth import Verifier

API_PREFIX = "/v1"


COMMANDS = (
    "start",
    "stop",
    "restart",
    "stopstart",
    "swap",
    "prim",
    "second",
    "primforce",
    "failover-on",
    "failover-off",
)


class StatusSource(Protocol):
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


BODY_LIMIT = 64 * 1024
PACKAGE_LIMIT = 64 * 1024 * 1024
CLUSTER_LIMIT = 1 << 20  # a cluster.yaml (config.safeyaml.MAX_BYTES)
PACKAGE_PATH = API_PREFIX + "/modules"
CLUSTER_PATHS = (API_PREFIX + "/cluster/check", API_PREFIX + "/cluster/apply")
HELLO_PATH = API_PREFIX + "/hello"


def body_limit(method: str, path: str) -> int:
    """The largest body a request may have: a module package, a cluster.yaml, or an ordinary
    request."""
    if (method, path) == ("POST", PACKAGE_PATH):
        return PACKAGE_LIMIT
    if method == "POST" and path in CLUSTER_PATHS:
        return CLUSTER_LIMIT
    return BODY_LIMIT


async def _refuse(scope: Any, send: Any, status: int, why: str) -> None:
    async def nothing() -> Any:
        return {"type": "http.disconnect"}

    # closing the connection: the rest of a refused body is never read
    response = JSONResponse({"detail": why}, status_code=status, headers={"Connection": "close"})
    await response(scope, nothing, send)


class Guard:
    """ASGI middleware in front of the API: the body is bounded (`body_limit`, refused with 413
    as soon as its length or the bytes received pass it) and, on the TCP API (`verifier`), every
    request but `GET /v1/hello` must be signed for this node and boot: all checks but the MAC
    come before any body is read; every refusal is a JSON `{"detail": …}`."""

    def __init__(self, app: Any, verifier: Verifier | None, now: Callable[[], float]) -> None:
        self.app = app
        self.verifier = verifier
        self.now = now

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        verifier = None if (method, path) == ("GET", HELLO_PATH) else self.verifier
        if verifier is not None:
            why = verifier.precheck(headers, self.now())
            if why is not None:
                await _refuse(scope, send, 401, why)
                return
        limit = body_limit(method, path)
        length = headers.get("content-length", "0")
        if not (length.isascii() and length.isdigit()):
            await _refuse(scope, send, 400, "malformed content-length header")
            return
        if int(length) > limit:
            await _refuse(scope, send, 413, f"body of {length} bytes, limit {limit}")
            return
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] != "http.request":
                return  # the client went away
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _refuse(scope, send, 413, f"body over the limit of {limit} bytes")
                return
            chunks.append(chunk)
            if not msg.get("more_body"):
                break
        body = b"".join(chunks)
        if verifier is not None:
            query = scope["query_string"].decode("latin-1")
            target = path + ("?" + query if query else "")
            why = verifier.check(headers, method, target, body, self.now())
            if why is not None:
                await _refuse(scope, send, 401, why)
                return
        sent = False

        async def again() -> Any:
            nonlocal sent
            if sent:
                return await receive()  # waits for the disconnect
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, again, send)


def create_app(source: StatusSource, hello: dict[str, str]) -> FastAPI:
    """The API; `hello` ({"node", "boot"}) is what `GET /v1/hello` answers."""
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
    def events(
        limit: int = Query(100, ge=1, le=2000), module: str | None = None
    ) -> list[dict[str, Any]]:
        return source.events(limit, module)

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
        if command not in COMMANDS:
            raise HTTPException(
                404, f"unknown command {command!r}; commands: {', '.join(COMMANDS)}"
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

    add_metrics_route(app, source.status)  # GET /metrics (docs/metrics.md)
    return app
