"""Module commands: `hakit module …`, `hakit start|stop|… MODULE`, `wait`, `log`, `failover`,
`checker`."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from hakit.cli.client import DaemonClient, RemoteClient, client_for
from hakit.cli.params import CHECKER, MODULE
from hakit.config.clashes import refuse_clashes
from hakit.config.load import load_cluster
from hakit.config.module import MODULE_FILE, FarmModule, load_module
from hakit.daemon.packages import install, package, package_bytes, uninstall
from hakit.errors import DaemonUnavailable, HakitError
from hakit.paths import Paths

STATES = ("STOP", "WAIT", "ALONE", "PRIM", "SECOND", "UP")

out = Console(highlight=False, soft_wrap=True)


class Refused(HakitError):
    exit_code = 1


# --- packages ------------------------------------------------------------------------------------


# --- talking to the daemon --------------------------------------------------------------------


def _client(node: str | None = None) -> DaemonClient | RemoteClient:
    return client_for(Paths.from_env(), node)


node_option = click.option(
    "--node", "node", metavar="NODE", help="Act on the daemon of NODE instead of this node."
)
all_option = click.option(
    "--all", "all_nodes", is_flag=True, help="Act on every node of the module."
)


def _module_state(st: dict[str, Any], module: str) -> dict[str, Any]:
    mod = st["modules"].get(module)
    if mod is None:
        raise HakitError(
            f"no module {module!r} on {st['node']}; installed: {', '.join(st['modules']) or 'none'}"
        )
    return mod  # type: ignore[no-any-return]


def run_command(module: str, command: str, node: str | None = None) -> None:
    r = _client(node).post(f"/modules/{module}/{command}")
    where = f"{node}: " if node else ""
    if r.get("accepted"):
        out.print(where + r["message"])
        return
    raise Refused(where + (r.get("message") or r.get("detail") or "refused"))


def module_nodes(module: str, command: str) -> list[str]:
    """The module's nodes, in the order `--all` acts on them: for stops, the primary last."""
    st = _client().get("/state")
    mod = _module_state(st, module)
    nodes = list(mod["nodes"])
    if command in ("stop", "stopstart"):
        nodes.sort(key=lambda n: mod["nodes"][n].get("state") in ("ALONE", "PRIM"))
    return nodes


ALL_STEP_TIMEOUT = 180.0


def _settled(module: str, node: str, want: str | None) -> bool:
    st = _client(node).get("/state")
    me = _module_state(st, module)["nodes"].get(node, {})
    if me.get("status") == "transient":
        return False
    return want is None or me.get("state") == want


def run_everywhere(module: str, command: str) -> None:
    """`--all`: node after node, each done before the next (a stop ends in STOP first), so a
    global stop stops the secondary before the primary and causes no useless failover."""
    failures = []
    for n in module_nodes(module, command):
        want = "STOP" if command == "stop" else None
        deadline = time.monotonic() + ALL_STEP_TIMEOUT
        while not _settled(module, n, None) and time.monotonic() < deadline:
            time.sleep(0.2)  # busy with an earlier step: let it finish
        try:
            run_command(module, command, n)
        except HakitError as e:
            failures.append(str(e))
            out.print(f"[red]{e}[/]", markup=True)
            continue
        while not _settled(module, n, want) and time.monotonic() < deadline:
            time.sleep(0.2)
    if failures:
        raise Refused(f"{len(failures)} node(s) refused or failed")


# --- click commands ---------------------------------------------------------------------------


@click.group("module")
def module_group() -> None:
    """Install, check and list modules."""


@module_group.command("install")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--name", help="Module name (default: the folder or package name).")
@click.option("--force", is_flag=True, help="Replace an installed module of the same name.")
@click.option("--all", "all_nodes", is_flag=True, help="Install on every node of the cluster.")
def module_install(source: Path, name: str | None, force: bool, all_nodes: bool) -> None:
    """Install a module from a folder or a NAME.hakit package on this node (or all nodes)."""
    paths = Paths.from_env()
    if not all_nodes:
        mf = install(paths, source, name, force)
        out.print(
            f"module {mf.name} installed in {mf.dir} ({mf.config.kind} on "
            f"{' and '.join(mf.config.nodes)}); the daemon loads it within a second — "
            f"then `hakit prim {mf.name}` on the node with the good data"
        )
        return
    data = source.read_bytes() if source.is_file() else package_bytes(source)
    mname = name or source.name.removesuffix(".hakit")
    failures = []
    for node in load_cluster(paths.cluster_config, with_secret=False).config.nodes:
        params = {"name": mname, "force": str(force).lower()}
        r = RemoteClient(paths, node).request(
            "POST", "/modules", params=params, body=data, accept=(400, 409)
        )
        if r.get("installed"):
            out.print(f"{node}: {r['message']}")
        else:
            failures.append(node)
            out.print(f"[red]{node}: {r.get('detail') or r.get('message')}[/]", markup=True)
    if failures:
        raise Refused(f"not installed on {', '.join(failures)}")


@module_group.command("uninstall")
@click.argument("module", type=MODULE)
@click.option("--all", "all_nodes", is_flag=True, help="Uninstall from every node.")
def module_uninstall(module: str, all_nodes: bool) -> None:
    """Remove an installed module (it must be stopped); its state is kept for a reinstall."""
    paths = Paths.from_env()
    if all_nodes:
        failures = []
        for node in load_cluster(paths.cluster_config, with_secret=False).config.nodes:
            r = RemoteClient(paths, node).request("DELETE", f"/modules/{module}", accept=(404, 409))
            ok = r.get("uninstalled")
            out.print(f"{node}: {r.get('message') or r.get('detail')}")
            if not ok:
                failures.append(node)
        if failures:
            raise Refused(f"not uninstalled on {', '.join(failures)}")
        return
    try:
        st = _client().get("/state")
        mod = st["modules"].get(module)
        if mod and mod.get("nodes", {}).get(st["node"], {}).get("state", "STOP") != "STOP":
            raise HakitError(f"module {module} is running here: `hakit stop {module}` first")
    except DaemonUnavailable:
        pass
    uninstall(paths, module)
    out.print(
        f"module {module} uninstalled (its state in {paths.var / 'modules' / module} is kept)"
    )


@module_group.command("list")
@click.option("--json", "as_json", is_flag=True)
def module_list(as_json: bool) -> None:
    """Installed modules, with their state on this node when the daemon runs."""
    paths = Paths.from_env()
    names = (
        sorted(d.name for d in paths.modules.iterdir() if (d / MODULE_FILE).is_file())
        if paths.modules.is_dir()
        else []
    )
    try:
        mods = _client().get("/state")["modules"]
    except DaemonUnavailable:
        mods = {}
    rows = {n: mods.get(n, {}) for n in names}
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not names:
        out.print(f"no modules installed in {paths.modules}")
    for n, m in rows.items():
        states = ", ".join(
            f"{node} {s['state']} ({s['status']})" for node, s in m.get("nodes", {}).items()
        )
        err = m.get("error")
        out.print(
            f"{n}: {states or ('[red]' + err.splitlines()[0] + '[/]' if err else 'not loaded')}"
        )


@module_group.command("check")
@click.argument("module")  # a name or a folder
def module_check(module: str) -> None:
    """Validate an installed module (by name) or a module folder, without starting anything."""
    paths = Paths.from_env()
    cluster = load_cluster(paths.cluster_config, with_secret=False).config
    folder = Path(module) if Path(module).is_dir() else paths.modules / module
    if not folder.is_dir():
        raise HakitError(f"no module folder {module!r} (installed modules are in {paths.modules})")
    mf = load_module(folder, cluster)
    refuse_clashes(mf, paths.modules, cluster)  # against the modules installed on this node
    c = mf.config
    vips = ", ".join(str(v.address) for v in c.vips) or "none"
    if isinstance(c, FarmModule):
        weights = ", ".join(f"{n} {c.weight(n)}" for n in c.nodes)
        rules = ", ".join(f"{r.protocol} {r.port or 'any'} by {r.by}" for r in c.rules)
        out.print(
            f"{folder / MODULE_FILE}: OK — farm module {mf.name} on {len(c.nodes)} nodes "
            f"(weights {weights}), VIPs {vips}, virtual MAC {c.mac}, rules {rules}"
        )
        return
    out.print(
        f"{folder / MODULE_FILE}: OK — {c.kind} module {mf.name} on {' and '.join(c.nodes)}, "
        f"VIPs {vips}, failover {'on' if c.failover else 'off'}, default primary "
        f"{c.default_primary}"
    )


@module_group.command("package")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Package file to write.")
def module_package(folder: Path, output: Path | None) -> None:
    """Zip a module folder into NAME.hakit (scripts keep their executable bit)."""
    out.print(f"wrote {package(folder, output)}")


def _control(command: str, doc: str) -> click.Command:
    @click.command(command, help=doc)
    @click.argument("module", type=MODULE)
    @node_option
    @all_option
    def cmd(module: str, node: str | None, all_nodes: bool) -> None:
        if all_nodes:
            run_everywhere(module, command)
        else:
            run_command(module, command, node)

    return cmd


CONTROL = {
    "start": "Start MODULE on this node (it becomes primary or secondary by itself).",
    "stop": "Stop MODULE on this node (a primary hands over to a ready secondary).",
    "restart": "Restart the application of MODULE on this primary, without failover.",
    "stopstart": "Stop then start MODULE on this node (a primary fails over).",
    "swap": "Exchange the roles: run on the primary; the secondary becomes primary.",
    "prim": "Start MODULE as primary (first start, or to override stale data; logged).",
    "second": "Start MODULE as secondary of the other node (discarding local changes).",
    "primforce": "Force primary even with inconsistent data (loud warning, logged).",
}


@click.command("failover")
@click.argument("mode", type=click.Choice(["on", "off"]))
@click.argument("module", type=MODULE)
@node_option
@all_option
def failover(mode: str, module: str, node: str | None, all_nodes: bool) -> None:
    """Turn automatic failover of MODULE on or off (kept across restarts)."""
    if all_nodes:
        run_everywhere(module, f"failover-{mode}")
    else:
        run_command(module, f"failover-{mode}", node)


@click.command("checker")
@click.argument("switch", type=click.Choice(["on", "off"]))
@click.argument("module", type=MODULE)
@click.argument("checker", required=False, type=CHECKER)
@node_option
@all_option
def checker(
    switch: str, module: str, checker: str | None, node: str | None, all_nodes: bool
) -> None:
    """Switch the checkers of MODULE off for maintenance, or on again (one CHECKER, or all of
    them). Off: no probe, no action, shown in `hakit state`; kept across daemon restarts."""
    path = f"/modules/{module}/checkers/{checker or '*'}/{switch}"
    nodes = module_nodes(module, "checker") if all_nodes else [node]
    for n in nodes:
        r = _client(n).post(path)
        out.print((f"{n}: " if n else "") + str(r.get("message") or r.get("detail")))


@click.command("wait")
@click.argument("module", type=MODULE)
@click.argument("state", type=click.Choice(STATES, case_sensitive=False))
@click.option("--timeout", type=float, default=60.0, show_default=True)
@node_option
def wait(module: str, state: str, timeout: float, node: str | None) -> None:
    """Wait until MODULE is in STATE on this node (not transient; UP: ready, i.e. serving its
    share); exit 1 on timeout."""
    from hakit.cli.replication import ProgressBar

    state = state.upper()
    deadline = time.monotonic() + timeout
    last = ""
    client = _client(node)
    bar = ProgressBar(out)  # shown while a resynchronisation runs
    try:
        while True:
            st = client.get("/state")
            mod = _module_state(st, module)
            me = mod["nodes"].get(st["node"], {})
            bar.update((mod.get("replication") or {}).get("progress"))
            last = f"{me.get('state')} ({me.get('status')})"
            settled = (
                me.get("status") == "ready" if state == "UP" else me.get("status") != "transient"
            )
            if me.get("state") == state and settled:
                bar.close(done=True)
                out.print(f"{module} is {last} on {st['node']}")
                return
            if time.monotonic() > deadline:
                raise Refused(
                    f"{module} is {last} on {st['node']} after {timeout:g} s, not {state}"
                )
            time.sleep(0.2)
    finally:
        bar.close()


def _events(paths: Paths, module: str) -> Iterator[dict[str, Any]]:
    path = paths.events_log
    if not path.exists():
        return
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("module") == module:
                yield ev


def _print_event(ev: dict[str, Any]) -> None:
    t = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ev["at"]))
    style = {"module-warning": "yellow", "module-error": "bold red"}.get(ev.get("kind", ""), "")
    text = f"{t}.{int(ev['at'] % 1 * 1000):03d} {ev['message']}"
    out.print(f"[{style}]{text}[/]" if style else text, markup=bool(style))


@click.command("log")
@click.argument("module", type=MODULE)
@click.option("-n", "--lines", type=int, default=50, show_default=True)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new entries.")
@node_option
def log_cmd(module: str, lines: int, follow: bool, node: str | None) -> None:
    """The timeline of MODULE on this node: every decision and action with its cause."""
    paths = Paths.from_env()
    if node is not None:
        for ev in _client(node).get("/events", limit=min(lines, 2000), module=module):
            _print_event(ev)
        return
    entries = list(_events(paths, module))
    for ev in entries[-lines:]:
        _print_event(ev)
    if not follow:
        if not entries:
            out.print(f"no timeline entries for {module} in {paths.events_log}")
        return
    path = paths.events_log
    while not path.exists():  # like `tail -F`: the daemon creates it when it starts
        time.sleep(0.5)
    with path.open(encoding="utf-8") as f:
        f.seek(0, 2)
        while True:
            line = f.readline()
            if not line:
                time.sleep(0.2)
                continue
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("module") == module:
                _print_event(ev)


def register(cli: click.Group) -> None:
    cli.add_command(module_group)
    for name, doc in CONTROL.items():
        cli.add_command(_control(name, doc))
    cli.add_command(failover)
    cli.add_command(checker)
    cli.add_command(wait)
    cli.add_command(log_cmd)
