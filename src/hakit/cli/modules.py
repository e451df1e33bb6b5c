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

from hakit.cli.client import DaemonClient, RemoteClient
from hakit.cli.everywhere import (
    Refused,
    client,
    cluster_nodes,
    each_node,
    module_nodes,
    module_state,
    run_command,
    run_everywhere,
)
from hakit.cli.params import CHECKER, MODULE, HelpGroup
from hakit.config.clashes import refuse_clashes
from hakit.config.load import load_cluster
from hakit.config.module import MODULE_FILE, FarmModule, load_module
from hakit.daemon.packages import check as check_package
from hakit.daemon.packages import install, package, package_bytes, uninstall
from hakit.errors import DaemonUnavailable, HakitError
from hakit.paths import Paths

STATES = ("STOP", "WAIT", "ALONE", "PRIM", "SECOND", "UP")
STOPPED_GRACE = 2.0  # `wait`: a module stopped this long will not get anywhere by itself

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


node_option = click.option(
    "--node", "node", metavar="NODE", help="Act on the daemon of NODE instead of this node."
)
all_option = click.option(
    "--all", "all_nodes", is_flag=True, help="Act on every node of the module."
)


# --- click commands ---------------------------------------------------------------------------


@click.group("module", cls=HelpGroup)
def module_group() -> None:
    """Install, check and list modules."""


@module_group.command("install")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--name", help="Module name (default: the folder or package name).")
@click.option("--force", is_flag=True, help="Replace an installed module of the same name.")
@click.option("--all", "all_nodes", is_flag=True, help="Install on every node of the cluster.")
def module_install(source: Path, name: str | None, force: bool, all_nodes: bool) -> None:
    """Install a module from a folder or a NAME.hakit package on this node (or all nodes);
    returns once each daemon has loaded it (or says why not)."""
    paths = Paths.from_env()
    mname = check_package(paths, source, name).name  # errors located in SOURCE, not sent
    data = source.read_bytes() if source.is_file() else package_bytes(source)
    params = {"name": mname, "force": str(force).lower()}

    def on(api: DaemonClient | RemoteClient) -> str:
        r = api.request("POST", "/modules", params=params, body=data, accept=(400, 409))
        if not r.get("installed"):
            raise Refused(str(r.get("detail") or r.get("message")))
        if r.get("loaded") is False:
            raise Refused(str(r["message"]))
        return str(r["message"])

    if all_nodes:
        each_node(f"install {mname}", cluster_nodes(paths), lambda n: on(RemoteClient(paths, n)))
        return
    try:
        message = on(DaemonClient(paths))
    except DaemonUnavailable:
        mf = install(paths, source, name, force)
        message = (
            f"module {mf.name} installed in {mf.dir} ({mf.config.kind} on "
            f"{' and '.join(mf.config.nodes)}); the daemon is not running here: it loads the "
            "module when it starts"
        )
    out.print(message + f" — then `hakit prim {mname}` on the node with the good data")


@module_group.command("uninstall")
@click.argument("module", type=MODULE)
@click.option("--all", "all_nodes", is_flag=True, help="Uninstall from every node.")
@click.option(
    "--stop",
    "stop_first",
    is_flag=True,
    help="With --all: stop the module everywhere first (secondaries before the primary).",
)
def module_uninstall(module: str, all_nodes: bool, stop_first: bool) -> None:
    """Remove an installed module (it must be stopped); its state is kept for a reinstall.
    With --all, nothing is removed anywhere while it runs on a node, unless --stop."""
    paths = Paths.from_env()

    def on(api: DaemonClient | RemoteClient) -> str:
        r = api.request("DELETE", f"/modules/{module}", accept=(404, 409))
        if not r.get("uninstalled"):
            raise Refused(str(r.get("detail") or r.get("message")))
        return str(r["message"])

    if all_nodes:
        nodes = cluster_nodes(paths)
        running = _running_on(module, nodes)
        if running and not stop_first:
            where = ", ".join(f"{n} ({s})" for n, s in running.items())
            raise Refused(
                f"{module} runs on {where}: nothing uninstalled. `hakit stop {module} --all` "
                f"first, or `hakit module uninstall {module} --all --stop`"
            )
        if running:
            order = [n for n in module_nodes(module, "stop") if n in running]
            run_everywhere(module, "stop", order)
        each_node(f"uninstall {module}", nodes, lambda n: on(RemoteClient(paths, n)))
        return
    if stop_first:
        raise click.UsageError("--stop goes with --all (here: `hakit stop MODULE` first)")
    try:
        out.print(on(DaemonClient(paths)))
    except DaemonUnavailable:
        uninstall(paths, module)
        out.print(
            f"module {module} uninstalled (its state in {paths.var / 'modules' / module} is kept)"
        )


def _running_on(module: str, nodes: list[str]) -> dict[str, str]:
    """The nodes where `module` is not stopped, as each says (unreachable ones are left to the
    uninstall itself, which reports them)."""
    running = {}
    for n in nodes:
        try:
            st = client(n).get("/state")
        except HakitError:
            continue
        me = st["modules"].get(module, {}).get("nodes", {}).get(n)
        if me and me.get("state", "STOP") != "STOP":
            running[n] = f"{me['state']} {me['status']}"
    return running


@module_group.command("list")
@click.option("--json", "as_json", is_flag=True)
def module_list(as_json: bool) -> None:
    """Installed modules, with their state on this node when the daemon runs."""
    paths = Paths.from_env()
    try:
        rows = client().get("/modules")["modules"]
    except DaemonUnavailable:  # the folders, without states
        rows = (
            {d.name: {} for d in sorted(paths.modules.iterdir()) if (d / MODULE_FILE).is_file()}
            if paths.modules.is_dir()
            else {}
        )
    names = list(rows)
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
@click.argument("module")  # a name, a folder or a package
def module_check(module: str) -> None:
    """Validate an installed module (by name), a module folder or a NAME.hakit package,
    without starting or installing anything."""
    paths = Paths.from_env()
    cluster = load_cluster(paths.cluster_config, with_secret=False).config
    if Path(module).is_file():
        mf = check_package(paths, Path(module))
        where = module
    else:
        folder = Path(module) if Path(module).is_dir() else paths.modules / module
        if not folder.is_dir():
            raise HakitError(
                f"no module folder or package {module!r} (installed modules are in {paths.modules})"
            )
        mf = load_module(folder, cluster)
        refuse_clashes(mf, paths.modules, cluster)  # against the modules installed on this node
        where = str(folder / MODULE_FILE)
    c = mf.config
    vips = ", ".join(str(v.address) for v in c.vips) or "none"
    if isinstance(c, FarmModule):
        weights = ", ".join(f"{n} {c.weight(n)}" for n in c.nodes)
        rules = ", ".join(f"{r.protocol} {r.port or 'any'} by {r.by}" for r in c.rules)
        out.print(
            f"{where}: OK — farm module {mf.name} on {len(c.nodes)} nodes "
            f"(weights {weights}), VIPs {vips}, virtual MAC {c.mac}, rules {rules}"
        )
        return
    out.print(
        f"{where}: OK — {c.kind} module {mf.name} on {' and '.join(c.nodes)}, "
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
            out.print((f"{node}: " if node else "") + run_command(module, command, node))

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
        out.print((f"{node}: " if node else "") + run_command(module, f"failover-{mode}", node))


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

    def on(n: str | None) -> str:
        r = client(n).post(path)
        if not r.get("accepted"):
            raise Refused(str(r.get("message") or r.get("detail")))
        return str(r["message"])

    if all_nodes:
        each_node(f"checker {switch} {module}", module_nodes(module, "checker"), on)
    else:
        out.print((f"{node}: " if node else "") + on(node))


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
    start = time.monotonic()
    deadline = start + timeout
    api = client(node)
    bar = ProgressBar(out)  # shown while a resynchronisation runs
    try:
        while True:
            st = api.get("/state")
            mod = module_state(st, module)
            if mod.get("error"):
                raise Refused(f"{module} is not loaded on {st['node']}: {mod['error']}")
            if mod.get("here") is False:
                raise Refused(
                    f"{st['node']} is not one of the nodes of {module} "
                    f"({', '.join(mod['nodes'])}): `--node NODE` to wait on one of them"
                )
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
            stopped = me.get("state") == "STOP" and me.get("status") != "transient"
            if stopped and time.monotonic() - start > STOPPED_GRACE:
                raise Refused(
                    f"{module} is stopped on {st['node']} ({last}): it will not become {state} "
                    f"by itself; `hakit start {module}` (or prim/second) first"
                )
            if time.monotonic() > deadline:
                raise Refused(
                    f"{module} is {last} on {st['node']} after {timeout:g} s, not {state}"
                )
            time.sleep(0.2)
    finally:
        bar.close()


def _events(paths: Paths, module: str) -> Iterator[dict[str, Any]]:
    """The timeline from events.jsonl, for when the daemon does not run."""
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


def _print_event(ev: dict[str, Any], as_json: bool = False) -> None:
    if as_json:
        click.echo(json.dumps(ev, sort_keys=False))
        return
    t = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ev["at"]))
    style = {"module-warning": "yellow", "module-error": "bold red"}.get(ev.get("kind", ""), "")
    text = f"{t}.{int(ev['at'] % 1 * 1000):03d} {ev['message']}"
    out.print(f"[{style}]{text}[/]" if style else text, markup=bool(style))


def _script_outputs(
    api: DaemonClient | RemoteClient, module: str, lines: int, name: str | None, as_json: bool
) -> None:
    if name is not None:
        r = api.request("GET", f"/modules/{module}/scripts", params={"name": name}, accept=(404,))
        if isinstance(r, dict):
            raise HakitError(str(r.get("detail")))
        click.echo(r, nl=False)
        return
    rows = api.get(f"/modules/{module}/scripts", limit=max(1, min(lines, 500)))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        err.print(f"no script outputs for {module} on this node")
    for r in rows:
        t = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["at"]))
        out.print(f"{t}  {r['size']:>8} B  {r['name']}")


@click.command("log")
@click.argument("module", type=MODULE)
@click.option("-n", "--lines", type=int, default=50, show_default=True)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new entries.")
@click.option(
    "--json", "as_json", is_flag=True, help="One JSON object per entry and line (JSON Lines)."
)
@click.option("--scripts", is_flag=True, help="List the outputs of MODULE's scripts instead.")
@click.option("--script", "script", metavar="FILE", help="Print one script output (see --scripts).")
@node_option
def log_cmd(
    module: str,
    lines: int,
    follow: bool,
    as_json: bool,
    scripts: bool,
    script: str | None,
    node: str | None,
) -> None:
    """The timeline of MODULE on this node: every decision and action with its cause (or, with
    --scripts / --script, the outputs of its scripts)."""
    paths = Paths.from_env()
    api = client(node)
    if scripts or script:
        _script_outputs(api, module, lines, script, as_json)
        return
    try:
        entries = api.get("/events", limit=max(1, min(lines, 2000)), module=module)
    except DaemonUnavailable:
        if node is not None or follow:
            raise
        entries = list(_events(paths, module))[-lines:]
        err.print(f"the daemon does not run: the timeline as {paths.events_log} has it")
    for ev in entries:
        _print_event(ev, as_json)
    if not follow:
        if not entries and not as_json:
            err.print(f"no timeline entries for {module}")
        return
    seen = {(e["at"], e["message"]) for e in entries}
    since = entries[-1]["at"] if entries else time.time()
    while True:  # until ^C, like `tail -f`
        time.sleep(0.5)
        try:
            new = api.get("/events", limit=2000, module=module, since=since)
        except DaemonUnavailable as e:
            err.print(f"{e}; trying again")
            time.sleep(2)
            continue
        for ev in new:
            key = (ev["at"], ev["message"])
            if key not in seen:
                _print_event(ev, as_json)
                seen.add(key)
        if new:
            since = new[-1]["at"]
            seen = {k for k in seen if k[0] >= since}


def register(cli: click.Group) -> None:
    cli.add_command(module_group)
    for name, doc in CONTROL.items():
        cli.add_command(_control(name, doc))
    cli.add_command(failover)
    cli.add_command(checker)
    cli.add_command(wait)
    cli.add_command(log_cmd)
