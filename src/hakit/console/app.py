"""The console's web application (Starlette): pages, assets, the JSON API the page uses, and the
live stream to the browser.

Every route but the login page, the login form and the assets needs a live session; every
POST needs the session's CSRF token and a same-origin `Origin` (or `Referer`); every action
on a cluster needs the role its `NEEDS` entry says and is sent with the user's name
(`X-Hakit-On-Behalf-Of`), so the cluster's audit records who did it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from hakit.adapters.httpserver import read_body, refusal_status, replay
from hakit.console.clusters import Hub, Registry, parse_nodes, unreachable_types
from hakit.console.manage import Journal, manage_routes, node_param
from hakit.console.sessions import COOKIE, Session, Sessions, Throttle, csrf_ok
from hakit.console.store import ConsoleError, check_name
from hakit.console.users import Users, allows
from hakit.core.access import MODULE_COMMANDS

log = logging.getLogger("hakit.console")

SMALL_BODY = 64 * 1024
PACKAGE_BODY = 64 * 1024 * 1024
EDIT_BODY = 4 * 1024 * 1024  # a module's edited files, or a cluster.yaml
EDIT_PATHS = ("/edit/check", "/edit/apply", "/cluster/check", "/cluster/apply", "/create")
BODY_TIME = 60.0  # seconds for a whole request body to arrive
KEEPALIVE = 5.0  # a ping on the browser's stream that often; the session is checked too
ASSETS = ("app.js", "manage.js", "app.css", "login.js")
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # no-referrer would make form posts' Origin "null"
    "Cache-Control": "no-store",
}


def _asset(name: str) -> bytes:
    return (resources.files("hakit.console") / "static" / name).read_bytes()


class Console:
    """The application's state: users, sessions, registry, hub, throttle."""

    def __init__(
        self,
        users: Users,
        sessions: Sessions,
        registry: Registry,
        hub: Hub,
        *,
        secure: bool = True,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.users = users
        self.sessions = sessions
        self.registry = registry
        self.hub = hub
        self.secure = secure
        self.throttle = Throttle(now)
        self.journal = Journal(now)

    def session(self, request: Request, *, touch: bool = True) -> tuple[Session | None, str]:
        s, why = self.sessions.get(request.cookies.get(COOKIE), touch=touch)
        if s is not None and self.users.role(s.user) is None:  # the user was removed
            self.sessions.drop_key(s.key)
            return None, "removed"
        return s, why


Handler = Callable[[Request, Session, str], Awaitable[Response]]


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"ok": False, "message": message}, status_code=status)


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin:
        return False
    host = request.headers.get("host", "")
    return urlsplit(origin).netloc == host


def build_app(console: Console) -> Any:
    """The ASGI application (wrapped in `Limits`)."""

    def page(name: str) -> Response:
        return Response(_asset(name), media_type="text/html; charset=utf-8")

    def needs(role: str, handler: Handler, *, post: bool = True) -> Callable[..., Any]:
        async def endpoint(request: Request) -> Response:
            s, why = console.session(request)
            if s is None:
                return _error(401, "session expired: log in again" if why else "log in first")
            user_role = console.users.role(s.user) or "monitor"
            if post and not (
                _same_origin(request) and csrf_ok(s, request.headers.get("x-hakit-csrf"))
            ):
                return _error(403, "request refused: missing or wrong CSRF token or origin")
            if not allows(user_role, role):
                return _error(403, f"{s.user} has the role {user_role}; this needs {role}")
            try:
                return await handler(request, s, user_role)
            except ConsoleError as e:
                return _error(400, str(e))
            except unreachable_types() as e:
                return _error(502, str(e))
            except Exception as e:  # a message, never a traceback, to the browser
                log.exception("console: %s %s failed", request.method, request.url.path)
                return _error(500, f"the console failed: {type(e).__name__}: {e}")

        return endpoint

    async def index(request: Request) -> Response:
        s, why = console.session(request)
        if s is None:
            return RedirectResponse("/login" + ("?why=expired" if why else ""), 303)
        return page("index.html")

    async def login_page(request: Request) -> Response:
        return page("login.html")

    async def login(request: Request) -> Response:
        address = request.client.host if request.client else "?"
        if not _same_origin(request):
            return RedirectResponse("/login?why=origin", 303)
        wait = console.throttle.wait(address)
        if wait > 0:
            log.warning("console: login throttled for %s (%.0f s)", address, wait)
            return RedirectResponse(f"/login?why=throttled&wait={int(wait) + 1}", 303)
        form = parse_qs((await request.body()).decode("utf-8", "replace"), max_num_fields=8)
        user = (form.get("user") or [""])[0]
        password = (form.get("password") or [""])[0]
        role = await asyncio.to_thread(console.users.verify, user, password)
        if role is None:
            console.throttle.failed(address)
            console.journal.add("login-failed", user, address, "failed login")
            log.warning("console: failed login as %r from %s", user[:64], address)
            return RedirectResponse("/login?why=failed", 303)
        console.throttle.succeeded(address)
        sid, _ = console.sessions.create(user)
        log.info("console: %s (%s) logged in from %s", user, role, address)
        console.journal.add("login", user, address, f"logged in ({role})")
        resp = RedirectResponse("/", 303)
        resp.set_cookie(
            COOKIE,
            sid,
            httponly=True,
            secure=console.secure,
            samesite="strict",
            path="/",
            max_age=int(console.sessions.absolute),
        )
        return resp

    async def logout(request: Request) -> Response:
        s, _ = console.session(request, touch=False)
        if s is not None and _same_origin(request):
            console.sessions.drop_key(s.key)
            log.info("console: %s logged out", s.user)
            address = request.client.host if request.client else "?"
            console.journal.add("logout", s.user, address, "logged out")
        resp = RedirectResponse("/login?why=logout", 303)
        resp.delete_cookie(COOKIE, path="/", secure=console.secure, httponly=True)
        return resp

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ASSETS:
            return Response("not found", 404)
        kind = "text/css" if name.endswith(".css") else "text/javascript"
        return Response(_asset(name), media_type=f"{kind}; charset=utf-8")

    async def me(request: Request, s: Session, role: str) -> Response:
        return JSONResponse(
            {
                "user": s.user,
                "role": role,
                "csrf": s.csrf,
                "idle": console.sessions.idle,
                "expires": s.created + console.sessions.absolute,
            }
        )

    async def stream(request: Request, s: Session, role: str) -> Response:
        q = console.hub.subscribe()

        async def lines() -> AsyncIterator[bytes]:
            try:
                yield _sse("snapshot", console.hub.snapshot())
                for name, w in list(console.hub.watched.items()):
                    yield _sse("events", {"cluster": name, "events": list(w.events)})
                while True:
                    try:
                        msg = await asyncio.wait_for(q.get(), KEEPALIVE)
                    except TimeoutError:
                        live, _ = console.session(request, touch=False)
                        if live is None:
                            yield _sse("expired", {})
                            return
                        yield _sse("ping", {})  # an event, so the page sees the silence
                        continue
                    if msg is None:
                        return
                    yield _sse(msg["kind"], msg)
            finally:
                console.hub.unsubscribe(q)

        return StreamingResponse(
            lines(), media_type="text/event-stream", headers={"X-Accel-Buffering": "no"}
        )

    def _names(request: Request) -> tuple[str, str]:
        c = check_name(request.path_params["cluster"], "cluster")
        m = check_name(request.path_params.get("module", "x"), "module")
        if c not in console.hub.watched:
            raise ConsoleError(f"no cluster {c!r}")
        return c, m

    async def events(request: Request, s: Session, role: str) -> Response:
        c, _ = _names(request)
        module = request.query_params.get("module")
        params: dict[str, Any] = {"limit": 300}
        if module:
            params["module"] = check_name(module, "module")

        async def one(node: str) -> list[dict[str, Any]]:
            client = console.hub.client(c, node)
            try:
                evs = await client.get("/v1/events", **params)
            except Exception as e:
                return [
                    {
                        "at": time.time(),
                        "node": node,
                        "kind": "console-error",
                        "message": f"timeline of {node} unavailable: {e}",
                    }
                ]
            finally:
                await client.aclose()
            return [dict(ev, node=ev.get("node", node)) for ev in evs]

        nodes = console.hub.nodes_of(c)
        got = await asyncio.gather(*(one(n) for n in nodes))
        merged = sorted((e for evs in got for e in evs), key=lambda e: e.get("at", 0))
        return JSONResponse({"items": merged})

    async def forward(
        c: str, node: str | None, method: str, path: str, s: Session, **kw: Any
    ) -> dict[str, Any]:
        client = console.hub.client(c, node)
        try:
            status, body = await client.request(method, path, on_behalf_of=s.user, **kw)
        except unreachable_types() as e:
            return {"node": node, "status": 502, "ok": False, "message": str(e)}
        finally:
            await client.aclose()
        message = ""
        if isinstance(body, dict):
            message = str(body.get("message") or body.get("detail") or "")
        if method != "GET":  # the actions; reads would fill the log
            log.info("console: %s: %s %s on %s: %s %s", s.user, method, path, node, status, message)
        return {
            "node": node,
            "status": status,
            "ok": 200 <= status < 300,
            "message": message,
            "body": body,
        }

    async def files(request: Request, s: Session, role: str) -> Response:
        c, m = _names(request)
        r = await forward(c, node_param(request), "GET", f"/v1/modules/{m}/files", s)
        return JSONResponse(r, status_code=200 if r["ok"] else 502)

    async def command(request: Request, s: Session, role: str) -> Response:
        c, m = _names(request)
        cmd = request.path_params["command"]
        if cmd not in MODULE_COMMANDS:
            raise ConsoleError(f"unknown command {cmd!r}")
        r = await forward(c, node_param(request), "POST", f"/v1/modules/{m}/{cmd}", s)
        return JSONResponse(r, status_code=200 if r["ok"] else 409)

    async def checker(request: Request, s: Session, role: str) -> Response:
        c, m = _names(request)
        chk = request.path_params["checker"]
        if chk != "*":
            check_name(chk, "checker")
        switch = request.path_params["switch"]
        if switch not in ("on", "off"):
            raise ConsoleError("a checker is switched on or off")
        results = await asyncio.gather(
            *(
                forward(c, n, "POST", f"/v1/modules/{m}/checkers/{chk}/{switch}", s)
                for n in _module_nodes(c, m)
            )
        )
        ok = all(r["ok"] for r in results)
        return JSONResponse({"ok": ok, "results": results}, status_code=200 if ok else 409)

    def _module_nodes(c: str, m: str) -> list[str]:
        st = console.hub.watched[c].state or {}
        mod = (st.get("modules") or {}).get(m) or {}
        return list(mod.get("nodes") or console.hub.nodes_of(c))

    async def install(request: Request, s: Session, role: str) -> Response:
        c, _ = _names(request)
        name = check_name(request.query_params.get("name", ""), "module")
        force = request.query_params.get("force") == "true"
        body = await request.body()
        if not body:
            raise ConsoleError("no package: choose a .hakit file")
        check = await forward(
            c, None, "POST", "/v1/modules/check", s, body=body, params={"name": name}
        )
        answer = check.get("body")
        if check["status"] == 409 and isinstance(answer, dict):
            return JSONResponse(
                {"ok": False, "problems": answer.get("problems", [])}, status_code=409
            )
        results = await asyncio.gather(
            *(
                forward(
                    c,
                    n,
                    "POST",
                    "/v1/modules",
                    s,
                    body=body,
                    params={"name": name, "force": str(force).lower()},
                )
                for n in console.hub.nodes_of(c)
            )
        )
        ok = all(r["ok"] for r in results)
        return JSONResponse({"ok": ok, "results": results}, status_code=200 if ok else 409)

    async def uninstall(request: Request, s: Session, role: str) -> Response:
        c, m = _names(request)
        results = await asyncio.gather(
            *(forward(c, n, "DELETE", f"/v1/modules/{m}", s) for n in console.hub.nodes_of(c))
        )
        ok = all(r["ok"] for r in results)
        return JSONResponse({"ok": ok, "results": results}, status_code=200 if ok else 409)

    async def register(request: Request, s: Session, role: str) -> Response:
        try:
            spec = json.loads(await request.body())
        except ValueError:
            raise ConsoleError("expected a JSON object") from None
        if not isinstance(spec, dict):
            raise ConsoleError("expected a JSON object")
        console.registry.add(
            str(spec.get("name", "")),
            parse_nodes(str(spec.get("nodes", ""))),
            str(spec.get("token", "")).strip(),
            str(spec.get("ca", "")).strip(),
            int(spec.get("port") or 7351),
        )
        console.hub.sync()
        log.info("console: %s registered cluster %s", s.user, spec.get("name"))
        return JSONResponse({"ok": True, "message": f"cluster {spec.get('name')} registered"})

    async def unregister(request: Request, s: Session, role: str) -> Response:
        name = check_name(request.path_params["cluster"], "cluster")
        console.registry.remove(name)
        console.hub.sync()
        log.info("console: %s removed cluster %s", s.user, name)
        return JSONResponse({"ok": True, "message": f"cluster {name} removed"})

    prefix = "/api/clusters/{cluster}"
    routes = [
        Route("/", index),
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/static/{name}", asset),
        Route("/favicon.ico", lambda request: Response(status_code=204)),
        Route("/api/me", needs("monitor", me, post=False)),
        Route("/api/stream", needs("monitor", stream, post=False)),
        Route(prefix + "/events", needs("monitor", events, post=False)),
        Route(prefix + "/modules/{module}/files", needs("monitor", files, post=False)),
        Route(
            prefix + "/modules/{module}/command/{command}",
            needs("control", command),
            methods=["POST"],
        ),
        Route(
            prefix + "/modules/{module}/checkers/{checker}/{switch}",
            needs("control", checker),
            methods=["POST"],
        ),
        Route(prefix + "/install", needs("admin", install), methods=["POST"]),
        Route(prefix + "/modules/{module}/uninstall", needs("admin", uninstall), methods=["POST"]),
        Route("/api/registry", needs("admin", register), methods=["POST"]),
        Route("/api/registry/{cluster}/remove", needs("admin", unregister), methods=["POST"]),
    ]
    routes += manage_routes(console, needs, forward, _names)
    app = Starlette(routes=routes)
    return Limits(app, console)


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class Limits:
    """ASGI middleware in front of the console: security headers on every answer, and the body
    bounded before the application reads it: 64 KiB, or 64 MiB for a package upload by a live
    admin session; refused with 413 as soon as its length or the bytes received pass the
    limit, and cut if it does not arrive within BODY_TIME seconds."""

    def __init__(self, app: Any, console: Console) -> None:
        self.app = app
        self.console = console

    def _limit(self, scope: Any, headers: dict[str, str]) -> int:
        path = scope["path"]
        if scope["method"] != "POST":
            return SMALL_BODY
        if path.endswith("/install"):
            big = PACKAGE_BODY
        elif path.endswith(EDIT_PATHS):
            big = EDIT_BODY
        else:
            return SMALL_BODY
        cookies = dict(
            c.strip().split("=", 1) for c in headers.get("cookie", "").split(";") if "=" in c
        )
        s, _ = self.console.sessions.get(cookies.get(COOKIE), touch=False)
        if s is not None and allows(self.console.users.role(s.user) or "", "admin"):
            return big
        return SMALL_BODY

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def secured(msg: Any) -> None:
            if msg["type"] == "http.response.start":
                extra = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                if self.console.secure:
                    extra.append((b"strict-transport-security", b"max-age=31536000"))
                msg = dict(msg, headers=[*msg.get("headers", []), *extra])
            await send(msg)

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        limit = self._limit(scope, headers)
        try:
            async with asyncio.timeout(BODY_TIME):
                body = await read_body(receive, headers, limit)
        except TimeoutError:
            await _refuse(scope, secured, 408, f"body not received within {BODY_TIME:g} s")
            return
        if body is None:
            return
        if isinstance(body, str):
            await _refuse(scope, secured, refusal_status(body), body)
            return
        again = replay(body, receive)

        await self.app(scope, again, secured)


async def _refuse(scope: Any, send: Any, status: int, why: str) -> None:
    async def nothing() -> Any:
        return {"type": "http.disconnect"}

    resp = JSONResponse(
        {"ok": False, "message": why}, status_code=status, headers={"Connection": "close"}
    )
    with contextlib.suppress(OSError):
        await resp(scope, nothing, send)
