"""The console's routes beyond watching and commands: the clusters' audit trail, API tokens,
script outputs, module packages, editing a module's files or the cluster's configuration
(checked by a node, then applied node by node) and modules made from the shipped examples.

Each route says the role it needs (`needs`): monitor reads, control acts, admin configures.
Every request to a cluster goes through `forward` (or `download`), which sends the console
user's name (`X-Hakit-On-Behalf-Of`), so the cluster's audit says who did it.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import stat
import time
import zipfile
from collections import deque
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hakit.console.sessions import Session
from hakit.console.store import ConsoleError, check_name

TOKEN_ID = re.compile(r"[a-z2-7]{12}")
SCRIPT_LOG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}\.log")
FILE_NAME = re.compile(
    r"[A-Za-z0-9_][A-Za-z0-9._-]{0,100}(/[A-Za-z0-9_][A-Za-z0-9._-]{0,100}){0,4}"
)
TEMPLATES = ("mirror-web", "farm-web", "console-ha")
JOURNAL_KEPT = 500
EDIT_FILES = 200  # files in one edit

Forward = Callable[..., Awaitable[dict[str, Any]]]


class Journal:
    """The console's own log of logins, failed logins and logouts (the last JOURNAL_KEPT, in
    memory: the log file keeps them all)."""

    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self.now = now
        self.items: deque[dict[str, Any]] = deque(maxlen=JOURNAL_KEPT)

    def add(self, kind: str, user: str, address: str, message: str) -> None:
        self.items.append(
            {
                "at": self.now(),
                "kind": kind,
                "user": user[:64],
                "address": address,
                "message": message,
            }
        )


def _json(body: bytes) -> dict[str, Any]:
    try:
        spec = json.loads(body or b"{}")
    except ValueError:
        raise ConsoleError("expected a JSON object") from None
    if not isinstance(spec, dict):
        raise ConsoleError("expected a JSON object")
    return spec


def _files(spec: dict[str, Any]) -> dict[str, str]:
    files = spec.get("files")
    if not isinstance(files, dict) or not files:
        raise ConsoleError("no file to change")
    if len(files) > EDIT_FILES:
        raise ConsoleError(f"at most {EDIT_FILES} files in one change")
    out: dict[str, str] = {}
    for name, text in files.items():
        if not isinstance(name, str) or not FILE_NAME.fullmatch(name) or ".." in name:
            raise ConsoleError(f"invalid file name {str(name)[:80]!r}")
        if not isinstance(text, str):
            raise ConsoleError(f"{name}: expected its text")
        out[name] = text
    return out


def rebuild(package: bytes, files: dict[str, str]) -> bytes:
    """The package `package` (zip) with `files` replaced or added; a file keeps its mode, a
    new one is executable under bin/."""
    try:
        src = zipfile.ZipFile(io.BytesIO(package))
    except zipfile.BadZipFile:
        raise ConsoleError("the node's package is not a zip file") from None
    out = io.BytesIO()
    with src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for info in src.infolist():
            if info.filename in files:
                continue
            z.writestr(info, src.read(info))
        for name, text in sorted(files.items()):
            info = zipfile.ZipInfo(name, time.localtime()[:6])
            old = next((i for i in src.infolist() if i.filename == name), None)
            mode = (old.external_attr >> 16) & 0o777 if old is not None else 0
            if not mode:
                mode = 0o755 if name.startswith("bin/") else 0o644
            info.external_attr = (stat.S_IFREG | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, text.encode("utf-8"))
    return out.getvalue()


def _template_dir(name: str) -> Path:
    if name not in TEMPLATES:
        raise ConsoleError(f"unknown template {name!r}: {', '.join(TEMPLATES)}")
    return Path(str(resources.files("hakit") / "examples" / name))


def template_files(name: str) -> dict[str, str]:
    folder = _template_dir(name)
    return {
        p.relative_to(folder).as_posix(): p.read_text("utf-8", "replace")
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def _nodes(spec: dict[str, Any], known: list[str]) -> list[str]:
    nodes = spec.get("nodes", known)
    if not isinstance(nodes, list) or not all(isinstance(n, str) for n in nodes):
        raise ConsoleError("nodes: expected a list of node names")
    if not nodes:
        raise ConsoleError("no node chosen: tick the nodes to apply on")
    for n in nodes:
        if n not in known:
            raise ConsoleError(f"no node {n!r} in this cluster ({', '.join(known)})")
    return list(nodes)


def node_param(request: Request) -> str | None:
    """The request's `?node=` (the node to ask), checked as a name; None if absent."""
    node = request.query_params.get("node")
    return None if node is None else check_name(node, "node")


def manage_routes(
    console: Any,
    needs: Callable[..., Any],
    forward: Forward,
    names: Callable[[Request], tuple[str, str]],
) -> list[Route]:
    hub = console.hub

    def module_nodes(c: str, m: str) -> list[str]:
        st = hub.watched[c].state or {}
        mod = (st.get("modules") or {}).get(m) or {}
        return list(mod.get("nodes") or hub.nodes_of(c))

    async def fan_out(
        c: str, nodes: list[str], method: str, path: str, s: Session, **kw: Any
    ) -> tuple[bool, list[dict[str, Any]]]:
        results = await asyncio.gather(*(forward(c, n, method, path, s, **kw) for n in nodes))
        for r in results:
            body = r.pop("body", None)
            if isinstance(body, dict) and body.get("problems"):
                r["problems"] = [str(x) for x in body["problems"]]
        return all(r["ok"] for r in results), list(results)

    def answer(ok: bool, results: list[dict[str, Any]], **extra: Any) -> JSONResponse:
        return JSONResponse({"ok": ok, "results": results, **extra}, status_code=200 if ok else 409)

    # --- audit and the console's journal ---------------------------------------------------
    async def audit(request: Request, s: Session, role: str) -> Response:
        c, _ = names(request)
        q = request.query_params
        try:
            limit = max(1, min(int(q.get("limit") or 200), 5000))
            since = float(q["since"]) if q.get("since") else None
        except ValueError:
            raise ConsoleError("limit and since are numbers") from None
        params: dict[str, Any] = {"limit": limit}
        if since is not None:
            params["since"] = since
        if q.get("module"):
            params["module"] = check_name(q["module"], "module")
        if q.get("who"):
            params["who"] = q["who"][:64]
        if q.get("failed") == "true":
            params["failed"] = "true"
        nodes = hub.nodes_of(c)
        got = await asyncio.gather(
            *(forward(c, n, "GET", "/v1/audit", s, params=params) for n in nodes)
        )
        items: list[dict[str, Any]] = []
        errors = []
        for n, r in zip(nodes, got, strict=True):
            if r["ok"] and isinstance(r.get("body"), list):
                items.extend(dict(x, node=x.get("node", n)) for x in r["body"])
            else:
                errors.append(f"{n}: {r['message'] or 'HTTP ' + str(r['status'])}")
        items.sort(key=lambda x: x.get("at") or 0)
        return JSONResponse({"items": items[-limit:], "errors": errors})

    async def journal(request: Request, s: Session, role: str) -> Response:
        return JSONResponse({"items": list(console.journal.items)})

    # --- API tokens ----------------------------------------------------------------------
    def token_refusal(r: dict[str, Any]) -> JSONResponse:
        msg = r["message"] or f"HTTP {r['status']}"
        if r["status"] in (401, 403):
            msg = (
                f"the cluster refused: {msg}. Managing API tokens needs the cluster registered "
                "with an admin token (`hakit token create console --role admin`)"
            )
        return JSONResponse({"ok": False, "message": msg, "node_status": r["status"]}, 409)

    async def tokens(request: Request, s: Session, role: str) -> Response:
        c, _ = names(request)
        r = await forward(c, None, "GET", "/v1/tokens", s)
        if not r["ok"]:
            return token_refusal(r)
        return JSONResponse({"ok": True, **r["body"]})

    async def token_create(request: Request, s: Session, role: str) -> Response:
        c, _ = names(request)
        spec = _json(await request.body())
        name = check_name(str(spec.get("name", "")), "token name")
        trole = str(spec.get("role", ""))
        if trole not in ("monitor", "control", "admin"):
            raise ConsoleError("a token's role is monitor, control or admin")
        params: dict[str, Any] = {"name": name, "role": trole}
        if spec.get("ttl") not in (None, ""):
            try:
                params["ttl"] = float(spec["ttl"])
            except (TypeError, ValueError):
                raise ConsoleError("ttl: a number of seconds") from None
        r = await forward(c, None, "POST", "/v1/tokens", s, params=params)
        if not r["ok"]:
            return token_refusal(r)
        return JSONResponse({"ok": True, **r["body"]})

    async def token_revoke(request: Request, s: Session, role: str) -> Response:
        c, _ = names(request)
        tid = request.path_params["token"]
        if not TOKEN_ID.fullmatch(tid):
            raise ConsoleError(f"bad token id {tid[:20]!r}: 12 characters a-z, 2-7")
        r = await forward(c, None, "DELETE", f"/v1/tokens/{tid}", s)
        if not r["ok"]:
            return token_refusal(r)
        return JSONResponse({"ok": True, "message": r["message"]})

    # --- script outputs and packages -----------------------------------------------------
    async def scripts(request: Request, s: Session, role: str) -> Response:
        c, m = names(request)
        node = node_param(request)
        name = request.query_params.get("name")
        params: dict[str, Any] = {"limit": 100}
        if name is not None:
            if not SCRIPT_LOG.fullmatch(name):
                raise ConsoleError(f"invalid script output name {name[:80]!r}")
            params = {"name": name}
        if name is not None:
            data = await fetch(c, node, f"/v1/modules/{m}/scripts", s, params)
            return JSONResponse({"ok": True, "node": node, "text": data.decode("utf-8", "replace")})
        r = await forward(c, node, "GET", f"/v1/modules/{m}/scripts", s, params=params)
        if not r["ok"]:
            return JSONResponse({"ok": False, "message": r["message"]}, 502)
        return JSONResponse({"ok": True, "node": node, "items": r["body"]})

    async def fetch(
        c: str, node: str | None, path: str, s: Session, params: dict[str, Any] | None = None
    ) -> bytes:
        client = hub.client(c, node)
        try:
            status, data = await client.download(path, params=params, on_behalf_of=s.user)
        finally:
            await client.aclose()
        if status != 200:
            try:
                why = json.loads(data).get("detail") or ""
            except (ValueError, AttributeError):
                why = data[:200].decode("utf-8", "replace")
            raise ConsoleError(f"{path}: HTTP {status}: {why}")
        return bytes(data)

    async def download(c: str, node: str | None, m: str, s: Session) -> bytes:
        return await fetch(c, node, f"/v1/modules/{m}/package", s)

    async def package(request: Request, s: Session, role: str) -> Response:
        c, m = names(request)
        data = await download(c, node_param(request), m, s)
        return Response(
            data,
            media_type="application/zip",
            headers={"Content-Disposition": f'attachment; filename="{m}.hakit"'},
        )

    # --- check, then install on the chosen nodes -------------------------------------------
    async def check_then_install(
        c: str, m: str, body: bytes, nodes: list[str], s: Session
    ) -> JSONResponse:
        check = await forward(
            c, None, "POST", "/v1/modules/check", s, body=body, params={"name": m}
        )
        got = check.get("body")
        if check["status"] == 409 and isinstance(got, dict):
            return JSONResponse({"ok": False, "problems": got.get("problems", [])}, 409)
        if not check["ok"]:
            return JSONResponse({"ok": False, "message": check["message"]}, 502)
        ok, results = await fan_out(
            c, nodes, "POST", "/v1/modules", s, body=body, params={"name": m, "force": "true"}
        )
        return answer(ok, results)

    async def edit(request: Request, s: Session, role: str) -> Response:
        c, m = names(request)
        if request.path_params["step"] not in ("check", "apply"):
            raise ConsoleError("a change is checked or applied")
        spec = _json(await request.body())
        files = _files(spec)
        known = module_nodes(c, m)
        nodes = _nodes(spec, known) if request.path_params["step"] == "apply" else known
        base = await download(c, nodes[0], m, s)  # a node that has the module
        body = rebuild(base, files)
        if request.path_params["step"] == "check":
            r = await forward(
                c, None, "POST", "/v1/modules/check", s, body=body, params={"name": m}
            )
            got = _dict(r.get("body"))
            if r["status"] == 409:
                return JSONResponse({"ok": False, "problems": got.get("problems", [])}, 409)
            return JSONResponse(
                {"ok": r["ok"], "message": r["message"]}, status_code=200 if r["ok"] else 502
            )
        return await check_then_install(c, m, body, nodes, s)

    async def templates(request: Request, s: Session, role: str) -> Response:
        return JSONResponse({t: template_files(t) for t in TEMPLATES})

    async def create(request: Request, s: Session, role: str) -> Response:
        c, _ = names(request)
        spec = _json(await request.body())
        m = check_name(str(spec.get("name", "")), "module")
        tpl = str(spec.get("template", ""))
        files = {**template_files(tpl), **(_files(spec) if spec.get("files") else {})}
        from hakit.daemon.packages import package_bytes

        body = rebuild(await asyncio.to_thread(package_bytes, _template_dir(tpl)), files)
        return await check_then_install(c, m, body, _nodes(spec, hub.nodes_of(c)), s)

    # --- the cluster's configuration --------------------------------------------------------
    async def cluster_get(request: Request, s: Session, role: str) -> Response:
        c, _ = names(request)
        r = await forward(c, None, "GET", "/v1/cluster", s)
        if not r["ok"] or not isinstance(r.get("body"), dict):
            return JSONResponse({"ok": False, "message": r["message"]}, 502)
        body = r["body"]
        text = yaml.safe_dump(body.get("config", {}), sort_keys=False, default_flow_style=False)
        return JSONResponse(
            {
                "ok": True,
                "node": body.get("node"),
                "text": text,
                "pending_restart": body.get("pending_restart") or [],
            }
        )

    async def cluster_change(request: Request, s: Session, role: str) -> Response:
        c, _ = names(request)
        if request.path_params["step"] not in ("check", "apply"):
            raise ConsoleError("a change is checked or applied")
        spec = _json(await request.body())
        text = spec.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ConsoleError("no cluster.yaml text")
        body = text.encode("utf-8")
        check = await forward(c, None, "POST", "/v1/cluster/check", s, body=body)
        got = _dict(check.get("body"))
        if check["status"] == 409:
            return JSONResponse({"ok": False, "problems": _problems(got)}, 409)
        if not check["ok"]:
            return JSONResponse({"ok": False, "message": check["message"]}, 502)
        if request.path_params["step"] == "check":
            return JSONResponse(
                {"ok": True, "message": got.get("changes") or "cluster.yaml passes: no change"}
            )
        nodes = _nodes(spec, hub.nodes_of(c))
        ok, results = await fan_out(c, nodes, "POST", "/v1/cluster/apply", s, body=body)
        return answer(ok, results)

    prefix = "/api/clusters/{cluster}"
    mod = prefix + "/modules/{module}"
    return [
        Route(prefix + "/audit", needs("monitor", audit, post=False)),
        Route("/api/console/journal", needs("admin", journal, post=False)),
        Route(prefix + "/tokens", needs("admin", tokens, post=False), methods=["GET"]),
        Route(prefix + "/tokens", needs("admin", token_create), methods=["POST"]),
        Route(prefix + "/tokens/{token}/revoke", needs("admin", token_revoke), methods=["POST"]),
        Route(mod + "/scripts", needs("monitor", scripts, post=False)),
        Route(mod + "/package", needs("monitor", package, post=False)),
        Route(mod + "/edit/{step:str}", needs("admin", edit), methods=["POST"]),
        Route("/api/templates", needs("monitor", templates, post=False)),
        Route(prefix + "/create", needs("admin", create), methods=["POST"]),
        Route(prefix + "/cluster", needs("monitor", cluster_get, post=False)),
        Route(prefix + "/cluster/{step:str}", needs("admin", cluster_change), methods=["POST"]),
    ]


def _dict(x: Any) -> dict[str, Any]:
    return x if isinstance(x, dict) else {}


def _problems(body: dict[str, Any]) -> list[str]:
    got = body.get("problems") or body.get("errors") or body.get("issues")
    if isinstance(got, list) and got:
        return [str(x) for x in got]
    return [str(body.get("message") or body.get("detail") or "refused")]
