"""`--all`: a command on every node, each tried whatever the others answered, each reported,
and a summary at the end (which nodes failed, and why)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from rich.console import Console

from hakit.cli.client import DaemonClient, RemoteClient, client_for
from hakit.config.load import load_cluster
from hakit.errors import HakitError
from hakit.paths import Paths

out = Console(highlight=False, soft_wrap=True)

ALL_STEP_TIMEOUT = 180.0  # one node's step of a `--all` command: its command, then settling


class Refused(HakitError):
    exit_code = 1


def client(node: str | None = None) -> DaemonClient | RemoteClient:
    return client_for(Paths.from_env(), node)


def cluster_nodes(paths: Paths) -> list[str]:
    return list(load_cluster(paths.cluster_config, with_secret=False).config.nodes)


def each_node(what: str, nodes: Iterable[str], step: Callable[[str], str]) -> None:
    """Run `step(node)` on every node in turn; it returns the line to print or raises
    `HakitError` (the node's refusal, its daemon unreachable…): the next node is tried all the
    same. Raises `Refused` naming every failed node when any failed."""
    nodes = list(nodes)
    failed: dict[str, str] = {}
    for n in nodes:
        try:
            line = step(n)
        except HakitError as e:
            failed[n] = str(e)
            out.print(f"[red]{n}: {e}[/]", markup=True)
        else:
            out.print(f"{n}: {line}")
    done = len(nodes) - len(failed)
    if failed:
        raise Refused(
            f"{what}: done on {done} of {len(nodes)} node(s); failed on "
            + ", ".join(failed)
            + " (see above)"
        )
    out.print(f"{what}: done on {len(nodes)} node(s)")


def module_state(st: dict[str, Any], module: str) -> dict[str, Any]:
    mod = st["modules"].get(module)
    if mod is None:
        raise HakitError(
            f"no module {module!r} on {st['node']}; known here: "
            f"{', '.join(st['modules']) or 'none'}"
        )
    return mod  # type: ignore[no-any-return]


def module_nodes(module: str, command: str) -> list[str]:
    """The module's nodes, in the order `--all` acts on them: for stops, the primary last.
    Known from this node's cluster view; from any node that knows the module otherwise."""
    paths = Paths.from_env()
    st = client().get("/state")
    mod = st["modules"].get(module)
    if mod is None:
        for n in cluster_nodes(paths):
            if n == st["node"]:
                continue
            try:
                mod = client(n).get("/state")["modules"].get(module)
            except HakitError:
                continue
            if mod is not None:
                break
    if mod is None:
        module_state(st, module)  # raises: nobody knows it
    assert mod is not None
    nodes = list(mod["nodes"])
    if command in ("stop", "stopstart"):
        nodes.sort(key=lambda n: mod["nodes"][n].get("state") in ("ALONE", "PRIM"))
    return nodes


def node_state(module: str, node: str) -> dict[str, Any]:
    st = client(node).get("/state")
    return module_state(st, module)["nodes"].get(node, {})  # type: ignore[no-any-return]


def settled(me: dict[str, Any]) -> bool:
    return me.get("status") != "transient"


STARTS = ("start", "prim", "second", "stopstart", "restart", "swap")
STOP_GRACE = 3.0  # a start that shows STOP this long after being accepted has failed
UP_GRACE = 15.0  # a farm node UP but not ready yet: its checkers' first probes


def run_command(module: str, command: str, node: str | None = None) -> str:
    """One module command on one node (None: this node): the daemon's answer, or `Refused`."""
    r = client(node).post(f"/modules/{module}/{command}")
    if r.get("accepted"):
        return str(r["message"])
    raise Refused(str(r.get("message") or r.get("detail") or "refused"))


def run_everywhere(module: str, command: str, nodes: list[str] | None = None) -> None:
    """`--all`: node after node, each done before the next (a stop ends in STOP, a start out of
    STOP and settled), so a global stop stops the secondary before the primary and causes no
    useless failover, and a farm started on all nodes serves on all of them."""

    def step(n: str) -> str:
        deadline = time.monotonic() + ALL_STEP_TIMEOUT
        while not settled(node_state(module, n)):  # busy with an earlier step: let it finish
            if time.monotonic() > deadline:
                raise Refused(f"{module} still busy after {ALL_STEP_TIMEOUT:g} s")
            time.sleep(0.2)
        message = run_command(module, command, n)
        accepted = time.monotonic()
        while True:
            me = node_state(module, n)
            state = me.get("state")
            if command == "stop" and state == "STOP" and settled(me):
                return message
            joining = state == "UP" and me.get("status") != "ready"  # checkers not passed yet
            if joining and time.monotonic() - accepted < UP_GRACE:
                time.sleep(0.2)
                continue
            if command in STARTS and settled(me):
                if state != "STOP":
                    return message + f" — now {state} {me.get('status')}"
                if time.monotonic() - accepted > STOP_GRACE:
                    why = me.get("blocked") or me.get("reason") or "see `hakit log`"
                    raise Refused(f"{message}, but it is STOP again: {why}")
            if command not in STARTS and command != "stop":
                return message
            if time.monotonic() > deadline:
                return message + f" (not settled after {ALL_STEP_TIMEOUT:g} s)"
            time.sleep(0.2)

    each_node(f"{command} {module}", nodes or module_nodes(module, command), step)
