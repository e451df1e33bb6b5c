"""`hakit token`, `hakit audit`, `hakit cluster ca`: API tokens for tools and people, the
audit trail, the cluster CA for tools (ADR 0004, docs/api.md). All through the node API."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from hakit.cli.client import client_for
from hakit.cli.cluster import cluster, parse_duration
from hakit.cli.everywhere import cluster_nodes
from hakit.cli.params import MODULE, HelpGroup
from hakit.core.access import ROLES
from hakit.errors import HakitError
from hakit.paths import Paths

out = Console(highlight=False, soft_wrap=True)


def _when(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


@click.group("token", cls=HelpGroup)
def token() -> None:
    """API tokens for tools and people (console, Prometheus, scripts): roles admin, control,
    monitor; valid on every node of the cluster."""


@token.command("create")
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice(ROLES),
    required=True,
    help="monitor: read-only; control: + module commands and checker switches; admin: + "
    "configuration, installation, tokens.",
)
@click.option("--ttl", metavar="DURATION", help="Lifetime, e.g. 12h or 90d (default: none).")
@click.option("--json", "as_json", is_flag=True)
def token_create(name: str, role: str, ttl: str | None, as_json: bool) -> None:
    """Create a token: printed once (only its hash is kept), with the CA fingerprint that
    clients pin."""
    params: dict[str, Any] = {"name": name, "role": role}
    if ttl is not None:
        params["ttl"] = parse_duration(ttl)
    api = client_for(Paths.from_env(), None)
    answer = api.request("POST", "/tokens", params=params, accept=(409,))
    if "token" not in answer:
        raise HakitError(str(answer.get("detail")))
    if as_json:
        click.echo(json.dumps(answer, indent=2))
        return
    out.print(f"{answer['message']}; it works on every node of the cluster.")
    out.print(f"token:          {answer['token']}")
    out.print(f"CA fingerprint: {answer['ca_fingerprint']}")
    out.print(
        "Keep the token secret: it is shown only now. Revoke it with "
        f"`hakit token revoke {answer['id']}`."
    )


@token.command("list")
@click.option("--json", "as_json", is_flag=True)
def token_list(as_json: bool) -> None:
    """The tokens (never their secrets): role, creation, expiry, revocation, last use."""
    answer = client_for(Paths.from_env(), None).get("/tokens")
    if as_json:
        click.echo(json.dumps(answer, indent=2))
        return
    if answer.get("problem"):
        out.print(f"[red]{answer['problem']}[/]", markup=True)
    rows = answer["tokens"]
    if not rows:
        out.print("no API tokens (hakit token create NAME --role monitor)")
        return
    t = Table("id", "name", "role", "created", "expires", "state", "last used here")
    now = time.time()
    for r in rows:
        if r["revoked"] is not None:
            state = f"revoked {_when(r['revoked'])}"
        elif r["expires"] is not None and r["expires"] <= now:
            state = "expired"
        else:
            state = "valid"
        t.add_row(
            r["id"],
            r["name"],
            r["role"],
            f"{_when(r['created'])} by {r['created_by']}",
            _when(r["expires"]),
            state,
            _when(r.get("last_used_here")),
        )
    out.print(t)


@token.command("revoke")
@click.argument("token_id", metavar="ID")
def token_revoke(token_id: str) -> None:
    """Revoke a token on every node (at once on those that answer, the others within 10 s of
    their return)."""
    answer = client_for(Paths.from_env(), None).request(
        "DELETE", f"/tokens/{token_id}", accept=(404,)
    )
    if "message" not in answer:
        raise HakitError(str(answer.get("detail")))
    out.print(answer["message"])


def _audit_line(r: dict[str, Any]) -> str:
    from hakit.api.audit import who_text

    style = {"ok": "", "refused": "yellow", "error": "red"}.get(r.get("result", ""), "")
    text = (
        f"{_when(r['at'])} {r.get('node', '')} {who_text(r.get('who', {}))} from "
        f"{r.get('address') or 'local'}: {r['method']} {r['path']} → {r['status']} "
        f"{r['result']}" + (f": {r['message']}" if r.get("message") else "")
    )
    return f"[{style}]{text}[/]" if style else text


@click.command("audit")
@click.option("-n", "--lines", type=int, default=50, show_default=True)
@click.option("--module", type=MODULE, help="Only actions on this module.")
@click.option("--who", help="Only this token (id or name), node or user.")
@click.option("--since", metavar="DURATION", help="Only the last DURATION (e.g. 2h).")
@click.option("--failed", is_flag=True, help="Only refused or failed actions.")
@click.option("--node", metavar="NODE", help="The audit trail of NODE instead of this node's.")
@click.option("--all", "all_nodes", is_flag=True, help="Every node's, merged by time.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def audit(
    lines: int,
    module: str | None,
    who: str | None,
    since: str | None,
    failed: bool,
    node: str | None,
    all_nodes: bool,
    as_json: bool,
) -> None:
    """Who did what, when, from where, with what result: every command and configuration
    change made on this node (CLI, API, console)."""
    paths = Paths.from_env()
    params: dict[str, Any] = {"limit": max(1, min(lines, 5000))}
    if module:
        params["module"] = module
    if who:
        params["who"] = who
    if since:
        params["since"] = time.time() - parse_duration(since)
    if failed:
        params["failed"] = "true"
    nodes: list[str | None] = [node]
    if all_nodes:
        nodes = list(cluster_nodes(paths))
    records: list[dict[str, Any]] = []
    for n in nodes:
        try:
            records += client_for(paths, n).get("/audit", **params)
        except HakitError as e:
            if not all_nodes:
                raise
            out.print(f"[red]{n}: {e}[/]", markup=True)
    records.sort(key=lambda r: r["at"])
    for r in records[-params["limit"] :]:
        if as_json:
            click.echo(json.dumps(r))
        else:
            out.print(_audit_line(r), markup=True)
    if not records and not as_json:
        out.print("no audit records")


@cluster.command("ca")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write the PEM here."
)
def cluster_ca(output: Path | None) -> None:
    """The cluster CA certificate and its fingerprint, for tools that connect with an API
    token (pin the fingerprint, or give the file to Prometheus's tls_config.ca_file)."""
    answer = client_for(Paths.from_env(), None).get("/ca")
    if output is None:
        click.echo(answer["ca"], nl=False)  # stdout: `hakit cluster ca > ca.pem` works
        Console(stderr=True, soft_wrap=True).print(f"fingerprint: {answer['fingerprint']}")
    else:
        output.write_text(answer["ca"])
        out.print(f"wrote {output}; fingerprint: {answer['fingerprint']}")


def register(cli: click.Group) -> None:
    cli.add_command(token)
    cli.add_command(audit)
