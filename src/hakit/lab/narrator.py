"""What every narrated story in the lab (`hakit lab demo`, its scenes) does: run `hakit` inside a
node and show it, read a node's state and timeline, wait for a module's state — each failure
a `DemoFailed` that says which step and node."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.rule import Rule

from hakit.lab.errors import LabError
from hakit.lab.lab import Lab
from hakit.waiting import WaitTimeout, wait_until


class DemoFailed(LabError):
    pass


class Narrator:
    def __init__(self, lab: Lab, console: Console) -> None:
        self.lab = lab
        self.out = console

    def step(self, title: str) -> None:
        self.out.print()
        self.out.print(Rule(f"[bold]{title}", align="left"))

    def say(self, text: str) -> None:
        self.out.print(text, highlight=False, markup=False)

    def state(self, node: str) -> dict[str, Any]:
        r = self.lab.exec(node, ["hakit", "state", "--json"], capture=True, check=False)
        if r.returncode != 0:
            return {}
        return json.loads(r.stdout)  # type: ignore[no-any-return]

    def show_state(self, node: str) -> None:
        self.out.print(f"[dim]$ hakit lab exec {self.lab.name} {node} -- hakit state[/]")
        r = self.lab.exec(
            node, ["hakit", "state"], capture=True, check=False, env={"COLUMNS": "100"}
        )
        self.out.print(r.stdout.rstrip(), highlight=False, markup=False)

    def events(self, node: str) -> list[dict[str, Any]]:
        path: Path = self.lab.host_path(node, "/var/log/hakit/events.jsonl")
        if not path.exists():
            return []
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]

    def hakit(self, node: str, *args: str, quiet: bool = False) -> str:
        """`hakit ARGS` on `node`, shown (with `quiet`, only the command line is)."""
        self.out.print(f"[dim]$ hakit lab exec {self.lab.name} {node} -- hakit {' '.join(args)}[/]")
        r = self.lab.exec(node, ["hakit", *args], capture=True, check=False)
        text = (r.stdout + r.stderr).strip()
        if text and not quiet:
            self.out.print(text, highlight=False, markup=False)
        if r.returncode != 0:
            raise DemoFailed(f"demo: `hakit {' '.join(args)}` failed on {node}: {text}")
        return text

    def module_state(self, node: str, module: str) -> str:
        """`STATE status` of `module` on `node` as that node sees itself ("" when unknown)."""
        mod = self.state(node).get("modules", {}).get(module, {}).get("nodes", {}).get(node)
        return f"{mod['state']} {mod['status']}" if mod else ""

    def wait_module(self, node: str, module: str, expected: str, timeout: float) -> float:
        """Wait until `module` is `expected` ("PRIM ready", …) on `node`; the seconds waited."""
        start = time.monotonic()
        try:
            wait_until(lambda: self.module_state(node, module) == expected, timeout, "")
        except WaitTimeout:
            seen = self.module_state(node, module) or "unknown"
            raise DemoFailed(
                f"demo: {module} not {expected} on {node} after {timeout:g} s (it is {seen}); "
                f"`hakit lab exec {self.lab.name} {node} -- hakit log {module}` says why"
            ) from None
        return time.monotonic() - start

    def timeline(self, node: str, module: str, since: float, limit: int = 8) -> None:
        """The timeline of `module` on `node` since `since` (wall clock), relative times."""
        rows = [e for e in self.events(node) if e.get("module") == module and e["at"] >= since]
        for e in rows[-limit:]:
            self.say(f"  {node} +{e['at'] - since:5.2f} s  {e['message']}")

    def get(self, client: str, url: str, timeout: float = 2) -> str:
        """The body of `url` fetched from `client` ("" when it does not answer)."""
        code = (
            "import sys, urllib.request as u; "
            "print(u.urlopen(sys.argv[1], timeout=float(sys.argv[2])).read().decode())"
        )
        r = self.lab.exec(
            client, ["python3", "-c", code, url, str(timeout)], capture=True, check=False
        )
        return r.stdout.strip() if r.returncode == 0 else ""
