"""Replication commands and views: `hakit verify MODULE`, the resynchronisation progress bar."""

from __future__ import annotations

import time
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from hakit.cli.client import client_for
from hakit.cli.params import MODULE
from hakit.errors import HakitError
from hakit.paths import Paths

out = Console(highlight=False, soft_wrap=True)
VERIFY_TIMEOUT = 3600.0


def primary_of(st: dict[str, Any], module: str) -> str | None:
    mod = st.get("modules", {}).get(module)
    if mod is None:
        raise HakitError(f"no module {module!r} on {st.get('node')}")
    for node, n in mod.get("nodes", {}).items():
        if n.get("state") in ("PRIM", "ALONE"):
            return str(node)
    return None


def progress_line(p: dict[str, Any]) -> str:
    """One line for `hakit state`: files and bytes done/total, rate, time left."""
    mib = 1024 * 1024
    pct = f"{p['percent']:.0f} % " if p.get("percent") is not None else ""
    return (
        f"resync {pct}({p.get('phase')}): {p.get('files_done')}/{p.get('files_total')} files, "
        f"{p.get('bytes_done', 0) / mib:.1f}/{p.get('bytes_total', 0) / mib:.1f} MiB compared, "
        f"{p.get('bytes_sent', 0) / mib:.1f} MiB sent, {p.get('rate', 0) / mib:.1f} MiB/s, "
        f"{p.get('eta', 0):.0f} s left"
    )


class ProgressBar:
    """A live bar fed with the `replication.progress` objects of successive states; where the
    output is not a terminal (a log, a pipe), a progress line every `LINE_EVERY` seconds."""

    LINE_EVERY = 2.0

    def __init__(self, console: Console) -> None:
        self.console = console
        self._line_at = 0.0
        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[files]}"),
            console=console,
            transient=False,
        )
        self.task: Any = None

    def update(self, p: dict[str, Any] | None) -> None:
        if p is None:
            return
        if not self.console.is_terminal:
            now = time.monotonic()
            if now - self._line_at >= self.LINE_EVERY:
                self._line_at = now
                self.console.print(progress_line(p))
            return
        files = f"{p.get('files_done')}/{p.get('files_total')} files"
        if self.task is None:
            self.bar.start()
            self.task = self.bar.add_task("resynchronisation", total=None, files=files)
        total = p.get("bytes_total") or None
        self.bar.update(self.task, completed=p.get("bytes_done", 0), total=total, files=files)

    def close(self, done: bool = False) -> None:
        if self.task is not None:
            if done:
                total = self.bar.tasks[0].total
                self.bar.update(self.task, completed=total)
            self.bar.stop()
            self.task = None


@click.command("verify")
@click.argument("module", type=MODULE)
@click.option("--node", metavar="NODE", help="Ask NODE (default: the module's primary).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def verify(module: str, node: str | None, as_json: bool) -> None:
    """Compare both replicas of MODULE by checksums while the application runs."""
    import json

    paths = Paths.from_env()
    if node is None:
        st = client_for(paths, None).get("/state")
        node = primary_of(st, module)
        if node is None:
            raise HakitError(f"{module} has no primary: nothing to verify")
        if node == st.get("node"):
            node = None
    client = client_for(paths, node)
    client.timeout = VERIFY_TIMEOUT
    r = client.request("POST", f"/modules/{module}/verify", accept=(404, 409))
    if as_json:
        click.echo(json.dumps(r, indent=2))
    elif r.get("error"):
        out.print(f"[red]verify {module}: {r['error']}[/]")
    elif r.get("ok"):
        out.print(
            f"{module}: replicas identical — {r['files']} files, "
            f"{r['bytes'] / 1024 / 1024:.1f} MiB compared in {r['seconds']} s"
            + (
                f" ({r['changing_ignored']} paths changing during the check ignored)"
                if r.get("changing_ignored")
                else ""
            )
        )
    else:
        out.print(f"[red]{module}: {r['differences_total']} difference(s)[/]")
        for d in r["differences"]:
            out.print(f"  {d['path']}: {d['difference']}")
    if not r.get("ok"):
        raise SystemExit(1)
