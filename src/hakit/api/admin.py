"""API v1 routes of the administration plane (ADR 0004): the CA certificate, API tokens and
their replication between nodes, the audit trail, the live stream, installed modules, their
files, script outputs and packages.

They use only what the daemon hands them (`AdminSource`) and the node's files."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from hakit.adapters.tokenstore import TokenStore, parse_records
from hakit.api import audit
from hakit.core.access import valid_id
from hakit.errors import ConfigError, HakitError
from hakit.paths import Paths

STREAMS = 32  # live streams at once on one node
STREAM_PERIOD = 0.25  # s between two looks at the state
STREAM_KEEPALIVE = 15.0  # s between two comments on a quiet stream
FILE_LIMIT = 256 * 1024  # bytes of one module file or script output shown
FILES_LIMIT = 2 << 20  # bytes of a module's files in one answer


class AdminSource(Protocol):
    paths: Paths

    def status(self) -> dict[str, Any]: ...

    def events_after(self, seq: int) -> tuple[int, list[dict[str, Any]]]:
        """Timeline entries recorded after the `seq`-th, and the current sequence number."""
        ...


@dataclass
class Admin:
    """What these routes need beside the daemon."""

    tokens: TokenStore
    ca: dict[str, str]  # {"cluster", "ca" (PEM), "fingerprint" ("sha256:…")}
    tokens_changed: Callable[[], None]  # push to the other nodes now


def _who(request: Request) -> dict[str, Any]:
    who = request.scope.get("state", {}).get("hakit_who")
    return who if isinstance(who, dict) else {"kind": "anonymous"}


def _module_dir(paths: Paths, module: str) -> Path:
    d = paths.modules / module
    if not (d / "module.yaml").is_file():
        raise HTTPException(404, f"no module {module!r} installed on this node")
    return d


def _read_text(p: Path) -> str | None:
    """A file's text (its last FILE_LIMIT bytes), or None if not text."""
    with p.open("rb") as f:
        size = f.seek(0, 2)
        f.seek(max(0, size - FILE_LIMIT))
        data = f.read()
    if b"\0" in data:
        return None
    text = data.decode("utf-8", "replace")
    return text if size <= FILE_LIMIT else f"[… first {size - FILE_LIMIT} bytes left out]\n{text}"


def add_admin_routes(app: FastAPI, source: AdminSource, admin: Admin | None) -> None:
    """`admin` None: no token store (the routes about tokens answer 503)."""
    streams = asyncio.Semaphore(STREAMS)
    paths = source.paths

    def store() -> TokenStore:
        if admin is None:
            raise HTTPException(503, "API tokens are not available on this node")
        return admin.tokens

    @app.get("/v1/ca", summary="The cluster CA certificate and its fingerprint (no token)")
    def ca() -> dict[str, str]:
        if admin is None:
            raise HTTPException(503, "no TLS on this API")
        return admin.ca

    # --- tokens ------------------------------------------------------------------------
    @app.get("/v1/tokens", summary="API tokens (never their secrets), with their last use here")
    def tokens() -> dict[str, Any]:
        s = store()
        rows = []
        for r in sorted(s.records.values(), key=lambda r: r.created):
            row = r.public()
            row["last_used_here"] = s.last_used.get(r.id)
            rows.append(row)
        return {"tokens": rows, "problem": s.problem}

    @app.post(
        "/v1/tokens",
        summary="Create an API token with a role (admin, control, monitor): the answer is the "
        "only place its secret ever appears",
    )
    def token_create(
        request: Request,
        name: str,
        role: str = Query(..., pattern="^(admin|control|monitor)$"),
        ttl: float | None = Query(None, gt=0),
    ) -> JSONResponse:
        s = store()
        try:
            token, rec = s.create(name, role, ttl, audit.who_text(_who(request)), time.time())
        except HakitError as e:
            return JSONResponse({"detail": str(e)}, status_code=409)
        if admin is not None:
            admin.tokens_changed()
        return JSONResponse(
            {
                "token": token,
                **rec.public(),
                "message": f"token {rec.id} ({rec.name}, {rec.role}) created",
                "ca_fingerprint": admin.ca["fingerprint"] if admin else None,
            }
        )

    @app.delete("/v1/tokens/{token}", summary="Revoke an API token (on every node)")
    def token_revoke(request: Request, token: str) -> JSONResponse:
        s = store()
        if not valid_id(token):
            raise HTTPException(404, f"bad token id {token!r}: 12 characters a-z, 2-7")
        try:
            rec = s.revoke(token, audit.who_text(_who(request)), time.time())
        except HakitError as e:
            return JSONResponse({"detail": str(e)}, status_code=404)
        if admin is not None:
            admin.tokens_changed()
        return JSONResponse({**rec.public(), "message": f"token {rec.id} ({rec.name}) revoked"})

    @app.get("/v1/tokens/records", summary="The token store, for the other nodes (nodes only)")
    def token_records() -> dict[str, Any]:
        s = store()
        return {"digest": s.digest(), "tokens": [r.to_json() for r in s.records.values()]}

    @app.post("/v1/tokens/records", summary="Merge another node's token store (nodes only)")
    async def token_merge(request: Request) -> JSONResponse:
        s = store()
        try:
            records = parse_records(json.loads(await request.body()), "the records sent")
        except (ValueError, HakitError) as e:
            return JSONResponse({"detail": f"bad token records: {e}"}, status_code=400)
        changed = s.merge_in(records)
        return JSONResponse({"changed": changed, "digest": s.digest()})

    # --- audit -------------------------------------------------------------------------
    @app.get("/v1/audit", summary="Audit records of this node, oldest first, with filters")
    async def audit_(
        limit: int = Query(100, ge=1, le=5000),
        since: float | None = Query(None, ge=0),
        module: str | None = None,
        who: str | None = Query(None, max_length=64),
        failed: bool = False,
    ) -> list[dict[str, Any]]:
        return await asyncio.to_thread(
            audit.query, paths.audit_log, limit, since, module, who, failed
        )

    # --- live stream -------------------------------------------------------------------
    @app.get(
        "/v1/stream",
        summary="Server-sent events: `state` (the whole state when it changed), `event` (each "
        "new timeline entry); `module` limits both to one module",
        response_class=StreamingResponse,
    )
    async def stream(request: Request, module: str | None = None) -> Response:
        if streams.locked():
            raise HTTPException(503, f"too many live streams on this node (at most {STREAMS})")
        await streams.acquire()
        return StreamingResponse(
            _events(source, module, streams),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    # --- modules -----------------------------------------------------------------------
    @app.get("/v1/modules", summary="Modules installed on this node, with their state or error")
    def modules() -> dict[str, Any]:
        names = (
            sorted(d.name for d in paths.modules.iterdir() if (d / "module.yaml").is_file())
            if paths.modules.is_dir()
            else []
        )
        st = source.status()
        mods = st.get("modules", {})
        return {"node": st.get("node"), "modules": {n: mods.get(n, {}) for n in names}}

    @app.get(
        "/v1/modules/{module}/files",
        summary="The module's text files (module.yaml, scripts), for reading and editing",
    )
    async def module_files(module: str) -> dict[str, Any]:
        folder = _module_dir(paths, module)
        return await asyncio.to_thread(_files, folder)

    @app.get("/v1/modules/{module}/package", summary="The module as a .hakit package (zip)")
    async def module_package(module: str) -> Response:
        from hakit.daemon.packages import package_bytes

        folder = _module_dir(paths, module)
        data = await asyncio.to_thread(package_bytes, folder)
        return Response(
            data,
            media_type="application/zip",
            headers={"Content-Disposition": f'attachment; filename="{module}.hakit"'},
        )

    @app.post(
        "/v1/modules/check",
        summary="Check a module package (zip body) as `install` would, installing nothing: "
        "200 with a summary, 409 with every problem (file:line)",
    )
    async def module_check(request: Request, name: str) -> JSONResponse:
        from hakit.daemon.packages import check_bytes

        data = await request.body()
        try:
            mf = await asyncio.to_thread(check_bytes, paths, data, name)
        except ConfigError as e:
            return JSONResponse(
                {"ok": False, "problems": [str(i) for i in e.issues]}, status_code=409
            )
        except HakitError as e:
            return JSONResponse({"ok": False, "problems": [str(e)]}, status_code=409)
        c = mf.config
        return JSONResponse(
            {
                "ok": True,
                "module": mf.name,
                "kind": c.kind,
                "nodes": list(c.nodes),
                "message": f"{mf.name}: OK — {c.kind} module on {', '.join(c.nodes)}",
            }
        )

    @app.get(
        "/v1/modules/{module}/scripts",
        summary="The module's script outputs on this node, newest last (`name` for one)",
    )
    async def scripts(module: str, name: str | None = None, limit: int = 50) -> Any:
        from hakit.adapters.scripts import LOG_RE

        folder = paths.log / "modules" / module / "scripts"
        if name is not None:
            if not LOG_RE.fullmatch(name) or not (folder / name).is_file():
                raise HTTPException(404, f"no script output {name!r} for {module}")
            text = await asyncio.to_thread(_read_text, folder / name)
            return PlainTextResponse(text or "")
        logs = (
            sorted(p for p in folder.glob("*.log") if LOG_RE.fullmatch(p.name))
            if (folder.is_dir())
            else []
        )
        return [
            {"name": p.name, "size": p.stat().st_size, "at": p.stat().st_mtime}
            for p in logs[-max(1, min(limit, 500)) :]
        ]


def _files(folder: Path) -> dict[str, Any]:
    out: dict[str, str] = {}
    skipped: list[str] = []
    total = 0
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_symlink() or not p.is_file():
            continue
        text = _read_text(p)
        if text is None or total + len(text) > FILES_LIMIT:
            skipped.append(rel)
            continue
        total += len(text)
        out[rel] = text
    return {"module": folder.name, "files": out, "not_shown": skipped}


async def _events(
    source: AdminSource, module: str | None, streams: asyncio.Semaphore
) -> AsyncIterator[bytes]:
    def sse(kind: str, data: Any) -> bytes:
        return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()

    def state() -> dict[str, Any]:
        st = source.status()
        if module is not None:
            st = {**st, "modules": {k: v for k, v in st.get("modules", {}).items() if k == module}}
        return st

    try:
        seq, _ = source.events_after(1 << 62)  # from now on
        last = state()
        yield sse("state", last)
        quiet = sent = 0.0
        while True:
            await asyncio.sleep(STREAM_PERIOD)
            quiet += STREAM_PERIOD
            sent += STREAM_PERIOD
            seq, new = source.events_after(seq)
            for ev in new:
                if module is None or ev.get("module") == module:
                    yield sse("event", ev)
                    quiet = 0.0
            now = state()
            if sent >= STATE_REFRESH or _changed(now, last):
                yield sse("state", now)
                last, quiet, sent = now, 0.0, 0.0
            if quiet >= STREAM_KEEPALIVE:
                yield b": keepalive\n\n"
                quiet = 0.0
    finally:
        with contextlib.suppress(ValueError):
            streams.release()


STATE_REFRESH = 5.0  # s: the state is sent at least this often (ages, throughput)
_NODE_VOLATILE = ("last_heard", "last_heard_ago", "last_heard_by_network", "clock_offset")


def _changed(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two states differ in more than their clock-driven fields (the time, the
    heartbeat counters, when each peer was last heard)."""

    def strip(st: dict[str, Any]) -> str:
        nodes = {
            n: {k: v for k, v in d.items() if k not in _NODE_VOLATILE}
            for n, d in st.get("nodes", {}).items()
            if isinstance(d, dict)
        }
        rest = {k: v for k, v in st.items() if k not in ("at", "daemon", "heartbeat", "nodes")}
        return json.dumps([nodes, rest], sort_keys=True, default=str)

    return strip(a) != strip(b)
