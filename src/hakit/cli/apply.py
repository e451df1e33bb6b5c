"""`hakit config apply [--all]`: a new cluster.yaml checked on every member first, then applied
on all of them, with one line per node; nothing is changed anywhere if one check fails.

Also the second half of `hakit cluster add-node` and `remove-node`. The members are the nodes
of the configuration the local daemon *runs* with (where they can be reached now); a node that
the new file adds is not a member yet (it receives the file when it joins), and a node it
removes is not asked.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from rich.console import Console
from rich.table import Table
from rich.text import Text

from hakit.cli.client import DaemonClient, RemoteClient
from hakit.config.load import ClusterFile, load_cluster_text
from hakit.config.model import Cluster
from hakit.errors import DaemonUnavailable, HakitError
from hakit.paths import Paths

out = Console(highlight=False, soft_wrap=True)


class ApplyRefused(HakitError):
    """A check failed somewhere: nothing was changed."""

    exit_code = 2


class ApplyIncomplete(HakitError):
    """Every check passed, but a node could not take the configuration."""

    exit_code = 1


@dataclass(frozen=True)
class Plan:
    text: str
    new: ClusterFile
    running: ClusterFile
    local: str
    targets: tuple[str, ...]  # members that take the new file, the local node last
    newcomers: tuple[str, ...]
    leaving: tuple[str, ...]
    joining: tuple[str, ...]  # members with a join token outstanding here (may not run yet)


@dataclass(frozen=True)
class Running:
    local: str  # this node
    cluster: ClusterFile  # the configuration its daemon runs with
    joining: tuple[str, ...]


def running_cluster(paths: Paths, secret: bytes) -> Running:
    answer = DaemonClient(paths).get("/cluster")
    cf = ClusterFile(paths.cluster_config, Cluster.model_validate(answer["config"]), secret)
    return Running(answer["node"], cf, tuple(answer.get("joining", ())))


def plan(paths: Paths, text: str, *, everywhere: bool) -> Plan:
    """What applying `text` means; `ConfigError` if it does not even load here."""
    new = load_cluster_text(text, paths.cluster_config)
    now = running_cluster(paths, new.secret)
    local, running = now.local, now.cluster
    members = list(running.config.nodes)
    if local not in new.config.nodes:
        raise ApplyRefused(
            f"{local} (this node) is not in the new configuration: a node cannot remove itself; "
            f"run `hakit cluster remove-node {local}` on another member"
        )
    if not everywhere:
        members = [local]
    targets = [n for n in members if n in new.config.nodes and n != local] + [local]
    return Plan(
        text=text,
        new=new,
        running=running,
        local=local,
        targets=tuple(targets),
        newcomers=tuple(n for n in new.config.nodes if n not in running.config.nodes),
        leaving=tuple(n for n in running.config.nodes if n not in new.config.nodes),
        joining=now.joining,
    )


def _client(p: Plan, paths: Paths, node: str) -> DaemonClient | RemoteClient:
    if node == p.local:
        return DaemonClient(paths)
    return RemoteClient(paths, node, p.running)


def _ask(p: Plan, paths: Paths, node: str, what: str) -> dict[str, object]:
    try:
        api = _client(p, paths, node)
        answer: dict[str, object] = api.request(
            "POST", f"/cluster/{what}", body=p.text.encode(), accept=(409,)
        )
    except httpx.HTTPStatusError as e:  # e.g. 404: a release without this endpoint
        why = (
            f"{node} answered HTTP {e.response.status_code} to {what}: its daemon may run an "
            "older hakit release without it (docs/compatibility.md); upgrade it first"
        )
        return {"node": node, "ok": False, "problems": [why], "applied": False}
    except DaemonUnavailable as e:
        if node in p.joining:  # admitted, not joined yet: it will fetch the file then
            return {"node": node, "ok": True, "joining": True}
        return {"node": node, "ok": False, "problems": [str(e)], "applied": False}
    except HakitError as e:
        return {"node": node, "ok": False, "problems": [str(e)], "applied": False}
    return answer


def _table(rows: list[tuple[str, Text, Text]]) -> Table:
    t = Table(show_edge=False, header_style="bold")
    for col in ("node", "check", "result"):
        t.add_column(col)
    for row in rows:
        t.add_row(*row)
    return t


def _others(p: Plan) -> list[tuple[str, Text, Text]]:
    rows = []
    for n in p.newcomers:
        rows.append(
            (
                n,
                Text("-", style="dim"),
                Text("not a member yet: receives this configuration when it joins"),
            )
        )
    for n in p.leaving:
        rows.append(
            (
                n,
                Text("-", style="dim"),
                Text(
                    f"removed: not asked; stop its daemon (`systemctl disable --now hakit` on {n})",
                    style="yellow",
                ),
            )
        )
    return rows


def apply(p: Plan, paths: Paths) -> dict[str, dict[str, object]]:
    """Check on every target, then apply on every target; each node's answer."""
    checks = {n: _ask(p, paths, n, "check") for n in p.targets}
    failed = {n: r for n, r in checks.items() if not r.get("ok")}
    if failed:
        rows = [
            (
                n,
                Text("FAILED", style="bold red") if n in failed else Text("OK", style="green"),
                Text("not changed", style="dim"),
            )
            for n in p.targets
        ]
        out.print(_table(rows))
        lines = [f"{n}: {problem}" for n, r in failed.items() for problem in _problems(r)]
        raise ApplyRefused(
            f"nothing was changed on any node: the check failed on {', '.join(failed)}:\n"
            + "\n".join(lines)
        )
    results = {
        n: checks[n] if checks[n].get("joining") else _ask(p, paths, n, "apply") for n in p.targets
    }
    rows = []
    for n in p.targets:
        r = results[n]
        if r.get("joining"):
            rows.append(
                (
                    n,
                    Text("-", style="dim"),
                    Text("not joined yet (its token is outstanding): receives it when it joins"),
                )
            )
        elif r.get("applied"):
            live = r.get("live") or r.get("changes") == "no change"
            style = "green" if live else "yellow"
            rows.append((n, Text("OK", style="green"), Text(str(r.get("message")), style=style)))
        else:
            why = "; ".join(_problems(r))
            rows.append((n, Text("OK", style="green"), Text(f"NOT applied: {why}", style="red")))
    out.print(_table(rows + _others(p)))
    missed = [n for n in p.targets if not results[n].get("applied", results[n].get("joining"))]
    if missed:
        raise ApplyIncomplete(
            f"applied on {len(p.targets) - len(missed)} of {len(p.targets)} node(s); not on "
            f"{', '.join(missed)} (see above): run `hakit config apply --all` again once "
            "they answer"
        )
    return results


def _problems(r: dict[str, object]) -> list[str]:
    problems = r.get("problems")
    return [str(x) for x in problems] if isinstance(problems, list) else [str(r)]
