"""`hakit witness run|check|state`: the split-brain witness on its third machine."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.table import Table

from hakit.cli.params import HelpGroup
from hakit.config.witness import default_path, load_witness
from hakit.paths import Paths

_CONFIG = click.option(
    "--config",
    "config",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Witness configuration (default: $HAKIT_ETC/witness.yaml).",
)


def _out() -> Console:
    return Console(highlight=False, soft_wrap=True)


@click.group("witness", cls=HelpGroup)
def witness() -> None:
    """The split-brain witness: grants module leases to cluster nodes (see docs/witness.md).

    Run it on a third machine that both nodes of each mirror module can reach; one witness
    serves many clusters.
    """


@witness.command("run")
@_CONFIG
def run(config: Path | None) -> None:
    """Run the witness in the foreground (systemd runs it as the `hakit-witness` service)."""
    from hakit.witness.server import run_witness

    paths = Paths.from_env()
    run_witness(config or default_path(paths.etc), paths)


@witness.command("check")
@_CONFIG
def check(config: Path | None) -> None:
    """Validate witness.yaml and the secrets it names; exit 2 with every problem located."""
    path = config or default_path(Paths.from_env().etc)
    wf = load_witness(path)
    c = wf.config
    listen = ", ".join(f"[{a}]" if a.version == 6 else str(a) for a in c.listen)
    click.echo(
        f"{path}: OK — listening on {listen} port {c.port}/udp; quarantine {c.quarantine:g} s; "
        f"{len(c.clusters)} cluster(s): {', '.join(c.clusters)}"
    )


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _lease_row(module: str, item: dict[str, Any], now: float) -> list[str]:
    holder = item.get("holder") or ""
    if holder and item.get("expires_at") is not None:
        remaining: float | None = max(0.0, float(item["expires_at"]) - now)
        state = "[green]held[/]" if remaining else "[yellow]expiring[/]"
    else:
        remaining = None
        state = {"expired": "[yellow]expired[/]", "released": "released"}.get(
            item.get("state", ""), item.get("state", "")
        )
    prev = item.get("previous")
    previous = "-"
    if prev:
        previous = f"{prev['holder']} ({prev['ended']}, grace {prev['grace']:g} s)"
    waiting = ", ".join(
        f"{n} ({c['waiting_for']:.1f} s)" for n, c in (item.get("contenders") or {}).items()
    )
    latest = item.get("latest")
    current = f"[magenta]only {latest}[/]" if latest else "all"
    return [module, state, holder or "-", _seconds(remaining), previous, waiting or "-", current]


def render(status: dict[str, Any], console: Console, now: float) -> None:
    q_left = float(status.get("quarantine_left", 0.0))
    quarantine = (
        f"[yellow]in quarantine for {q_left:.1f} s more[/]"
        if q_left > 0
        else f"quarantine ({status['quarantine']:g} s) over"
    )
    console.print(
        f"witness pid {status['pid']}, up {status['uptime']:.0f} s, listening on "
        f"{', '.join(status['listen'])}; {quarantine}"
    )
    for cluster, c in status["clusters"].items():
        table = Table(title=f"cluster {cluster}", title_justify="left", box=box.SIMPLE_HEAD)
        columns = ("module", "lease", "holder", "remaining", "previous holder", "waiting")
        for col in (*columns, "current copy"):
            table.add_column(col)
        for module, item in c["leases"].items():
            table.add_row(*_lease_row(module, item, now))
        if not c["leases"]:
            table.add_row("(no lease asked for yet)", "", "", "", "", "", "")
        console.print(table)
    counters = status["counters"]
    rejected = {k: v for k, v in counters["rejected"].items() if v}
    console.print(
        f"datagrams: {counters['received']} received, {counters['answered']} answered "
        f"({counters['granted']} granted, {counters['not_granted']} not granted); dropped: "
        + (", ".join(f"{k} {v}" for k, v in rejected.items()) if rejected else "none")
    )


def _as_of(status: dict[str, Any], now: float) -> dict[str, Any]:
    """Times left as of `now` rather than as of the last write (up to 2 s before)."""
    age = max(0.0, now - float(status.get("written_at", now)))
    status["quarantine_left"] = round(max(0.0, float(status.get("quarantine_left", 0)) - age), 3)
    status["uptime"] = round(float(status.get("uptime", 0)) + age, 3)
    for c in status.get("clusters", {}).values():
        for item in c.get("leases", {}).values():
            if item.get("expires_at") is not None:
                item["remaining"] = round(max(0.0, float(item["expires_at"]) - now), 3)
    return status


@witness.command("state")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def state(as_json: bool) -> None:
    """What the running witness holds: leases, holders, remaining time, dropped datagrams.

    Read from the status file the witness rewrites at least every 2 s; exit 3 when no witness
    runs on this machine.
    """
    from hakit.witness.server import read_status

    now = time.time()
    status = _as_of(read_status(Paths.from_env(), now), now)
    if as_json:
        click.echo(json.dumps(status, indent=2))
    else:
        render(status, _out(), now)
