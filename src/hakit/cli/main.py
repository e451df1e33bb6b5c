"""The `hakit` command line: one click group, sub-commands in sibling modules."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import click
from rich.console import Console

from hakit import __version__
from hakit.cli import modules
from hakit.cli.lab import lab
from hakit.cli.params import MODULE, HelpGroup
from hakit.cli.replication import verify
from hakit.cli.witness import witness
from hakit.config.model import Cluster
from hakit.errors import ConfigError, HakitError
from hakit.paths import Paths

err_console = Console(stderr=True)


@click.group(cls=HelpGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", message="%(version)s")
def cli() -> None:
    """hakit: high availability and load balancing for Linux applications."""


@cli.command()
@click.option(
    "--node",
    envvar="HAKIT_NODE",
    help="Which cluster node this is (default: the host name, else the node whose "
    "address is configured here).",
)
def daemon(node: str | None) -> None:
    """Run the node daemon in the foreground (systemd runs it as the `hakit` service)."""
    from hakit.api.server import run_daemon

    run_daemon(Paths.from_env(), node)


@cli.command()
@click.argument("module", required=False, type=MODULE)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (stable contract).")
@click.option("--node", metavar="NODE", help="Ask the daemon of NODE instead of this node's.")
def state(module: str | None, as_json: bool, node: str | None) -> None:
    """Show the cluster as this node (or NODE) sees it: nodes, networks, modules."""
    from hakit.cli.client import client_for
    from hakit.cli.render import render_state

    st = client_for(Paths.from_env(), node).get("/state")
    if module is not None:
        if module not in st["modules"]:
            raise HakitError(
                f"no module {module!r} on this node; installed: "
                + (", ".join(st["modules"]) or "none")
            )
        st["modules"] = {module: st["modules"][module]}
    if as_json:
        click.echo(json.dumps(st, indent=2, sort_keys=False))
    else:
        render_state(st, Console())


@cli.group()
def config() -> None:
    """Configuration files."""


@config.command("check")
@click.option(
    "--file",
    "file",
    type=click.Path(path_type=Path),
    help="Cluster configuration to check (default: $HAKIT_ETC/cluster.yaml).",
)
@click.option(
    "--modules-warn",
    is_flag=True,
    help="Report broken installed modules as warnings and exit 0 (the systemd unit does: the "
    "daemon then starts and shows them in error).",
)
def config_check(file: Path | None, modules_warn: bool) -> None:
    """Validate the configuration and the installed modules without starting anything;
    non-zero exit on any error."""
    from hakit.config.load import load_cluster

    paths = Paths.from_env()
    path = file or paths.cluster_config
    cf = load_cluster(path)
    c = cf.config
    click.echo(
        f"{path}: OK — cluster {c.cluster}, {len(c.nodes)} nodes ({', '.join(c.nodes)}), "
        f"{len(c.networks)} network(s) ({', '.join(c.networks)}); heartbeat every "
        f"{c.heartbeat.interval:g} s, a peer is lost after {c.heartbeat.timeout:g} s of silence"
    )
    if len(c.networks) < 2:
        err_console.print(
            "[yellow]warning: one network only; with two, losing a network is not mistaken "
            "for losing a node[/]"
        )
    if file is None:
        _check_installed(paths, c, modules_warn)


def _check_installed(paths: Paths, cluster: Cluster, warn: bool) -> None:
    """Every installed module, as the daemon will load it, and their port clashes."""
    from hakit.config.clashes import refuse_clashes
    from hakit.config.module import MODULE_FILE, MODULE_NAME, load_module

    root = paths.modules
    folders = sorted(d for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
    good, bad = [], []
    for d in folders:
        if not MODULE_NAME.match(d.name) or not (d / MODULE_FILE).is_file():
            continue
        try:
            refuse_clashes(load_module(d, cluster), root, cluster)
        except HakitError as e:
            bad.append(f"{d.name}: {e}")
        else:
            good.append(d.name)
    if good:
        click.echo(f"{root}: {len(good)} module(s) OK ({', '.join(good)})")
    for problem in bad:
        colour = "yellow" if warn else "bold red"
        label = "warning" if warn else "error"
        err_console.print(
            f"[{colour}]{label}:[/] module {problem}", highlight=False, soft_wrap=True
        )
    if bad and not warn:
        raise click.exceptions.Exit(2)


@cli.group()
def cluster() -> None:
    """Cluster set-up."""


def _parse_node(spec: str) -> tuple[str, dict[str, str]]:
    name, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise click.BadParameter(f"{spec!r}: expected NAME:NETWORK=ADDRESS[,NETWORK=ADDRESS...]")
    addresses: dict[str, str] = {}
    for part in rest.split(","):
        net, eq, addr = part.partition("=")
        if not eq or not net or not addr:
            raise click.BadParameter(f"{spec!r}: {part!r} is not NETWORK=ADDRESS")
        addresses[net.strip()] = addr.strip()
    return name.strip(), addresses


@cluster.command("init")
@click.option("--name", required=True, help="Cluster name.")
@click.option(
    "--node",
    "nodes",
    multiple=True,
    required=True,
    metavar="NAME:NET=ADDR[,NET=ADDR]",
    help="A node and its address on each network (repeat for every node).",
)
@click.option("--interval", type=float, default=None, help="Seconds between heartbeats.")
@click.option("--timeout", type=float, default=None, help="Seconds of silence before loss.")
@click.option("--force", is_flag=True, help="Overwrite an existing configuration and secret.")
def cluster_init(
    name: str, nodes: tuple[str, ...], interval: float | None, timeout: float | None, force: bool
) -> None:
    """Write a starter cluster.yaml and a fresh secret into $HAKIT_ETC.

    Example: hakit cluster init --name shop --node alpha:lan=192.168.1.10,repl=10.0.0.10
    --node beta:lan=192.168.1.11,repl=10.0.0.11 — then copy cluster.yaml and cluster.key
    to the same folder on every node.
    """
    from hakit.config.load import load_cluster
    from hakit.config.model import DEFAULT_INTERVAL, DEFAULT_TIMEOUT
    from hakit.config.starter import new_secret, render_cluster_yaml

    paths = Paths.from_env()
    parsed = dict(_parse_node(s) for s in nodes)
    cfg_path, key_path = paths.cluster_config, paths.etc / "cluster.key"
    for p in (cfg_path, key_path):
        if p.exists() and not force:
            raise HakitError(f"{p} already exists; use --force to replace it (nothing written)")
    text = render_cluster_yaml(
        name,
        parsed,
        interval=interval if interval is not None else DEFAULT_INTERVAL,
        timeout=timeout if timeout is not None else DEFAULT_TIMEOUT,
    )
    # Validate before writing anything: a bad starter is not written at all.
    paths.etc.mkdir(parents=True, exist_ok=True)
    tmp = cfg_path.with_name(".cluster.yaml.new")
    tmp.write_text(text)
    try:
        load_cluster(tmp, with_secret=False)
    except ConfigError as e:
        tmp.unlink()
        raise ConfigError([replace(i, file=str(cfg_path)) for i in e.issues]) from None
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(new_secret())
    os.chmod(key_path, 0o600)
    tmp.replace(cfg_path)
    click.echo(f"wrote {cfg_path} and {key_path} (mode 0600)")
    click.echo(
        f"next: copy both files to {paths.etc}/ on every node, then `hakit config check` and "
        "`systemctl enable --now hakit` on each"
    )


cli.add_command(lab)
cli.add_command(verify)
cli.add_command(witness)


modules.register(cli)


def main(argv: list[str] | None = None) -> None:
    """The `hakit` command: every error a message and an exit status, never a traceback."""
    try:
        code = cli.main(args=argv, prog_name="hakit", standalone_mode=False)
        if isinstance(code, int) and code:  # a `click.exceptions.Exit(code)` in a command
            sys.exit(code)
    except click.exceptions.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except HakitError as e:
        err_console.print(f"[bold red]hakit:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
