"""`hakit lab`: real multi-node clusters on this machine, and faults to inject into them."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich import box
from rich.console import Console
from rich.table import Table

from hakit.cli.params import HelpGroup
from hakit.lab.lab import DAEMON_TIMEOUT, Lab
from hakit.lab.namespaces import check_environment, host_env
from hakit.lab.topology import Cut

F = TypeVar("F", bound=Callable[..., Any])


def _out() -> Console:
    return Console(highlight=False)


def _hosts_table(lab: Lab) -> Table:
    desc = lab.describe()
    table = Table(title=f"lab {lab.name}", title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("host", "power", *desc["networks"], "netns", "daemon"):
        table.add_column(col, no_wrap=True, overflow="fold")
    for name, h in desc["hosts"].items():
        power = "[green]on[/]" if h["power"] == "on" else "[red]off[/]"
        daemon = str(h["daemon_pid"]) if h["daemon_pid"] else "-"
        if h["kind"] == "client":
            daemon = ""
        addrs = [h["addresses"][n] for n in desc["networks"]]
        table.add_row(name, power, *addrs, h["netns"], daemon)
    return table


def _cuts_text(cuts: tuple[Cut, ...] | list[Cut]) -> str:
    if not cuts:
        return "no cuts"
    return "cuts: " + ", ".join(f"{c.a} x {c.b} on {c.network}" for c in cuts)


@click.group("lab", cls=HelpGroup)
def lab() -> None:
    """Multi-node hakit clusters on this machine: namespaces, bridges, real daemons, faults.

    Needs root. Each node is a network + mount + UTS namespace with its own hostname and its
    own /etc/hakit, /var/lib/hakit, /var/log/hakit and /srv. See docs/lab.md.
    """


@lab.command("up")
@click.argument("name")
@click.option("--nodes", "-n", type=int, required=True, help="Number of nodes (node1..nodeN).")
@click.option("--networks", "-k", type=int, default=2, show_default=True, help="Networks.")
@click.option("--clients", "-c", type=int, default=1, show_default=True, help="Client hosts.")
@click.option(
    "--private",
    "private",
    multiple=True,
    metavar="PATH",
    help="Another directory private to each host (repeatable), e.g. /var/lib/postgresql.",
)
@click.option("--no-daemon", is_flag=True, help="Do not start `hakit daemon` on the nodes.")
@click.option(
    "--no-cluster",
    is_flag=True,
    help="Leave the nodes without cluster.yaml (and daemon): bootstrap them as real servers "
    "with `hakit cluster init/add-node/join`, then `hakit lab daemon`.",
)
@click.option(
    "--timeout",
    type=float,
    default=DAEMON_TIMEOUT,
    show_default=True,
    help="Seconds to wait for each daemon's API socket.",
)
def up(
    name: str,
    nodes: int,
    networks: int,
    clients: int,
    private: tuple[str, ...],
    no_daemon: bool,
    no_cluster: bool,
    timeout: float,
) -> None:
    """Create lab NAME and start the hakit daemon on every node."""
    lab_ = Lab(name).up(
        nodes,
        networks,
        clients,
        private=private,
        daemon=not no_daemon,
        daemon_timeout=timeout,
        cluster=not no_cluster,
    )
    out = _out()
    out.print(_hosts_table(lab_))
    out.print(
        f"Run commands inside: [bold]hakit lab exec {name} node1 -- hakit state[/]\n"
        f"Node files (/etc/hakit, /var/lib/hakit, ...) are under {lab_.dir}/NODE/fs/\n"
        f"Remove the lab: [bold]hakit lab down {name}[/]"
    )


@lab.command("down")
@click.argument("name")
def down(name: str) -> None:
    """Remove lab NAME: processes, namespaces, mounts and files (works on broken labs too)."""
    report = Lab(name).down()
    _out().print(
        f"lab {name} removed: {len(report.killed)} processes killed, "
        f"{len(report.netns)} namespaces deleted"
    )


@lab.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def list_(as_json: bool) -> None:
    """List the labs, their hosts and addresses."""
    check_environment()
    labs = Lab.all()
    if as_json:
        print(json.dumps({"labs": {lab_.name: lab_.describe() for lab_ in labs}}, indent=2))
        return
    out = _out()
    if not labs:
        out.print("no labs (create one with `hakit lab up demo --nodes 2`)")
        return
    for lab_ in labs:
        status = lab_.status()
        if status not in ("up", "creating"):
            out.print(
                f"[bold]lab {lab_.name}[/]: [red]{status}[/] — remove it with "
                f"`hakit lab down {lab_.name}`"
            )
            continue
        out.print(_hosts_table(lab_))
        out.print(_cuts_text(list(lab_.cuts())))


@lab.command(
    "exec",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.argument("name")
@click.argument("host")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def exec_(name: str, host: str, command: tuple[str, ...]) -> None:
    """Run COMMAND inside HOST of lab NAME (an interactive shell if no COMMAND).

    `hakit ...` runs this installation's hakit. The exit code is the command's.

    Example: hakit lab exec demo node1 -- hakit state --json
    """
    check_environment()
    argv = list(command)
    if argv[:1] == ["--"]:  # click keeps `--` once positional arguments have started
        argv = argv[1:]
    argv = argv or [os.environ.get("SHELL") or "/bin/sh"]
    full = Lab(name).exec_argv(host, argv, wd=os.getcwd())
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(full[0], full, host_env())


@lab.command("poweroff")
@click.argument("name")
@click.argument("host")
def poweroff(name: str, host: str) -> None:
    """Cut the power of HOST: kill all its processes (SIGKILL), links down."""
    killed = Lab(name).poweroff(host)
    _out().print(f"{host} powered off: {len(killed)} processes killed, links down")


@lab.command("poweron")
@click.argument("name")
@click.argument("host")
@click.option("--timeout", type=float, default=DAEMON_TIMEOUT, show_default=True)
def poweron(name: str, host: str, timeout: float) -> None:
    """Power HOST back on: links up, hakit daemon started (on a node)."""
    lab_ = Lab(name)
    lab_.poweron(host, daemon_timeout=timeout)
    pid = lab_.hosts()[host].daemon_pid
    _out().print(f"{host} powered on" + (f" (hakit daemon PID {pid})" if pid else ""))


@lab.command("daemon")
@click.argument("name")
@click.argument("nodes", nargs=-1, required=True)
@click.option("--timeout", type=float, default=DAEMON_TIMEOUT, show_default=True)
def daemon(name: str, nodes: tuple[str, ...], timeout: float) -> None:
    """Start the hakit daemon on NODES (as `systemctl start hakit` on a server), if not running."""
    lab_ = Lab(name)
    lab_.start_daemons(list(nodes), timeout)
    for n in nodes:
        _out().print(f"{n}: hakit daemon PID {lab_.daemon_pid(n)}")


@lab.command("cut")
@click.argument("name")
@click.argument("host1")
@click.argument("host2")
@click.option("--network", "-k", help="Only this network (K or netK); default: all.")
def cut(name: str, host1: str, host2: str, network: str | None) -> None:
    """Stop all traffic between HOST1 and HOST2 (both directions)."""
    cuts = Lab(name).cut(host1, host2, network)
    _out().print(_cuts_text(cuts))


@lab.command("heal")
@click.argument("name")
@click.argument("host1")
@click.argument("host2", required=False)
@click.option("--network", "-k", help="Only this network (K or netK); default: all.")
def heal(name: str, host1: str, host2: str | None, network: str | None) -> None:
    """Remove the cuts between HOST1 and HOST2 (every cut of HOST1 if HOST2 is omitted)."""
    cuts = Lab(name).heal(host1, host2, network)
    _out().print(_cuts_text(cuts))


@lab.command("isolate")
@click.argument("name")
@click.argument("host")
def isolate(name: str, host: str) -> None:
    """Cut HOST from every other host on every network (`heal NAME HOST` undoes it)."""
    cuts = Lab(name).isolate(host)
    _out().print(_cuts_text(cuts))


@lab.command("demo")
@click.option("--name", default="demo", show_default=True, help="Name of the demo's lab.")
@click.option(
    "--scene",
    type=click.Choice(["tour", "farm-mirror", "active-active", "n-1", "vm"]),
    default="tour",
    show_default=True,
    help="What to tell: the tour of hakit, or one architecture of docs/architectures.md on a "
    "lab of its own (farm-mirror: a web farm and a mirrored application on three servers; "
    "active-active: two applications each preferring its own server, failback; n-1: two "
    "applications sharing one backup; vm: two KVM guests cross-replicated on two hosts).",
)
@click.option("--keep", is_flag=True, help="Leave the lab up at the end, to explore it.")
@click.option(
    "--console",
    "web_console",
    is_flag=True,
    help="Also run the web console on the lab (printed: its URL on this machine, a user and "
    "password); implies --keep.",
)
@click.option(
    "--console-port",
    type=click.IntRange(1, 65535),
    default=7380,
    show_default=True,
    help="The console's port on 127.0.0.1.",
)
def demo(name: str, scene: str, keep: bool, web_console: bool, console_port: int) -> None:
    """Narrated demo: a 3-node cluster forms, survives a network cut, detects a power cut
    (or, with --scene, one architecture told and checked on its own lab)."""
    from hakit.lab.demo import run_demo

    check_environment()
    run_demo(
        name,
        scene=scene,
        keep=keep,
        console=_out(),
        web_console=web_console,
        console_port=console_port,
    )


def _run_options(what: str, whose: str, files: str) -> Callable[[F], F]:
    """--name, --report and --keep of a long lab run (chaos, soak)."""

    def add(f: F) -> F:
        f = click.option(
            "--keep", is_flag=True, help="Leave the lab up at the end, to explore it."
        )(f)
        f = click.option(
            "--report",
            "report_dir",
            type=click.Path(file_okay=False),
            default=f"{what}-report",
            show_default=True,
            help=f"Folder of the report (report.txt, report.json, {files}).",
        )(f)
        return click.option(
            "--name", default=what, show_default=True, help=f"Name of {whose} lab."
        )(f)

    return add


@lab.command("chaos")
@click.option(
    "--scenario",
    type=click.Choice(["mirror", "mirror-witness", "farm"]),
    default="mirror-witness",
    show_default=True,
    help="mirror: a mirrored application and its writer; mirror-witness: the same with a "
    "witness on client1 (and the single-primary invariant); farm: a web farm and its client.",
)
@click.option("--seed", type=int, default=1, show_default=True, help="The schedule's seed.")
@click.option("--rounds", type=click.IntRange(1), default=None, help="Number of rounds.")
@click.option(
    "--minutes", type=click.FloatRange(0, min_open=True), default=None, help="Or: how long."
)
@_run_options("chaos", "the campaign's", "timeline.svg; logs on a violation")
def chaos(
    scenario: str,
    seed: int,
    rounds: int | None,
    minutes: float | None,
    name: str,
    report_dir: str,
    keep: bool,
) -> None:
    """Randomized fault campaign: builds lab NAME for the scenario, runs its workload, injects
    one fault per round from the seeded schedule and checks the invariants (docs/reliability.md).
    Exit 1 on a violation (the report says how to reproduce it)."""
    from pathlib import Path

    from hakit.lab.chaos.campaign import Campaign

    check_environment()
    if rounds is None and minutes is None:
        rounds = 10
    out = _out()
    lab_ = Lab(name)
    lab_.down(missing_ok=True)
    campaign = Campaign(lab_, scenario, seed, rounds, minutes, Path(report_dir), out.print)
    try:
        ok = campaign.run()
    finally:
        if not keep:
            lab_.down(missing_ok=True)
    out.print(f"report: {report_dir}/report.txt, report.json, timeline.svg")
    if not ok:
        for v in campaign.violations:
            out.print(f"[red]violation[/]: {v}")
        sys.exit(1)
    out.print(f"[green]no violation[/] in {len(campaign.results)} rounds (seed {seed})")


@lab.command("soak")
@click.option(
    "--minutes",
    type=click.FloatRange(0, min_open=True),
    default=60.0,
    show_default=True,
    help="How long the load runs (after the lab is built).",
)
@click.option(
    "--hogs",
    type=click.IntRange(0),
    default=None,
    help="Busy processes keeping the cores saturated [default: one per core].",
)
@click.option(
    "--sample",
    "sample_every",
    type=click.FloatRange(1.0),
    default=10.0,
    show_default=True,
    help="Seconds between two probes of every node.",
)
@_run_options("soak", "the soak's", "probes.jsonl; logs on a problem")
def soak(
    minutes: float,
    hogs: int | None,
    sample_every: float,
    name: str,
    report_dir: str,
    keep: bool,
) -> None:
    """Load without faults: builds lab NAME with a mirror (witness, bulk replication at full
    speed, a ledger writer) and a farm (HTTP client), keeps every core busy, and counts false
    failovers, the daemons' memory and descriptors, the event loop's lag and the heartbeat gaps
    (docs/reliability.md). Exit 1 on a false failover, a leak or a lost record."""
    from pathlib import Path

    from hakit.lab.soak.run import Soak

    check_environment()
    out = _out()
    lab_ = Lab(name)
    lab_.down(missing_ok=True)
    run = Soak(lab_, minutes, Path(report_dir), hogs, sample_every, out.print)
    try:
        ok = run.run()
    finally:
        if not keep:
            lab_.down(missing_ok=True)
    click.echo((Path(report_dir) / "report.txt").read_text().rstrip())
    if not ok:
        sys.exit(1)
