"""The node API's reference, generated from its OpenAPI document (by `gendocs`): every
endpoint with the role it needs (`core.access.ROUTES`), its parameters and its summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hakit.api.app import create_app
from hakit.core.access import route
from hakit.paths import Paths


class _Nothing:
    """create_app only keeps its source for the requests: none is made here."""

    paths = Paths(etc=Path("/etc/hakit"), var=Path("/var/lib/hakit"), log=Path("/var/log/hakit"))


def openapi() -> dict[str, Any]:
    app = create_app(_Nothing(), {"node": "", "boot": ""})  # type: ignore[arg-type]
    doc = app.openapi()
    doc["info"]["version"] = "v1"  # the document must not change with each release
    return doc


def openapi_json() -> str:
    return json.dumps(openapi(), indent=2, sort_keys=True) + "\n"


def example_path(path: str) -> str:
    """A concrete path for the route table: `{module}` → `app`, …"""
    for k, v in {
        "{module}": "app",
        "{checker}": "web",
        "{switch}": "on",
        "{command}": "start",
        "{token}": "abcdefghijkl",
    }.items():
        path = path.replace(k, v)
    return path


def reference(header: str) -> str:
    doc = openapi()
    lines = [
        header,
        "# Node API v1 reference",
        "",
        "Generated from the OpenAPI document that every node serves at `GET /v1/openapi.json`",
        "(also in [openapi.json](openapi.json)). How to authenticate, the roles, the live",
        "stream and the audit trail: [api.md](api.md).",
        "",
        "| method | path | role needed by a token | what it does | parameters |",
        "| --- | --- | --- | --- | --- |",
    ]
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            r = route(method.upper(), example_path(path))
            role = (
                "none (open)"
                if r is not None and r.needs is None
                else (r.needs.label if r is not None and r.needs is not None else "nodes only")
            )
            if r is not None and r.action == "token-sync":
                role = "nodes only"
            params = ", ".join(
                f"`{p['name']}`" + ("" if p.get("required") else "?")
                for p in op.get("parameters", [])
                if p.get("in") == "query"
            )
            summary = op.get("summary", "").replace("|", "\\|")
            lines.append(f"| {method.upper()} | `{path}` | {role} | {summary} | {params} |")
    lines += [
        "",
        "Nodes (mutual TLS + signature) and root on the unix socket may call every endpoint.",
        "`GET /metrics` needs no token unless `api.metrics: token` ([metrics.md](metrics.md)).",
        "",
    ]
    return "\n".join(lines)
